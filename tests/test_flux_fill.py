"""The flux-fill kind: FLUX.1 Fill (inpainting) on a tiny folder saved by diffusers' own ``FluxFillPipeline``."""
import logging

import pytest
import torch

import poegen
from poegen.experts.flux_fill import OPTIONS, FluxFillExpert, load_flux_fill

from helpers import tiny_flux_fill_folder, tiny_flux_folder

log = logging.getLogger("tests.flux_fill")

PROMPT, GUIDANCE, L = "a red ball", 30.0, 8  # L: the T5 tokenizer's length


def _image_and_mask():
    """A 16x16 image in [0, 1] and a mask (1 = repaint) over a block that is not aligned to the latents."""
    image01 = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 3:11, 6:16] = 1
    return image01, mask


def _engine(expert, sigmas, seed=0):
    """poegen's deterministic one-particle sample on the VE grid ``sigmas``, and its first draw."""
    r = poegen.sample(poegen.Product([expert]), sampler="ancestral", proposal="euler", mcmc_steps=0, num_particles=1,
                      num_steps=len(sigmas) - 1, sigmas=[float(s) for s in sigmas],
                      generator=torch.Generator().manual_seed(seed))
    s0 = torch.tensor(float(sigmas[0]))
    return r.x, s0 * torch.randn((1, *expert.shape), generator=torch.Generator().manual_seed(seed))


class MeanRed:
    """A potential on decoded pixels (asserts it sees them): the mean of the red channel."""

    name = "mean-red"

    def log_potential(self, images):
        assert images.shape[1:] == (3, 16, 16)
        return images[:, 0].mean((1, 2))


def test_flux_fill_matches_the_diffusers_pipeline(tmp_path):
    from diffusers import FluxFillPipeline

    root = tiny_flux_fill_folder(tmp_path)
    pipe = FluxFillPipeline.from_pretrained(root)
    pipe.set_progress_bar_config(disable=True)
    image01, mask = _image_and_mask()
    image = 2 * image01 - 1  # what the pipeline's image processor makes of an image in [0, 1]
    with torch.no_grad():  # the pipeline samples the masked image's latent distribution with its generator
        raw = pipe.vae.encode(image * (1 - mask)).latent_dist.sample(torch.Generator().manual_seed(2))
    (expert,) = FluxFillExpert.load_prompts(str(root), [PROMPT], image, mask, guidance=GUIDANCE,
                                            max_sequence_length=L, masked_image_latents=raw)
    assert expert.shape == (4, 8, 8) and expert.fill.shape == (1, 16, 32)
    flow = [0.8, 0.75, 0.5, 0.2]  # below 1, and t / (1 - t) round-trips exactly in float32
    sigmas = torch.tensor(flow, dtype=torch.float64) / (1 - torch.tensor(flow, dtype=torch.float64))
    ours, x_init = _engine(expert, sigmas)
    latents = FluxFillPipeline._pack_latents(x_init / (1 + sigmas[0]).float(), 1, 4, 8, 8)
    with torch.no_grad():
        out = pipe(PROMPT, image=image01, mask_image=mask, height=16, width=16, sigmas=flow,
                   num_inference_steps=len(flow), guidance_scale=GUIDANCE, latents=latents, max_sequence_length=L,
                   generator=torch.Generator().manual_seed(2), output_type="latent").images
    theirs = FluxFillPipeline._unpack_latents(out, 16, 16, pipe.vae_scale_factor)
    error = float((ours - theirs).norm() / theirs.norm())
    log.info("flux-fill parity with FluxFillPipeline: relative error %.2e", error)
    assert ours.shape == theirs.shape and error < 1e-5, f"flux-fill: relative error {error:.3g} to FluxFillPipeline"

    (flipped,) = FluxFillExpert.load_prompts(str(root), [PROMPT], image, 1 - mask, guidance=GUIDANCE,
                                             max_sequence_length=L, masked_image_latents=raw)
    other, _ = _engine(flipped, sigmas)
    assert float((other - theirs).norm() / theirs.norm()) > 1e-3  # the mask acts: the match is not vacuous

    (default,) = FluxFillExpert.load_prompts(str(root), [PROMPT], image, mask[0, 0], max_sequence_length=L)
    with torch.no_grad():  # by default the VAE's mode, prepared exactly as the pipeline prepares given latents
        mode = pipe.vae.encode(image * (1 - mask)).latent_dist.mode()
        packed_mask, packed = pipe.prepare_mask_latents(mask, mode, 1, 4, 1, 16, 16, torch.float32, "cpu", None)
    assert torch.equal(default.fill, torch.cat((packed, packed_mask), dim=-1))


def test_prompt_experts_load_once_encode_once_and_share_one_call(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    root = str(tiny_flux_fill_folder(tmp_path))
    loads, encodes = [], []
    original_load, original_encode = FluxTransformer2DModel.from_pretrained.__func__, AutoencoderKL.encode
    monkeypatch.setattr(FluxTransformer2DModel, "from_pretrained",
                        classmethod(lambda c, *a, **k: loads.append(1) or original_load(c, *a, **k)))
    monkeypatch.setattr(AutoencoderKL, "encode",
                        lambda self, *a, **k: encodes.append(1) or original_encode(self, *a, **k))
    image01, mask = _image_and_mask()
    image = 2 * image01 - 1
    experts = load_flux_fill(root, [PROMPT, "a blue box"], image, mask, GUIDANCE, max_sequence_length=L)
    again = load_flux_fill(root, ["a blue box"], image.clone(), mask.clone(), 3.5, max_sequence_length=L)
    assert len(loads) == 1 and len(encodes) == 1  # one transformer; one encoding per (image, mask)
    assert [e.name for e in experts] == ["flux-fill[a red ball]", "flux-fill[a blue box]"]
    assert len({id(e.transformer) for e in experts + again}) == 1 and experts[0].fill is again[0].fill
    assert experts[0].batch_key == experts[1].batch_key == again[0].batch_key
    assert experts[0].offload_modules() == [experts[0].transformer]
    forwards = []
    experts[0].transformer.register_forward_hook(lambda *a: forwards.append(1))
    x, sigma = torch.randn(3, 4, 8, 8), torch.tensor(1.5)
    product = poegen.Product(experts + again, weights=[0.5, 0.3, 0.2])
    ev = product.evaluate(x, sigma, torch.ones(1, 4, 8, 8))
    assert len(forwards) == 1  # 9 rows, one transformer call
    separate = sum(w * e.denoise(x, sigma) for w, e in zip([0.5, 0.3, 0.2], experts + again))
    assert torch.allclose(ev.x0, separate, atol=1e-5)
    load_flux_fill(root, [PROMPT], image, 1 - mask, GUIDANCE, max_sequence_length=L)
    assert len(encodes) == 2 and len(loads) == 1


def test_plain_flux_folder_and_bad_inputs_are_refused(tmp_path):
    image01, mask = _image_and_mask()
    image = 2 * image01 - 1
    plain = str(tiny_flux_folder(tmp_path / "plain"))
    with pytest.raises(ValueError, match="use the `flux` kind") as info:
        load_flux_fill(plain, [PROMPT], image, mask, GUIDANCE)
    assert plain in str(info.value)
    root = str(tiny_flux_fill_folder(tmp_path / "fill"))
    for bad, match in [((image01 * 2, mask), r"expected \[-1, 1\]"), ((image, mask * 0.5), "mask values"),
                       ((image, mask[..., :8, :]), "mask has shape"), ((image[..., :14, :14], mask[..., :14, :14]),
                                                                     "multiples of 4")]:
        with pytest.raises(ValueError, match=match):
            load_flux_fill(root, [PROMPT], *bad, GUIDANCE)
    with pytest.raises(ValueError, match="resolution is 32"):
        load_flux_fill(root, [PROMPT], image, mask, GUIDANCE, resolution=32)
    with pytest.raises(ValueError, match="flux-fill options"):
        load_flux_fill(root, [PROMPT], image, mask, GUIDANCE, strength=0.5)
    assert set(OPTIONS) == {"micro_batch", "resolution", "max_sequence_length", "torch_dtype"}


def test_poe_runs_end_to_end_through_the_decoder(tmp_path):
    from poegen.experts.diffusers import vae_decoder

    root = str(tiny_flux_fill_folder(tmp_path))
    image01, mask = _image_and_mask()
    experts = load_flux_fill(root, [PROMPT], 2 * image01 - 1, mask, GUIDANCE, max_sequence_length=L, micro_batch=3,
                             torch_dtype="float32")
    decode = vae_decoder(root)
    forwards = []
    experts[0].transformer.register_forward_hook(lambda *a: forwards.append(1))
    product = poegen.Product(experts, potentials=[MeanRed()], decode=decode)
    r = poegen.sample(product, num_particles=4, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert r.x.shape == (4, 4, 8, 8) and torch.isfinite(r.x).all()
    assert r.nfe["flux-fill[a red ball]"] == 4 * (1 + 2 * 2) and r.nfe["mean-red"] == 4 * 3
    assert len(forwards) == 2 * (1 + 2 * 2)  # 4 rows in micro-batches of 3: two calls per evaluation
    with torch.no_grad():
        images = decode(r.x)
    assert images.shape == (4, 3, 16, 16) and float(images.abs().max()) <= 1
