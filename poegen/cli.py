"""The ``poegen`` command: ``generate`` an image from a prompt, list ``samplers``."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from . import samplers

log = logging.getLogger("poegen.cli")


def save_image(x: torch.Tensor, out: Path, scale: int = 8) -> Path:
    """Write a (3, H, W) image in [-1, 1] as out (upscaled by ``scale``) and out_raw (native size)."""
    from PIL import Image

    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    img = Image.fromarray(arr)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_name(out.stem + "_raw" + out.suffix)
    img.save(raw)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(out)
    return raw


def _products(args):
    """(label, Product) pairs: one for a prompt, one per frame for a scene spec."""
    from .experts.shapes.prompt import build_product, build_scene_product

    if args.scene is None:
        if not args.prompt:
            raise ValueError("give a PROMPT or --scene FILE")
        return [("", build_product(args.prompt, guidance=args.guidance, vlm_weight=args.vlm_weight))]
    from .experts.physics import PhysicsExpert
    from .experts.shapes.model import load_prior
    from .scene import load_scene

    spec, prior = load_scene(args.scene), load_prior()
    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    times = [spec.physics.duration * i / (args.frames - 1) for i in range(args.frames)] if args.frames > 1 else [None]
    return [(f"_f{i:02d}" if args.frames > 1 else "", build_scene_product(PhysicsExpert(spec, until=t), prior, args.guidance))
            for i, t in enumerate(times)]


def cmd_generate(args) -> int:
    options = dict(progress=not args.quiet, select=args.select)
    if args.mcmc_steps is not None:
        options["mcmc_steps"] = args.mcmc_steps
    out, frames, t = Path(args.out), [], time.perf_counter()
    for label, product in _products(args):
        # the same seed for every frame: shared noise keeps the appearance consistent along the sequence
        result = samplers.sample(product, sampler=args.sampler, num_particles=args.particles, num_steps=args.steps,
                                 generator=torch.Generator().manual_seed(args.seed), **options)
        path = out.with_name(out.stem + label + out.suffix)
        save_image(result.x[0], path)
        frames.append(path)
        log.info("%s: NFE %s; log Z %.3f", path, result.nfe, result.log_Z)
    elapsed = time.perf_counter() - t
    if len(frames) > 1:
        from PIL import Image
        gif = out.with_suffix(".gif")
        images = [Image.open(f) for f in frames]
        images[0].save(gif, save_all=True, append_images=images[1:], duration=250, loop=0)
        print(f"wrote {len(frames)} frames {frames[0]} .. {frames[-1]} and {gif} in {elapsed:.1f} s")
    else:
        print(f"wrote {out} (raw {out.with_name(out.stem + '_raw' + out.suffix)}) in {elapsed:.1f} s")
    return 0


def cmd_samplers(args) -> int:
    for name, preset in samplers.PRESETS.items():
        print(f"{name:10s} {preset}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="poegen", description="Generate images from a product of experts.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="sample an image for a prompt or a scene spec of the embedded shapes world")
    g.add_argument("prompt", nargs="?", help="e.g. 'a red ball and a blue box', 'a green wedge left of a yellow ball'")
    g.add_argument("--scene", default=None, help="a scene spec (YAML/JSON, see examples/): physics places the objects")
    g.add_argument("--frames", type=int, default=1, help="with --scene: simulate N time points, one image each, and a GIF")
    g.add_argument("--sampler", default="poe", choices=samplers.available())
    g.add_argument("--particles", type=int, default=16)
    g.add_argument("--steps", type=int, default=30)
    g.add_argument("--mcmc-steps", type=int, default=None, help="Langevin moves per level (preset default)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--guidance", type=float, default=1.0, help="composable-diffusion weight of each phrase")
    g.add_argument("--vlm-weight", type=float, default=1.0, help="lambda of each VLM question (0: none; prompts only)")
    g.add_argument("--select", default="best", choices=("best", "draw"), help="which particle becomes the image")
    g.add_argument("--out", default="poegen.png")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g.set_defaults(fn=cmd_generate)
    s = sub.add_parser("samplers", help="list the named samplers and their presets")
    s.set_defaults(fn=cmd_samplers)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"poegen: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
