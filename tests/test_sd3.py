"""The sd3 kind: Stable Diffusion 3 with its text encoders, on tiny folders saved by diffusers' own pipeline."""
import copy
import logging

import numpy as np
import pytest
import torch

import poegen
from poegen.experts.sd3 import OPTIONS, SD3Expert, load_sd3

from helpers import tiny_sd3_folder

log = logging.getLogger("tests.sd3")


class MeanRed:
    """A potential on decoded pixels (asserts it sees them): the mean of the red channel."""

    name = "mean-red"

    def log_potential(self, images):
        assert images.shape[1:] == (3, 16, 16)
        return images[:, 0].mean((1, 2))


def _pipeline(root, **components):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(root, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sd3_matches_the_diffusers_pipeline_with_guidance_as_a_product(tmp_path):
    root = tiny_sd3_folder(tmp_path)
    w, K, L = 4.0, 4, 8  # guidance, pipeline steps, T5 tokens (the tokenizer's length)
    cond, uncond = SD3Expert.load_prompts(str(root), ["a red ball", ""], max_sequence_length=L)
    assert cond.shape == (4, 8, 8) and cond.transformer is uncond.transformer
    pipe = _pipeline(root)
    with torch.no_grad():  # T5 attention differs in the last bits with autograd on
        hidden, neg_hidden, pooled, neg_pooled = pipe.encode_prompt("a red ball", None, None, max_sequence_length=L)
    assert hidden.shape == (1, 8 + L, 80) and pooled.shape == (1, 32)
    assert torch.equal(cond.encoder_hidden_states, hidden) and torch.equal(cond.pooled_projections, pooled)
    assert torch.equal(uncond.encoder_hidden_states, neg_hidden) and torch.equal(uncond.pooled_projections, neg_pooled)

    flow = np.linspace(0.9, 0.2, K)  # explicit sigmas below 1 (t = 1 is an infinite VE sigma)
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(sigmas=flow)  # the pipeline's own flow sigmas: shifted (shift 3), then 0 appended
    t = scheduler.sigmas[:-1].double()
    assert float(t[0]) < 1 and float(scheduler.sigmas[-1]) == 0
    sigmas = t / (1 - t)
    product = poegen.Product([cond, uncond], weights=[w, 1 - w])
    r = poegen.sample(product, sampler="ancestral", proposal="euler", mcmc_steps=0, num_particles=1,
                      num_steps=K - 1, sigmas=sigmas.tolist(), generator=torch.Generator().manual_seed(0))
    s0 = torch.tensor(float(sigmas[0]))
    x = s0 * torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))  # the engine's first draw
    latents = pipe("a red ball", guidance_scale=w, sigmas=flow.tolist(), latents=x / (1 + s0), output_type="latent",
                   max_sequence_length=L).images
    error = float((r.x - latents).norm() / latents.norm())
    log.info("sd3 parity with StableDiffusion3Pipeline: relative error %.2e", error)
    assert error < 1e-5, error
    plain = pipe("a red ball", guidance_scale=1.0, sigmas=flow.tolist(), latents=x / (1 + s0), output_type="latent",
                 max_sequence_length=L).images
    assert float((plain - latents).norm() / latents.norm()) > 1e-3  # guidance matters: the match is not vacuous


def test_prompt_and_empty_prompt_load_one_transformer_and_share_one_call(tmp_path, monkeypatch):
    from diffusers import SD3Transformer2DModel

    root = str(tiny_sd3_folder(tmp_path))
    loads, original = [], SD3Transformer2DModel.from_pretrained.__func__
    monkeypatch.setattr(SD3Transformer2DModel, "from_pretrained",
                        classmethod(lambda c, *a, **k: loads.append(1) or original(c, *a, **k)))
    experts, weights, decode = load_sd3(root, "a red ball", 5.0, max_sequence_length=8, micro_batch=None)
    assert len(loads) == 1 and weights == [5.0, -4.0]
    assert [e.name for e in experts] == ["sd3[a red ball]", "sd3[]"]
    cond, uncond = experts
    assert cond.transformer is uncond.transformer and cond.batch_key == uncond.batch_key
    assert not torch.equal(cond.encoder_hidden_states, uncond.encoder_hidden_states)
    forwards = []
    cond.transformer.register_forward_hook(lambda *a: forwards.append(1))
    product = poegen.Product(experts, weights=weights)
    x, sigma = torch.randn(4, 4, 8, 8), torch.tensor(0.8)
    ev = product.evaluate(x, sigma, torch.ones(1, 4, 8, 8))
    assert len(forwards) == 1  # 8 rows, one transformer call
    separate = 5.0 * cond.denoise(x, sigma) - 4.0 * uncond.denoise(x, sigma)
    assert torch.allclose(ev.x0, separate, atol=1e-4)
    with pytest.raises(ValueError, match="resolution 18 must be a positive multiple of 4"):
        SD3Expert.load_prompts(root, ["a"], resolution=18)
    with pytest.raises(ValueError, match="max_sequence_length 600"):
        SD3Expert.load_prompts(root, ["a"], max_sequence_length=600)
    with pytest.raises(ValueError, match="sd3 options"):
        load_sd3(root, "a", 2.0, guidance_rescale=0.5)
    assert set(OPTIONS) == {"micro_batch", "resolution", "max_sequence_length", "torch_dtype"}


def test_poe_runs_end_to_end_through_the_decoder(tmp_path):
    root = str(tiny_sd3_folder(tmp_path))
    experts, weights, decode = load_sd3(root, "a red ball", 3.0, max_sequence_length=8, micro_batch=3,
                                        torch_dtype="float32")
    forwards = []
    experts[0].transformer.register_forward_hook(lambda *a: forwards.append(1))
    product = poegen.Product(experts, weights=weights, potentials=[MeanRed()], decode=decode)
    r = poegen.sample(product, num_particles=4, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert r.x.shape == (4, 4, 8, 8) and torch.isfinite(r.x).all()
    assert r.nfe["sd3[a red ball]"] == 4 * (1 + 2 * 2) and r.nfe["mean-red"] == 4 * 3
    assert len(forwards) == 3 * (1 + 2 * 2)  # 8 rows in micro-batches of 3: three calls per evaluation
    with torch.no_grad():
        images = decode(r.x)
    assert images.shape == (4, 3, 16, 16) and float(images.abs().max()) <= 1
    big = SD3Expert.from_pretrained(root, "a red ball", resolution=32, max_sequence_length=8)
    assert big.shape == (4, 16, 16) and big.batch_key != experts[0].batch_key


def test_folder_without_t5_uses_zeros_as_diffusers(tmp_path):
    root = tiny_sd3_folder(tmp_path, t5=False)
    assert not (root / "text_encoder_3").exists()
    expert = SD3Expert.from_pretrained(str(root), "a red ball")
    with torch.no_grad():
        hidden, _, pooled, _ = _pipeline(root, text_encoder_3=None, tokenizer_3=None).encode_prompt(
            "a red ball", None, None, do_classifier_free_guidance=False)
    assert expert.encoder_hidden_states.shape == (1, 8 + 256, 80)  # 256 T5 tokens by default, as the pipeline
    assert torch.equal(expert.encoder_hidden_states, hidden) and torch.equal(expert.pooled_projections, pooled)
    assert torch.equal(hidden[:, 8:], torch.zeros(1, 256, 80))
    x = torch.randn(2, 4, 8, 8)
    assert torch.isfinite(expert.denoise(x, torch.tensor(1.5))).all()
