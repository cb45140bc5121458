"""GPU checks (skipped without CUDA): the loop runs on the device and matches the closed form."""
import pytest
import torch

import poegen
from poegen.experts.analytic import Gaussian

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_matches_closed_form_mean():
    m = torch.tensor([1.0, -1.0])
    product = poegen.Product([Gaussian(m, torch.eye(2)), Gaussian(m, torch.eye(2))])
    r = poegen.sample(product, num_particles=2000, num_steps=30, device="cuda", dtype=torch.float64,
                      generator=torch.Generator(device="cuda").manual_seed(0))
    assert r.x.device.type == "cuda"
    w = torch.softmax(r.log_w, 0)
    assert torch.allclose((w[:, None] * r.x).sum(0).cpu().double(), m.double(), atol=0.1)
