"""Peak memory of poegen.from_pipeline: does wrapping a loaded pipeline copy its models?

A mid-size Stable-Diffusion-shaped pipeline with random weights (a UNet of a few hundred MB built from a config,
small text encoder and VAE) is saved to a temporary folder; then each mode runs in a fresh process and prints its
peak resident set size (ru_maxrss), its RSS after loading and the peak of what follows (VmHWM reset after loading):

    load          StableDiffusionPipeline.from_pretrained(folder)
    pipe-sample   load, then one call of the pipeline itself (its own activations: the baseline for sampling)
    wrap-sample   load, then poegen.from_pipeline(pipe, [prompt, ""]) and one poegen.sample
    path-sample   load, then the folder route (TextConditionedUNetExpert.load_prompts(folder)): a second copy

A copy of the UNet shows as a delta near its size (path-sample); from_pipeline's delta should stay near the
pipeline's own sampling delta.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red ball"


def build(root: Path, width: int):
    """Save a StableDiffusionPipeline with random weights: UNet channels (width, 2 width, 4 width)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tiny tokenizer's vocabulary
    from helpers import _clip_vocab

    torch.manual_seed(0)
    vocab = _clip_vocab()
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(width, 2 * width, 4 * width), cross_attention_dim=256,
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                attention_head_dim=8)
    pipe = StableDiffusionPipeline(
        unet=unet, scheduler=DDIMScheduler(clip_sample=False, set_alpha_to_one=True),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8),
        text_encoder=CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=256, intermediate_size=512,
                                                  num_hidden_layers=2, num_attention_heads=4,
                                                  max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                                                  pad_token_id=1)),
        vae=AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                          norm_num_groups=32, sample_size=32),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root)
    return {name: sum(p.numel() * p.element_size() for p in getattr(pipe, name).parameters()) / 2 ** 20
            for name in ("unet", "text_encoder", "vae")}


def _rss() -> dict:
    """(current, peak since the last reset) resident set size in MiB, from /proc/self/status."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(status[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def child(mode: str, root: str, steps: int, particles: int):
    """One mode in this process; prints as JSON its peak RSS in MiB (ru_maxrss), the RSS after loading, and the
    peak of the phase after loading (VmHWM reset through /proc/self/clear_refs)."""
    import torch
    from diffusers import StableDiffusionPipeline

    import poegen

    pipe = StableDiffusionPipeline.from_pretrained(root)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():  # fault every weight in (the loader may map the files lazily): the pipeline is resident
        for name in ("unet", "text_encoder", "vae"):
            for p in getattr(pipe, name).parameters():
                p.sum()
    after_load = _rss()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # the phase's own peak from here
    seen = {"unet_shared": None}
    if mode == "pipe-sample":
        with torch.no_grad():
            pipe([PROMPT] * particles, num_inference_steps=steps, guidance_scale=7.5, output_type="latent",
                 generator=torch.Generator().manual_seed(0))
    elif mode in ("wrap-sample", "path-sample"):
        if mode == "wrap-sample":
            cond, uncond = poegen.from_pipeline(pipe, [PROMPT, ""])
        else:
            from poegen.experts.diffusers import TextConditionedUNetExpert
            cond, uncond = TextConditionedUNetExpert.load_prompts(root, [PROMPT, ""])
        seen["unet_shared"] = cond.unet is pipe.unet
        product = poegen.Product([cond, uncond], weights=[7.5, -6.5])
        sigmas = poegen.pipeline_sigmas(pipe, steps)
        poegen.sample(product, sampler="ancestral", proposal="euler", num_particles=particles,
                      num_steps=len(sigmas) - 1, sigmas=sigmas, generator=torch.Generator().manual_seed(0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    now = _rss()
    print(json.dumps({"mode": mode, "peak_rss": peak, "after_load": after_load, "phase_peak": now["VmHWM"],
                      "anon": now["RssAnon"], "file": now["RssFile"], **seen}))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=128, help="the UNet's first block channels (default 128)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--particles", type=int, default=1)
    ap.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child, args.steps, args.particles)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with tempfile.TemporaryDirectory() as tmp:
        sizes = build(Path(tmp), args.width)
        print(f"CPU: {cpu_name()}; fp32 sizes (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in sizes.items()))
        results = {}
        print("mode          peak RSS  after load  phase peak  phase peak - after load")
        for mode in ("load", "pipe-sample", "wrap-sample", "path-sample"):
            t = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--child", mode, tmp, "--steps", str(args.steps),
                                  "--particles", str(args.particles)], env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"mode {mode} failed:\n{out.stderr[-2000:]}")
            r = results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            r["delta"] = r["phase_peak"] - r["after_load"]
            shared = r["unet_shared"]
            print(f"{mode:12s} {r['peak_rss']:9.1f} {r['after_load']:11.1f} {r['phase_peak']:11.1f} {r['delta']:+11.1f} MiB"
                  f"  (at the end anon {r['anon']:.1f}, file {r['file']:.1f})"
                  + ("" if shared is None else f"  expert.unet is pipe.unet: {shared}")
                  + f"  [{time.perf_counter() - t:.1f} s]")
    wrap, path = results["wrap-sample"]["delta"], results["path-sample"]["delta"]
    print(f"from_pipeline + one sample: {wrap:+.1f} MiB over the loaded pipeline ({wrap / sizes['unet']:.0%} of the "
          f"{sizes['unet']:.1f} MiB UNet; the pipeline's own sampling {results['pipe-sample']['delta']:+.1f} MiB); "
          f"the folder route's second copy: {path:+.1f} MiB")

if __name__ == "__main__":
    main()
