"""poegen inside users' code: ``poegen.from_pipeline`` wraps a diffusers pipeline already in memory as
experts on its own modules, and reproduces the pipeline's output (1 particle, no potentials, the ancestral sampler
with the deterministic proposal on the pipeline's own noise levels); ``poegen.potential`` turns a function on images
into a potential; the README's example runs."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import poegen

from helpers import tiny_flux_folder, tiny_flux_pipeline, tiny_sd3_folder, tiny_sd_folder, tiny_sdxl_folder, tiny_vp_folder

PROMPT, W, SEED = "a red ball", 3.0, 0


def sd_pipeline(root):
    """A StableDiffusionPipeline on the tiny folder's components, DDIM ending at alpha = 1 without clipping (the
    tiny DDPM config clips x0, a clamp no VE denoiser has; real SD configs do not)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(root / "vae"), text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer"), unet=UNet2DConditionModel.from_pretrained(root / "unet"),
        scheduler=DDIMScheduler.from_pretrained(root / "scheduler", clip_sample=False, set_alpha_to_one=True,
                                                steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ours(experts, weights, sigmas):
    """(latents, images in [0, 1]) of poegen's ancestral sampler, deterministic proposal, 1 particle, on ``sigmas``,
    and the engine's first draw x = sigma_0 * randn (B = 1)."""
    product = poegen.Product(experts, weights=weights)
    result = poegen.sample(product, sampler="ancestral", proposal="euler", num_particles=1,
                           num_steps=len(sigmas) - 1, sigmas=sigmas, generator=torch.Generator().manual_seed(SEED))
    x_init = sigmas[0] * torch.randn((1, *product.shape), generator=torch.Generator().manual_seed(SEED))
    return result.x, poegen.decode_images(product, result, pil=False), x_init


def check_parity(family, latents, theirs_latents, images, theirs_images):
    d_latents = float((latents - theirs_latents).abs().max())
    d_images = float((images - theirs_images).abs().max())
    print(f"{family}: max abs diff latents {d_latents:.2e}, images {d_images:.2e}")
    assert latents.shape == theirs_latents.shape and images.shape == theirs_images.shape
    assert d_latents <= 1e-4 and d_images <= 1e-4, (family, d_latents, d_images)
    assert float(theirs_images.std()) > 1e-3  # the images are not a constant that anything would match


def run_pipe(pipe, latents, **kwargs):
    """The pipeline's latents and its images in [0, 1] (its own VAE decoding and postprocessing)."""
    with torch.no_grad():
        lat = pipe(PROMPT, latents=latents, output_type="latent", **kwargs).images
        images = pipe(PROMPT, latents=latents, output_type="pt", **kwargs).images
    return lat, images


def test_sd_pipeline_in_memory_matches_its_own_output_and_shares_its_modules(tmp_path):
    pipe = sd_pipeline(tiny_sd_folder(tmp_path))
    cond, uncond = poegen.from_pipeline(pipe, [PROMPT, ""])
    assert cond.unet is pipe.unet and uncond.unet is pipe.unet          # no second copy of the backbone
    assert cond.decode.vae is pipe.vae and uncond.decode is cond.decode  # nor of the VAE
    assert poegen.from_pipeline(pipe, PROMPT).unet is pipe.unet         # one prompt: one expert
    sigmas = poegen.pipeline_sigmas(pipe, 5)
    assert len(sigmas) == 5
    latents, images, x_init = ours([cond, uncond], [W, 1 - W], sigmas)
    # DDIM's state is the VP x = x_ve / sqrt(1 + sigma^2) (init_noise_sigma 1)
    theirs = run_pipe(pipe, (x_init / (1 + sigmas[0] ** 2) ** 0.5).float(), num_inference_steps=5, guidance_scale=W)
    check_parity("sd", latents, theirs[0], images, theirs[1])
    # the guidance is in the match: without the unconditional expert the images differ well above the tolerance
    plain, plain_images, _ = ours([cond], [1.0], sigmas)
    assert float((plain_images - theirs[1]).abs().max()) > 1e-2


def test_pipeline_sigmas_leave_the_pipeline_alone_and_follow_its_scheduler(tmp_path):
    pipe = sd_pipeline(tiny_sd_folder(tmp_path))
    pipe.scheduler.set_timesteps(3)
    before = pipe.scheduler.timesteps.clone()
    sigmas = poegen.pipeline_sigmas(pipe, 5)
    assert torch.equal(pipe.scheduler.timesteps, before)  # the user's scheduler keeps its state
    abar = pipe.scheduler.alphas_cumprod.double()[[801, 601, 401, 201, 1]]
    assert np.allclose(sigmas, ((1 - abar) / abar).sqrt().numpy(), rtol=1e-12)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers' Euler table
def test_sdxl_pipeline_in_memory_matches_its_own_output(tmp_path):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root = tiny_sdxl_folder(tmp_path)
    pipe = StableDiffusionXLPipeline(  # SDXL base's spacing: "leading" with offset 1, integer timesteps
        vae=AutoencoderKL.from_pretrained(root / "vae"), unet=UNet2DConditionModel.from_pretrained(root / "unet"),
        text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(root / "text_encoder_2"),
        tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(root / "tokenizer_2"),
        scheduler=EulerDiscreteScheduler.from_pretrained(root / "scheduler", timestep_spacing="leading",
                                                         steps_offset=1),
        force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    cond, uncond = poegen.from_pipeline(pipe, [PROMPT, ""])
    assert cond.unet is pipe.unet and not uncond.text_embeddings.any()  # force_zeros_for_empty_prompt
    sigmas = poegen.pipeline_sigmas(pipe, 5)
    latents, images, x_init = ours([cond, uncond], [W, 1 - W], sigmas)
    # Euler's state is the VE x; the pipeline multiplies given latents by init_noise_sigma
    pipe.scheduler.set_timesteps(5)
    theirs = run_pipe(pipe, x_init / pipe.scheduler.init_noise_sigma, num_inference_steps=5, guidance_scale=W)
    check_parity("sdxl", latents, theirs[0], images, theirs[1])


def test_sd3_pipeline_in_memory_matches_its_own_output(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_folder(tmp_path))
    pipe.set_progress_bar_config(disable=True)
    cond, uncond = poegen.from_pipeline(pipe, [PROMPT, ""], max_sequence_length=8)
    assert cond.transformer is pipe.transformer and cond.decode.vae is pipe.vae
    assert poegen.pipeline_sigmas(pipe, 4)[0] == pytest.approx(1000)  # its default starts at t = 1: the experts' highest level
    flow = [0.9, 0.7, 0.4, 0.2]  # explicit flow times below 1 (t = 1 is an infinite VE sigma)
    sigmas = poegen.pipeline_sigmas(pipe, len(flow), sigmas=flow)  # shifted as the pipeline shifts them
    latents, images, x_init = ours([cond, uncond], [W, 1 - W], sigmas)
    theirs = run_pipe(pipe, x_init / (1 + sigmas[0]), sigmas=flow, guidance_scale=W, max_sequence_length=8)
    check_parity("sd3", latents, theirs[0], images, theirs[1])


def test_flux_pipeline_in_memory_matches_its_own_output(tmp_path):
    pipe = tiny_flux_pipeline(tiny_flux_folder(tmp_path))
    expert = poegen.from_pipeline(pipe, PROMPT, resolution=16, guidance=3.5, max_sequence_length=8)
    assert expert.transformer is pipe.transformer and expert.shape == (4, 8, 8)
    flow = [0.8, 0.75, 0.5, 0.2]  # the pipeline's sigmas as given (no shift in the tiny scheduler's config)
    sigmas = poegen.pipeline_sigmas(pipe, len(flow), sigmas=flow, mu=0.5)
    latents, images, x_init = ours([expert], [1.0], sigmas)
    packed = type(pipe)._pack_latents(x_init / (1 + sigmas[0]), 1, 4, 8, 8)
    with torch.no_grad():
        out = pipe(PROMPT, height=16, width=16, sigmas=flow, guidance_scale=3.5, latents=packed,
                   max_sequence_length=8, output_type="latent").images
        theirs_images = pipe(PROMPT, height=16, width=16, sigmas=flow, guidance_scale=3.5, latents=packed,
                             max_sequence_length=8, output_type="pt").images
    check_parity("flux", latents, type(pipe)._unpack_latents(out, 16, 16, pipe.vae_scale_factor), images,
                 theirs_images)


def test_unsupported_pipelines_and_prompts_say_what_is_supported(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    pixel = DDPMPipeline(unet=tiny_vp_folder(tmp_path), scheduler=DDPMScheduler.from_pretrained(tmp_path / "scheduler"))
    expert = poegen.from_pipeline(pixel)
    assert expert.unet is pixel.unet and not hasattr(expert, "decode")
    with pytest.raises(ValueError, match="no text conditioning"):
        poegen.from_pipeline(pixel, "a red ball")
    with pytest.raises(TypeError, match="StableDiffusionPipeline .* FluxPipeline"):
        poegen.from_pipeline(object())
    with pytest.raises(TypeError, match="prompt must be a string"):
        poegen.from_pipeline(pixel, [])


# ---- custom potentials ------------------------------------------------------------------------------------------

def redness(images):
    """Red minus the other channels, averaged over the image: (N,)."""
    return (images[:, 0] - images[:, 1:].mean(1)).mean((1, 2))


def shapes_ball():
    """The embedded shapes world's expert for 'ball' (any colour) over nothing else."""
    from poegen.experts.shapes.model import load_prior

    return load_prior().expert("ball")


def red_share(images):
    """The share of the coloured pixels that are red: (N,)."""
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    red = (r > 0.6) & (g < 0.4) & (b < 0.4)
    coloured = (images.max(1).values - images.min(1).values) > 0.3
    return red.flatten(1).sum(1) / coloured.flatten(1).sum(1).clamp(min=1)


def test_a_potential_favouring_red_turns_the_balls_red():
    ball = shapes_ball()
    seen = []

    def red(images):  # the images the function is handed: (N, 3, H, W) in [0, 1]
        seen.append((tuple(images.shape), float(images.min()), float(images.max())))
        return 20.0 * red_share(images)

    def draw(potentials):
        product = poegen.Product([ball], potentials=potentials)
        r = poegen.sample(product, sampler="smc", num_particles=8, num_steps=8,
                          generator=torch.Generator().manual_seed(0))
        return float((torch.softmax(r.log_w, 0) * red_share(poegen.decode_images(product, r, pil=False))).sum())

    plain, favoured = draw([]), draw([poegen.potential(red)])
    print(f"red share of the coloured pixels (weighted): 'ball' alone {plain:.2f}, with the red potential {favoured:.2f}")
    assert seen and seen[0][0] == (8, 3, 32, 32) and 0 <= seen[0][1] and seen[0][2] <= 1
    assert plain < 0.2 and favoured > 0.4


@pytest.mark.parametrize("returns, error", [
    (lambda images: redness(images)[:1], r"potential odd: the function returned shape \(1,\) for 2 images"),
    (lambda images: redness(images)[:, None], r"shape \(2, 1\)"),
    (lambda images: torch.tensor([0.0, float("nan")]), r"potential odd: the function returned NaN for image\(s\) \[1\]"),
    (lambda images: "high", r"potential odd: the function returned str"),
])
def test_a_potential_that_returns_the_wrong_thing_is_named_in_the_error(returns, error):
    def odd(images):
        return returns(images)
    product = poegen.Product([shapes_ball()], potentials=[poegen.potential(odd)])
    with pytest.raises((ValueError, TypeError), match=error):
        poegen.sample(product, sampler="smc", num_particles=2, num_steps=2, generator=torch.Generator().manual_seed(0))


def test_a_potential_may_take_pil_images_and_rule_images_out():
    def only_first(images):
        assert all(im.size == (32, 32) and im.mode == "RGB" for im in images)
        return [0.0] + [-float("inf")] * (len(images) - 1)
    product = poegen.Product([shapes_ball()], potentials=[poegen.potential(only_first, pil=True)])
    r = poegen.sample(product, sampler="smc", num_particles=3, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(r.log_w).sum() >= 1
    with pytest.raises(TypeError, match="expected a function of images"):
        poegen.potential(3)


def test_the_sd_decoder_hands_the_potential_pixels(tmp_path):
    pipe = sd_pipeline(tiny_sd_folder(tmp_path))
    seen = []

    def f(images):
        seen.append(images.shape)
        return redness(images)
    product = poegen.Product([poegen.from_pipeline(pipe, PROMPT)], potentials=[poegen.potential(f)])
    assert product.decode is not None
    poegen.sample(product, sampler="smc", num_particles=2, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert seen[0] == (2, 3, 16, 16)  # decoded 16x16 pixels, not 8x8 latents


# ---- the README's example ---------------------------------------------------------------------------------------

def readme_example() -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    found = [b for b in blocks if "poegen.from_pipeline(" in b]
    assert len(found) == 1, "README: one python block uses poegen.from_pipeline"
    return found[0]


def test_the_readme_example_runs_on_a_tiny_pipeline(tmp_path, monkeypatch):
    """The README's block, with only the named model's folder swapped for a tiny SD folder on disk."""
    code = readme_example()
    named = re.findall(r'from_pretrained\("([^"]+)"\)', code)
    assert len(named) == 1, "the README example loads one named model"
    root = tmp_path / "pipe"
    sd_pipeline(tiny_sd_folder(tmp_path / "sd")).save_pretrained(root)  # a whole pipeline folder, as on the hub
    code = code.replace(named[0], str(root))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    from PIL import Image

    saved = [p for p in tmp_path.iterdir() if p.suffix == ".png"]
    assert len(saved) == 1 and Image.open(saved[0]).size == (16, 16)  # pixels through the VAE, not 8x8 latents
