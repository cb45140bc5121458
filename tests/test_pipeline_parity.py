"""Parity with diffusers' own pipelines (a wrapper is right when it reproduces the library's own output): with 1
particle, no potentials, no MCMC and the Euler proposal on a pipeline's own noise levels, poegen's result must be the pipeline's latents on the same tiny
random weights within 1e-5 relative. Classifier-free guidance is a product [cond, uncond] with weights [w, 1 - w].

The engine draws x = sigma_0 * randn((1, *shape)) in the VE convention; each pipeline is handed that draw in its own
space. A pipeline whose last step lands on alpha = 1 (DDIM with set_alpha_to_one, Euler and flow-match Euler ending at
sigma 0) returns the x0 prediction at its last noise level, which is what the engine returns."""
import pytest
import torch

import poegen

from helpers import tiny_controlnet_folder, tiny_flux_folder, tiny_flux_pipeline, tiny_sd_folder, tiny_sdxl_folder

PROMPT, W, SEED = "a red ball", 3.0, 0


def relative_error(a, b) -> float:
    return float((a - b).norm() / b.norm())


def engine_sample(experts, weights, sigmas):
    """poegen's sample on an explicit VE grid with the deterministic proposal and one particle, and its first draw."""
    product = poegen.Product(experts, weights=weights)
    r = poegen.sample(product, sampler="ancestral", proposal="euler", mcmc_steps=0, num_particles=1,
                      num_steps=len(sigmas) - 1, sigmas=[float(s) for s in sigmas],
                      generator=torch.Generator().manual_seed(SEED))
    sigma0 = torch.tensor(float(sigmas[0]))  # the engine's draw: sqrt(sigma_0^2 / B) * randn with B = 1
    x_init = (sigma0 ** 2).sqrt() * torch.randn((1, *product.shape), generator=torch.Generator().manual_seed(SEED))
    return r.x, x_init


def vp_sigmas_at(scheduler, timesteps):
    """VE sigmas sqrt((1 - abar) / abar) of a VP scheduler's table at its (integer) timesteps, in float64."""
    ab = scheduler.alphas_cumprod.double()[timesteps.long()]
    return ((1 - ab) / ab).sqrt()


def assert_parity(ours, theirs, family):
    err = relative_error(ours, theirs)
    assert ours.shape == theirs.shape and err < 1e-5, f"{family}: relative error {err:.3g} to the diffusers pipeline"


def _sd_components(root):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return dict(vae=AutoencoderKL.from_pretrained(root / "vae"),
                text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder"),
                tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer"),
                unet=UNet2DConditionModel.from_pretrained(root / "unet"),
                # the tiny folder's DDPM config clips x0 (a clamp no VE denoiser has); real SD configs do not
                scheduler=DDIMScheduler.from_pretrained(root / "scheduler", clip_sample=False, set_alpha_to_one=True,
                                                     steps_offset=1),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _ddim_grid(pipe, steps):
    """The DDIM pipeline's timesteps for ``steps`` steps and their VE sigmas (also silences its progress bar)."""
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.set_timesteps(steps)
    timesteps = pipe.scheduler.timesteps.clone()
    return timesteps, vp_sigmas_at(pipe.scheduler, timesteps)


def test_sd_with_cfg_matches_the_ddim_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    from poegen.experts.diffusers import TextConditionedUNetExpert

    root = tiny_sd_folder(tmp_path)
    pipe = StableDiffusionPipeline(**_sd_components(root))
    timesteps, sigmas = _ddim_grid(pipe, 5)
    assert timesteps.tolist() == [801, 601, 401, 201, 1]
    cond, uncond = TextConditionedUNetExpert.load_prompts(str(root), [PROMPT, ""])
    ours, x_init = engine_sample([cond, uncond], [W, 1 - W], sigmas)
    # DDIM's state is the VP x = x_ve / sqrt(1 + sigma^2), and its init_noise_sigma is 1
    latents = x_init / (1 + sigmas[0] ** 2).sqrt().float()
    with torch.no_grad():
        theirs = pipe(PROMPT, num_inference_steps=5, guidance_scale=W, latents=latents, output_type="latent").images
    assert_parity(ours, theirs, "sd")


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers' Euler table
def test_sdxl_with_cfg_matches_the_euler_pipeline(tmp_path):
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from poegen.experts.diffusers import SDXLExpert

    root = tiny_sdxl_folder(tmp_path)
    # SDXL base's own spacing: "leading" with offset 1 gives integer timesteps, on the VP table itself
    scheduler = EulerDiscreteScheduler.from_pretrained(root / "scheduler", timestep_spacing="leading", steps_offset=1)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_pretrained(root / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(root / "text_encoder_2"),
        tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(root / "tokenizer_2"),
        unet=UNet2DConditionModel.from_pretrained(root / "unet"), scheduler=scheduler,
        force_zeros_for_empty_prompt=True)  # as the folder's model_index.json says: the empty prompt is zeros
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.set_timesteps(5)
    timesteps = pipe.scheduler.timesteps.clone()
    assert timesteps.tolist() == [801, 601, 401, 201, 1] and pipe.scheduler.sigmas[-1] == 0  # last step: to x0_hat
    sigmas = vp_sigmas_at(pipe.scheduler, timesteps)
    assert torch.allclose(sigmas.float(), pipe.scheduler.sigmas[:-1], rtol=1e-6)  # Euler's table is the VE sigma
    cond, uncond = SDXLExpert.load_prompts(str(root), [PROMPT, ""])
    assert not uncond.text_embeddings.any()
    ours, x_init = engine_sample([cond, uncond], [W, 1 - W], sigmas)
    # Euler's state is the VE x itself; the pipeline multiplies given latents by init_noise_sigma
    latents = x_init / pipe.scheduler.init_noise_sigma
    with torch.no_grad():
        theirs = pipe(PROMPT, num_inference_steps=5, guidance_scale=W, latents=latents, output_type="latent").images
    assert_parity(ours, theirs, "sdxl")


def test_flux_with_embedded_guidance_matches_the_flow_match_pipeline(tmp_path):
    from poegen.experts.diffusers import FluxExpert

    root = tiny_flux_folder(tmp_path)
    pipe = tiny_flux_pipeline(root)
    # flow times below 1 (t = 1 is an infinite VE sigma) whose VE sigmas t / (1 - t) round-trip exactly in float32
    flow = [0.8, 0.75, 0.5, 0.2]
    sigmas = torch.tensor(flow, dtype=torch.float64) / (1 - torch.tensor(flow, dtype=torch.float64))
    (expert,) = FluxExpert.load_prompts(str(root), [PROMPT], guidance=3.5)
    c, h, w = expert.shape
    ours, x_init = engine_sample([expert], [1.0], sigmas)
    latents = type(pipe)._pack_latents(x_init / (1 + sigmas[0]).float(), 1, c, h, w)  # x_flow = x_ve / (1 + sigma)
    with torch.no_grad():
        out = pipe(PROMPT, height=16, width=16, sigmas=flow, num_inference_steps=len(flow), guidance_scale=3.5,
                   latents=latents, max_sequence_length=8, output_type="latent").images
    theirs = type(pipe)._unpack_latents(out, 16, 16, pipe.vae_scale_factor)
    assert_parity(ours, theirs, "flux")


def test_controlnet_with_cfg_matches_the_controlnet_pipeline(tmp_path):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from poegen.experts.diffusers import ControlNetExpert

    root = tiny_sd_folder(tmp_path / "sd")
    cn_folder = tiny_controlnet_folder(tmp_path / "cn", root)
    pipe = StableDiffusionControlNetPipeline(controlnet=ControlNetModel.from_pretrained(cn_folder),
                                             **_sd_components(root))
    depth = torch.linspace(0, 1, 16)[None, :] * torch.linspace(1, 0.2, 16)[:, None]  # a depth map in [0, 1]
    control = depth[None, None].expand(1, 3, -1, -1).contiguous()
    seen = pipe.prepare_image(control, 16, 16, 1, 1, "cpu", torch.float32)
    assert torch.equal(seen, control)  # the pipeline passes this control image to its ControlNet unchanged
    _, sigmas = _ddim_grid(pipe, 5)
    cond, uncond = [ControlNetExpert.from_pretrained(str(root), p, controlnet=cn_folder, control_image=control,
                                                     conditioning_scale=0.7) for p in (PROMPT, "")]
    ours, x_init = engine_sample([cond, uncond], [W, 1 - W], sigmas)
    latents = x_init / (1 + sigmas[0] ** 2).sqrt().float()
    with torch.no_grad():
        theirs = pipe(PROMPT, control, num_inference_steps=5, guidance_scale=W, latents=latents, guess_mode=False,
                      controlnet_conditioning_scale=0.7, output_type="latent").images
    assert_parity(ours, theirs, "controlnet")
    cond.conditioning_scale = uncond.conditioning_scale = 0.0
    plain, _ = engine_sample([cond, uncond], [W, 1 - W], sigmas)
    assert relative_error(plain, theirs) > 1e-3  # the ControlNet acts far above the tolerance
