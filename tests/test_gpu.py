"""GPU checks (skipped without CUDA; run with `pytest -m gpu` or scripts/gpu_checks.sh): the loop runs on the device
and matches the closed form, SD reproduces its diffusers pipeline on the device, offload hooks keep the samples, a
memory cap is kept, the default shapes route gives an exact image of an easy prompt, and a CLIP potential builds on
a model already on the device."""
import pytest
import torch

import poegen
from poegen import memory
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


def test_sd_with_cfg_matches_the_ddim_pipeline_on_cuda(tmp_path, monkeypatch):
    """test_pipeline_parity's SD case with the models, the particles and the noise on the GPU."""
    from diffusers import StableDiffusionPipeline

    from helpers import tiny_sd_folder
    from poegen.experts.diffusers import TextConditionedUNetExpert
    from test_pipeline_parity import PROMPT, SEED, W, _ddim_grid, _sd_components

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 convolutions round differently per batch
    root = tiny_sd_folder(tmp_path)
    pipe = StableDiffusionPipeline(**_sd_components(root)).to("cuda")
    _, sigmas = _ddim_grid(pipe, 5)
    cond, uncond = TextConditionedUNetExpert.load_prompts(str(root), [PROMPT, ""])
    product = poegen.Product([cond, uncond], weights=[W, 1 - W]).to("cuda")
    ours = poegen.sample(product, sampler="ancestral", proposal="euler", mcmc_steps=0, num_particles=1,
                         num_steps=len(sigmas) - 1, sigmas=[float(s) for s in sigmas], device="cuda",
                         generator=torch.Generator("cuda").manual_seed(SEED)).x
    x_init = float(sigmas[0]) * torch.randn((1, *product.shape), device="cuda",
                                            generator=torch.Generator("cuda").manual_seed(SEED))
    latents = x_init / float((1 + sigmas[0] ** 2).sqrt())
    with torch.no_grad():
        theirs = pipe(PROMPT, num_inference_steps=5, guidance_scale=W, latents=latents, output_type="latent").images
    err = float((ours - theirs).norm() / theirs.norm())
    print(f"sd_cuda_relative_error={err:.3g}")
    assert ours.device.type == "cuda" and err < 1e-5, err


def test_offload_on_cuda_keeps_the_samples_and_one_module_resident(tmp_path):
    from helpers import tiny_clip_folder, tiny_sd_folder
    from poegen.families import named_product

    product = named_product("a red ball", [f"sd:{tiny_sd_folder(tmp_path / 'sd')}"],
                            [f"clip:{tiny_clip_folder(tmp_path / 'clip')}"]).to("cuda")

    def run():
        return poegen.sample(product, num_particles=4, num_steps=3, device="cuda",
                             generator=torch.Generator("cuda").manual_seed(0)).x
    before = run()
    hooks = memory.offload(product, "cuda")
    after = run()
    assert len(hooks) == 3 and torch.allclose(before, after, atol=1e-4), float((before - after).abs().max())
    modules = [h.model for h in hooks]
    on_gpu = [any(p.is_cuda for p in m.parameters()) for m in modules]
    assert sum(on_gpu) == 1, on_gpu  # only the module used last stays on the device


def test_a_memory_cap_on_cuda_is_kept_with_the_same_samples():
    from diffusers import DDPMScheduler, UNet2DModel

    from poegen.experts.diffusers import VPUNetExpert

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    expert = VPUNetExpert(unet.eval(), DDPMScheduler(num_train_timesteps=1000).alphas_cumprod)
    product = poegen.Product([expert]).to("cuda")
    N = 512

    def run():
        return poegen.sample(product, sampler="smc", num_particles=N, num_steps=3, device="cuda",
                             generator=torch.Generator("cuda").manual_seed(0)).x
    run()
    base = memory.current("cuda")
    plain_x = None

    def plain_run():
        nonlocal plain_x
        plain_x = run()
    plain = memory.measure(plain_run, "cuda")
    cap = base + plain / 2
    chosen = memory.fit(product, cap / memory.GB, N, "cuda")
    assert 1 <= chosen[expert.name] < N
    torch.cuda.reset_peak_memory_stats()
    capped_x = run()
    peak = torch.cuda.max_memory_allocated()
    print(f"cuda_cap_gb={cap / memory.GB:.3f} plain_peak_gb={(base + plain) / memory.GB:.3f} "
          f"capped_peak_gb={peak / memory.GB:.3f} micro_batch={chosen[expert.name]}")
    assert peak <= cap < base + plain
    assert float((capped_x - plain_x).norm() / plain_x.norm()) < 1e-4


def test_the_default_shapes_route_runs_on_cuda_and_satisfies_an_easy_prompt():
    from poegen import samplers
    from poegen.compare import judge
    from poegen.job import Job
    from poegen.pipeline import products

    prompt = "a red ball and a blue box"
    [(_, product)] = products(Job(prompt=prompt, device="cuda"))
    product.to("cuda")
    r = samplers.sample(product, num_particles=8, num_steps=20, generator=torch.Generator("cuda").manual_seed(0))
    assert r.x.device.type == "cuda" and torch.isfinite(r.log_w).all()
    assert judge(r.x[0].float().cpu(), prompt)["exact"]


def test_a_clip_potential_builds_on_a_model_already_on_cuda(tmp_path):
    from transformers import CLIPModel, CLIPTokenizer

    from helpers import tiny_clip_folder
    from poegen.experts.vlm import ClipScore

    root = tiny_clip_folder(tmp_path)
    model, tok = CLIPModel.from_pretrained(root), CLIPTokenizer.from_pretrained(root)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    expected = ClipScore(model, tok, "a red ball").log_potential(x)
    on_gpu = ClipScore(model.to("cuda"), tok, "a red ball")  # the text is embedded at once, on the model's device
    assert torch.allclose(on_gpu.log_potential(x.cuda()).cpu(), expected, atol=1e-4)
