"""The ``sd-inpaint`` expert: parity with ``StableDiffusionInpaintPipeline`` (9-channel UNet, DDIM, guidance as a
product), one UNet load and one call per evaluation, refusal of a 4-channel UNet, and a poe run through the VAE."""
import pytest
import torch

import poegen

from helpers import tiny_sd_folder, tiny_sd_inpaint_folder

PROMPT, W, SEED = "a red ball", 3.0, 0


def _image_and_mask():
    """A 16x16 RGB image in [-1, 1] and a binary mask repainting its lower right quarter."""
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    mask = torch.zeros(16, 16)
    mask[6:, 8:] = 1
    return image, mask


class MeanRed:
    """A potential on decoded pixels (asserts it sees them): the mean of the red channel."""

    name = "mean-red"

    def log_potential(self, images):
        assert images.shape[1:] == (3, 16, 16)
        return images[:, 0].mean((1, 2))


def test_sd_inpaint_with_cfg_matches_the_inpaint_pipeline(tmp_path):
    from diffusers import StableDiffusionInpaintPipeline

    from tests.test_pipeline_parity import _sd_components

    from poegen.experts.inpaint import SDInpaintExpert

    root = tiny_sd_inpaint_folder(tmp_path)
    pipe = StableDiffusionInpaintPipeline(**_sd_components(root))  # DDIM, as the SD parity test drives it
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.set_timesteps(5)
    timesteps = pipe.scheduler.timesteps.clone()
    assert timesteps.tolist() == [801, 601, 401, 201, 1]
    ab = pipe.scheduler.alphas_cumprod.double()[timesteps.long()]
    sigmas = ((1 - ab) / ab).sqrt()

    image, mask = _image_and_mask()
    cond, uncond = SDInpaintExpert.load_prompts(str(root), [PROMPT, ""], image, mask)
    assert cond.shape == (4, 8, 8) and cond.mask.shape == (1, 1, 8, 8)
    assert torch.equal(cond.mask[0, 0], torch.nn.functional.interpolate(mask[None, None], size=(8, 8))[0, 0])
    # what the pipeline itself makes of this mask and masked image: the same latent mask
    seen_mask, seen_latents = pipe.prepare_mask_latents(
        pipe.mask_processor.preprocess(mask[None, None], height=16, width=16), cond.masked_image_latents, 1, 16, 16,
        torch.float32, "cpu", None, False)
    assert torch.equal(seen_mask, cond.mask) and torch.equal(seen_latents, cond.masked_image_latents)

    product = poegen.Product([cond, uncond], weights=[W, 1 - W])
    ours = poegen.sample(product, sampler="ancestral", proposal="euler", mcmc_steps=0, num_particles=1,
                         num_steps=len(sigmas) - 1, sigmas=[float(s) for s in sigmas],
                         generator=torch.Generator().manual_seed(SEED)).x
    x_init = float(sigmas[0]) * torch.randn((1, *product.shape), generator=torch.Generator().manual_seed(SEED))
    latents = x_init / (1 + sigmas[0] ** 2).sqrt().float()  # DDIM's state is the VP x; init_noise_sigma is 1
    with torch.no_grad():  # image in [0, 1], as the pipeline takes tensors; unused beside the given latents
        theirs = pipe(PROMPT, image=(image + 1) / 2, mask_image=mask[None, None],
                      masked_image_latents=cond.masked_image_latents, height=16, width=16, strength=1.0,
                      num_inference_steps=5, guidance_scale=W, latents=latents, output_type="latent").images
    err = float((ours - theirs).norm() / theirs.norm())
    assert ours.shape == theirs.shape and err < 1e-5, f"sd-inpaint: relative error {err:.3g} to the diffusers pipeline"

    other = SDInpaintExpert.load_prompts(str(root), [PROMPT], image, torch.ones(16, 16) - mask)[0]
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor(2.0)
    assert (other.denoise(x, sigma) - cond.denoise(x, sigma)).abs().max() > 1e-4  # the mask reaches the UNet


def test_one_unet_load_and_one_call_per_evaluation(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from poegen.experts.inpaint import load_sd_inpaint

    root = str(tiny_sd_inpaint_folder(tmp_path))
    loads, encodes = [], []
    load, encode = UNet2DConditionModel.from_pretrained.__func__, AutoencoderKL.encode
    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained",
                        classmethod(lambda c, *a, **k: loads.append(1) or load(c, *a, **k)))
    monkeypatch.setattr(AutoencoderKL, "encode", lambda self, *a, **k: encodes.append(1) or encode(self, *a, **k))
    image, mask = _image_and_mask()
    cond, uncond = load_sd_inpaint(root, [PROMPT, ""], image, mask)
    (again,) = load_sd_inpaint(root, ["a blue box"], image.clone(), mask.clone())
    assert len(loads) == 1 and len(encodes) == 1  # one UNet, one encoding of the masked image
    assert again.unet is cond.unet and again.masked_image_latents is cond.masked_image_latents
    assert cond.offload_modules() == [cond.unet] and cond.batch_key == uncond.batch_key

    forwards = []
    cond.unet.register_forward_hook(lambda *a: forwards.append(1))
    product = poegen.Product([cond, uncond], weights=[W, 1 - W])
    x, sigma = torch.randn(3, 4, 8, 8), torch.tensor(1.5)
    ev = product.evaluate(x, sigma, torch.ones(1, 4, 8, 8))
    assert len(forwards) == 1  # the prompt and "" in one batched call
    separate = W * cond.denoise(x, sigma) + (1 - W) * uncond.denoise(x, sigma)
    assert torch.allclose(ev.x0, separate, atol=1e-5)
    with pytest.raises(ValueError, match="options \\['guidance'\\]"):
        load_sd_inpaint(root, [PROMPT], image, mask, guidance=2.0)


def test_a_four_channel_unet_is_refused(tmp_path):
    from poegen.experts.inpaint import SDInpaintExpert

    root = str(tiny_sd_folder(tmp_path))
    image, mask = _image_and_mask()
    with pytest.raises(ValueError, match="in_channels is 4, not 9.*use the `sd` kind") as info:
        SDInpaintExpert.load_prompts(root, [PROMPT], image, mask)
    assert root in str(info.value)


def test_poe_run_through_the_vae_decoder(tmp_path):
    from poegen.experts.diffusers import vae_decoder
    from poegen.experts.inpaint import SDInpaintExpert

    root = str(tiny_sd_inpaint_folder(tmp_path))
    image, mask = _image_and_mask()
    experts = SDInpaintExpert.load_prompts(root, [PROMPT, ""], image, mask)
    decode = vae_decoder(root)
    product = poegen.Product(experts, weights=[W, 1 - W], potentials=[MeanRed()], decode=decode)
    r = poegen.sample(product, num_particles=4, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert r.x.shape == (4, 4, 8, 8) and torch.isfinite(r.x).all()
    assert r.nfe["sd-inpaint[a red ball]"] == 4 * (1 + 2 * 2) and r.nfe["mean-red"] == 4 * 3
    assert decode(r.x).shape == (4, 3, 16, 16)
