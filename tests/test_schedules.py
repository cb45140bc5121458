import pytest
import torch

from poegen import schedules


def test_karras_endpoints_and_monotone():
    s = schedules.karras(10, 0.01, 20.0)
    assert s.shape == (11,)
    assert s[0] == pytest.approx(20.0) and s[-1] == pytest.approx(0.01)
    assert (s[1:] < s[:-1]).all()
    with pytest.raises(ValueError, match="num_steps"):
        schedules.karras(0)


def test_vp_sigma_roundtrip():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    sig = schedules.vp_sigmas(ab)
    t = schedules.sigma_to_vp_t(sig[[10, 500, 999]], ab)
    assert torch.allclose(t, torch.tensor([10.0, 500.0, 999.0], dtype=torch.float64), atol=1e-6)
    grid = schedules.from_alphas_cumprod(ab, 10)
    assert grid.shape == (11,) and grid[0] == sig[-1] and grid[-1] == sig[0]
    # VE state x0 + sigma eps becomes the VP state a x0 + s eps
    x0, eps, i = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64), 700
    vp = ab[i].sqrt() * x0 + (1 - ab[i]).sqrt() * eps
    assert torch.allclose(schedules.vp_input(x0 + sig[i] * eps, sig[i]), vp)


def test_flow_roundtrip():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    sig = schedules.flow_to_sigma(t)
    assert torch.allclose(schedules.sigma_to_flow(sig), t)
    x0, eps = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    flow = (1 - t) * x0 + t * eps
    assert torch.allclose(schedules.flow_input(x0 + sig * eps, sig), flow)
    grid = schedules.from_flow_sigmas(torch.linspace(1, 0, 11), num_steps=4)
    assert grid.shape == (5,) and (grid[1:] < grid[:-1]).all()
