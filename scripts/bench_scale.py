"""poegen at real scale, without downloads: full-size architectures from their published configurations
(scripts/arch/*.json) with random weights, timed against diffusers' own pipeline on the same modules.

    python scripts/bench_scale.py --family sd15 --particles 4 --potential clip     # the CPU case, about 8 minutes
    python scripts/bench_scale.py --family flux --particles 4 --device cuda --dtype bf16 --potential vqa
    python scripts/bench_scale.py --family wan --tiny --resolution 64 --steps 10   # Wan 2.1 clips, tiny model

Prints:
- engine_over_pipeline=: poegen's smc (no MCMC, no potentials) wall time per denoiser evaluation over the
  pipeline's time per step, at equal batch (N images; with classifier-free guidance 2N rows per call),
  resolution and dtype (medians of --repeats interleaved runs, each of --steps evaluations);
- poe_level_ms= and the shares of a poe level (2 Langevin moves, the potential if asked) spent in the
  denoiser, the VAE decode, the potentials and the engine itself;
- peak_mem_gb=: torch.cuda's peak on a GPU, the process's peak resident memory on a CPU;
- with --channels-last / --compile: the engine's time per level with that option over without.
Text encoders run once per prompt and are built only where the pipeline needs their outputs' shapes (T5-XXL is
replaced by random embeddings of its width).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import poegen
from poegen import memory

ARCH = Path(__file__).resolve().parent / "arch"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # for `helpers` (tiny tokenizers)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def arch(name: str, shrink: bool) -> dict:
    """A stored configuration; ``shrink`` cuts layer counts (a smoke test of the code path, not a measurement)."""
    cfg = json.loads((ARCH / f"{name}.json").read_text())
    if shrink:
        def cut(d):
            for k, v in list(d.items()):
                if isinstance(v, dict):
                    cut(v)
                elif k in ("num_hidden_layers", "num_layers", "num_single_layers"):
                    d[k] = 1
                elif k == "transformer_layers_per_block":
                    d[k] = [1] * len(v)
                elif k == "layers_per_block":
                    d[k] = 1
        cut(cfg)
    return cfg


def build(cls, config, dtype, device):
    """``cls`` built from ``config`` (a diffusers config mapping, or a transformers config object) directly on
    ``device`` in ``dtype``: random weights, no float32 copy on the way."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if isinstance(config, dict):
                module = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
            else:
                module = cls(config)
    finally:
        torch.set_default_dtype(default)
    return module.eval().requires_grad_(False)


def tokenizer(max_length: int = 77):
    from helpers import _clip_vocab
    from transformers import CLIPTokenizer
    return CLIPTokenizer(vocab=_clip_vocab(), merges=[], model_max_length=max_length)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def params(module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.0f}M"


# ---- families: modules, poegen experts, and the diffusers pipeline on the same modules -------------------------

def setup_sd15(a, dtype, device):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from poegen.experts.diffusers import TextConditionedUNetExpert

    cfg = arch("sd15", a.shrink)
    unet = build(UNet2DConditionModel, cfg["unet"], dtype, device)
    vae = build(AutoencoderKL, cfg["vae"], dtype, device)
    text = build(CLIPTextModel, CLIPTextConfig(**cfg["text_encoder"]), dtype, device)
    sched = DDIMScheduler(**cfg["scheduler"])
    emb = torch.randn(1, 77, 768, device=device, dtype=dtype)
    null = torch.randn(1, 77, 768, device=device, dtype=dtype)
    experts = [TextConditionedUNetExpert(unet, sched.alphas_cumprod, "epsilon", e, name=n)
               for e, n in ((emb, "sd[prompt]"), (null, "sd[]"))]
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer(), unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    kwargs = dict(prompt_embeds=emb, negative_prompt_embeds=null, guidance_scale=a.guidance)
    return dict(experts=experts, weights=[a.guidance, 1 - a.guidance], backbone=unet, vae=vae, pipe=pipe,
                kwargs=kwargs, latent=(4, a.resolution // 8, a.resolution // 8), scale=0.18215, shift=0.0)


def setup_sdxl(a, dtype, device):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from poegen.experts.diffusers import SDXLExpert

    cfg = arch("sdxl", a.shrink)
    unet = build(UNet2DConditionModel, cfg["unet"], dtype, device)
    vae = build(AutoencoderKL, cfg["vae"], dtype, device)
    t1 = build(CLIPTextModel, CLIPTextConfig(**cfg["text_encoder"]), dtype, device)
    t2 = build(CLIPTextModelWithProjection, CLIPTextConfig(**cfg["text_encoder_2"]), dtype, device)
    sched = EulerDiscreteScheduler(**cfg["scheduler"])
    r = a.resolution
    time_ids = torch.tensor([[r, r, 0, 0, r, r]], device=device, dtype=dtype)
    emb, null = (torch.randn(1, 77, 2048, device=device, dtype=dtype) for _ in range(2))
    pooled, null_pooled = (torch.randn(1, 1280, device=device, dtype=dtype) for _ in range(2))
    experts = [SDXLExpert(unet, sched.alphas_cumprod, "epsilon", e, p, time_ids, name=n)
               for e, p, n in ((emb, pooled, "sdxl[prompt]"), (null, null_pooled, "sdxl[]"))]
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=t1, text_encoder_2=t2, tokenizer=tokenizer(),
                                     tokenizer_2=tokenizer(), unet=unet, scheduler=sched)
    kwargs = dict(prompt_embeds=emb, negative_prompt_embeds=null, pooled_prompt_embeds=pooled,
                  negative_pooled_prompt_embeds=null_pooled, guidance_scale=a.guidance)
    return dict(experts=experts, weights=[a.guidance, 1 - a.guidance], backbone=unet, vae=vae, pipe=pipe,
                kwargs=kwargs, latent=(4, r // 8, r // 8), scale=0.13025, shift=0.0)


def setup_flux(a, dtype, device):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from poegen.experts.diffusers import FluxExpert

    cfg = arch("flux", a.shrink)
    model = build(FluxTransformer2DModel, cfg["transformer"], dtype, device)
    vae = build(AutoencoderKL, cfg["vae"], dtype, device)
    clip = build(CLIPTextModel, CLIPTextConfig(**cfg["text_encoder"]), dtype, device)
    sched = FlowMatchEulerDiscreteScheduler(**cfg["scheduler"])
    side = a.resolution // 8
    hidden = torch.randn(1, 512, 4096, device=device, dtype=dtype)  # T5-XXL's output width, 512 tokens
    pooled = torch.randn(1, 768, device=device, dtype=dtype)
    experts = [FluxExpert(model, hidden, pooled, (16, side, side), guidance=3.5, name="flux[prompt]")]
    pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=clip, tokenizer=tokenizer(), text_encoder_2=None,
                        tokenizer_2=None, transformer=model)
    kwargs = dict(prompt_embeds=hidden, pooled_prompt_embeds=pooled, guidance_scale=3.5)
    return dict(experts=experts, weights=[1.0], backbone=model, vae=vae, pipe=pipe, kwargs=kwargs,
                latent=(16, side, side), scale=0.3611, shift=0.1159)


def setup_wan(a, dtype, device):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    from poegen.experts.wan import WanExpert

    if a.potential:
        raise SystemExit("--family wan: potentials on clips (per frame) are not wired yet; leave --potential out")
    cfg = arch("wan_tiny" if a.tiny else "wan21_t2v_1.3b", a.shrink)
    model = build(WanTransformer3DModel, cfg["transformer"], dtype, device)
    vae = build(AutoencoderKLWan, cfg["vae"], dtype, device)
    side, frames = a.resolution // 8, (a.frames - 1) // 4 + 1
    width = cfg["transformer"]["text_dim"]  # UMT5-XXL's 4096, 512 tokens
    emb, null = (torch.randn(1, 512, width, device=device, dtype=dtype) for _ in range(2))
    shape = (16, frames, side, side)
    experts = [WanExpert(model, e, shape, name=n) for e, n in ((emb, "wan[prompt]"), (null, "wan[]"))]
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=model,
                       scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]))
    n = a.particles  # the pipeline repeats only embeddings it computes: pass N rows, one video each
    kwargs = dict(prompt_embeds=emb.expand(n, -1, -1), negative_prompt_embeds=null.expand(n, -1, -1),
                  guidance_scale=a.guidance, num_frames=a.frames, num_videos_per_prompt=1)
    stats = [torch.tensor(vae.config.latents_mean), 1.0 / torch.tensor(vae.config.latents_std)]
    mean, inv_std = (v.view(1, 16, 1, 1, 1).to(device, dtype) for v in stats)  # z / scale + shift = z * std + mean
    return dict(experts=experts, weights=[a.guidance, 1 - a.guidance], backbone=model, vae=vae, pipe=pipe,
                kwargs=kwargs, latent=shape, scale=inv_std, shift=mean)


def potential(a, dtype, device):
    """The asked potential on full-size random weights: CLIP ViT-L/14, or a Llava-1.5-7B-sized VQA scorer."""
    if a.potential == "clip":
        from transformers import CLIPConfig, CLIPModel

        from poegen.experts.vlm import ClipScore
        cfg = arch("clip_vit_l14", a.shrink)
        model = build(CLIPModel, CLIPConfig(**{k: v for k, v in cfg.items() if k[0] != "_"}), dtype, device)
        return ClipScore(model, tokenizer(), "a red ball on a blue box"), model
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from tokenizers import AddedToken

    from poegen.experts.vlm import VQAScore
    from helpers import word_tokenizer
    cfg = arch("llava_1.5_7b", a.shrink)
    words = ["USER", "ASSISTANT", ":", "?", '"', ".", "Does", "this", "figure", "show", "a", "red", "ball", "on",
             "blue", "box", "Yes", "No", "Please", "answer", "yes", "or", "no"]
    tok = word_tokenizer(words, ["<unk>", "<s>", "</s>", "<pad>"], bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.add_tokens([AddedToken("<image>", special=True)])
    size = cfg["vision_config"]["image_size"]
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": size},
                                                                  crop_size={"height": size, "width": size}),
                               tokenizer=tok, patch_size=cfg["vision_config"]["patch_size"],
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    config = LlavaConfig(**{k: v for k, v in cfg.items() if k[0] != "_" and k != "image_token_index"},
                         image_token_index=tok.convert_tokens_to_ids("<image>"))
    model = build(LlavaForConditionalGeneration, config, dtype, device)
    return VQAScore(model, processor, 'Does this figure show "a red ball on a blue box"? Please answer yes or no.',
                    micro_batch=a.micro_batch), model


# ---- timing -------------------------------------------------------------------------------------------------

class Timer:
    """Accumulated seconds of module forwards (hooks) and of wrapped callables."""

    def __init__(self, device):
        self.device, self.total, self.start, self.handles = device, {}, {}, []

    def hook(self, module, label):
        self.handles += [module.register_forward_pre_hook(lambda *_: self._begin(label)),
                         module.register_forward_hook(lambda *_: self._end(label))]

    def remove(self):
        for h in self.handles:
            h.remove()

    def wrap(self, fn, label):
        def timed(*args, **kwargs):
            self._begin(label)
            try:
                return fn(*args, **kwargs)
            finally:
                self._end(label)
        return timed

    def _begin(self, label):
        sync(self.device)
        self.start[label] = time.perf_counter()

    def _end(self, label):
        sync(self.device)
        self.total[label] = self.total.get(label, 0.0) + time.perf_counter() - self.start.pop(label)


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=("sd15", "sdxl", "flux", "wan"), default="sd15")
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="denoiser evaluations per timed run")
    ap.add_argument("--resolution", type=int, default=None, help="pixels (default: 256 on a CPU, the family's own "
                                                                  "on a GPU: 512, 1024, 1024)")
    ap.add_argument("--frames", type=int, default=None, help="wan: frames, 4k + 1 (default 9 on a CPU, 81 on a GPU)")
    ap.add_argument("--tiny", action="store_true", help="wan: the tests' tiny model (scripts/arch/wan_tiny.json)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    ap.add_argument("--potential", choices=("clip", "vqa"), default=None, help="add it to the poe level")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--micro-batch", type=int, default=None, help="micro-batch of the VQA scorer")
    ap.add_argument("--channels-last", action="store_true", help="also time the engine with channels_last")
    ap.add_argument("--compile", action="store_true", help="also time the engine with torch.compile")
    ap.add_argument("--shrink", action="store_true", help="1-layer models: checks the code path, measures nothing")
    a = ap.parse_args()
    start = time.perf_counter()
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    a.resolution = a.resolution or (256 if device.type == "cpu" else {"sd15": 512, "sdxl": 1024, "flux": 1024,
                                                                      "wan": 480}[a.family])
    a.frames = a.frames or (9 if device.type == "cpu" else 81)
    t0 = time.perf_counter()
    s = {"sd15": setup_sd15, "sdxl": setup_sdxl, "flux": setup_flux, "wan": setup_wan}[a.family](a, dtype, device)
    print(f"family={a.family} device={device} dtype={a.dtype} particles={a.particles} resolution={a.resolution} "
          f"steps={a.steps} backbone_params={params(s['backbone'])} vae_params={params(s['vae'])} "
          f"built_s={time.perf_counter() - t0:.0f}", flush=True)
    N, K = a.particles, a.steps
    product = poegen.Product(s["experts"], weights=s["weights"])
    pipe = s["pipe"].to(device)
    pipe.set_progress_bar_config(disable=True)

    def engine_run(steps=K):
        return poegen.sample(product, sampler="smc", num_particles=N, num_steps=steps - 1, shape=s["latent"],
                             generator=torch.Generator(device).manual_seed(0), device=device, dtype=dtype)

    def pipeline_run(steps=K):
        with torch.no_grad():
            per_prompt = {} if a.family == "wan" else {"num_images_per_prompt": N}
            return pipe(height=a.resolution, width=a.resolution, num_inference_steps=steps, output_type="latent",
                        generator=torch.Generator(device).manual_seed(0), **per_prompt, **s["kwargs"])

    memory.reset_peak(device)
    engine_run(2), pipeline_run(2)  # warm-up: kernels, lazily built buffers
    runs = {"engine": [], "pipeline": []}
    inside = Timer(device)  # the backbone's own time in each run, to tell model time from loop overhead
    inside.hook(s["backbone"], "backbone")
    model = {"engine": [], "pipeline": []}
    for _ in range(a.repeats):  # interleaved, so drifts in machine load hit both alike
        for name, fn in (("engine", engine_run), ("pipeline", pipeline_run)):
            inside.total.clear()
            runs[name].append(timed(fn, device) / K)
            model[name].append(inside.total["backbone"] / K)
    inside.remove()
    engine, pipeline = statistics.median(runs["engine"]), statistics.median(runs["pipeline"])
    print(f"engine_level_s={engine:.3f} pipeline_step_s={pipeline:.3f} "
          f"(runs: engine {', '.join(f'{v:.3f}' for v in runs['engine'])}; "
          f"pipeline {', '.join(f'{v:.3f}' for v in runs['pipeline'])})")
    print(f"backbone_s_per_step engine={statistics.median(model['engine']):.3f} "
          f"pipeline={statistics.median(model['pipeline']):.3f}; outside the backbone per step "
          f"engine={statistics.median(r - m for r, m in zip(runs['engine'], model['engine'])):.3f} "
          f"pipeline={statistics.median(r - m for r, m in zip(runs['pipeline'], model['pipeline'])):.3f}")
    print(f"engine_over_pipeline={engine / pipeline:.3f}", flush=True)

    # a poe level: the proposal plus 2 Langevin moves, the VAE decode and the potential
    from poegen.experts.diffusers import _Decode
    decoder = _Decode(s["vae"])
    timer = Timer(device)
    timer.hook(s["backbone"], "denoiser")
    timer.hook(decoder, "decode")

    def decode(z):
        return decoder((z / s["scale"] + s["shift"]).to(dtype)).clamp(-1, 1).to(z.dtype)
    pots = []
    if a.potential:
        pot, model = potential(a, dtype, device)
        pot.log_potential = timer.wrap(pot.log_potential, "potentials")
        pots = [pot]
        print(f"potential={a.potential} potential_params={params(model)}")
    poe = poegen.Product(s["experts"], weights=s["weights"], potentials=pots, decode=decode if pots else None)
    wall = timed(lambda: poegen.sample(poe, sampler="poe", num_particles=N, num_steps=K, shape=s["latent"],
                                       generator=torch.Generator(device).manual_seed(0), device=device, dtype=dtype),
                 device)
    level = wall / K  # K levels plus the level-0 evaluation, charged to the levels
    shares = {k: timer.total.get(k, 0.0) / wall for k in ("denoiser", "decode", "potentials")}
    shares["engine"] = 1 - sum(shares.values())
    print(f"poe_level_ms={1000 * level:.0f} " + " ".join(f"{k}_share={v:.3f}" for k, v in shares.items()))
    print(f"peak_mem_gb={memory.peak(device) / memory.GB:.2f}", flush=True)
    timer.remove()  # no timing hooks in what torch.compile traces

    for flag, apply in (("channels_last", lambda m: m.to(memory_format=torch.channels_last)),
                        ("compile", lambda m: m.compile())):
        if not getattr(a, flag):
            continue
        apply(s["backbone"])
        engine_run(2)  # warm-up (for compile: the compilation itself)
        tuned = statistics.median(timed(engine_run, device) / K for _ in range(a.repeats))
        print(f"{flag}_level_s={tuned:.3f} {flag}_gain={engine / tuned:.3f}", flush=True)
    print(f"total_s={time.perf_counter() - start:.0f}")


if __name__ == "__main__":
    sys.exit(main())
