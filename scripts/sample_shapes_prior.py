"""Sanity check of the shapes prior: sample a grid for a few phrases and read the samples back with the checker.

Sampler: EDM (Karras et al. 2022, arXiv 2206.00364) Heun over Karras sigmas, deterministic (Alg. 1)
or with churn (Alg. 2); optional classifier-free guidance (a product cond^w * null^(1-w)) and x0 clipping.

    python scripts/sample_shapes_prior.py --out /tmp/samples.png --phrases "red ball" "blue box" "green wedge"
    python scripts/sample_shapes_prior.py --weights runs/prior/export --position 10 25
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poegen.experts.shapes.checker import detect  # noqa: E402
from poegen.experts.shapes.model import load_prior  # noqa: E402
from poegen.experts.shapes.render import grid  # noqa: E402
from poegen.experts.shapes.vocab import parse_phrase  # noqa: E402


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """n noise levels from sigma_max to sigma_min (Karras et al. eq. 5), followed by 0."""
    ramp = torch.linspace(0, 1, n)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1)])


def sample(denoise, shape, sigmas, gen, churn: float = 0.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003):
    """EDM Heun sampler (Alg. 2; churn=0 gives Alg. 1) for a VE denoiser."""
    x = torch.randn(shape, generator=gen) * sigmas[0]
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(churn / n, 2**0.5 - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + (s_hat**2 - s**2).sqrt() * s_noise * torch.randn(shape, generator=gen)
        d = (x - denoise(x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:
            d2 = (x_next - denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s_hat) * 0.5 * (d + d2)
        x = x_next
    return x


def main():
    """Sample, save a grid PNG, print the checker's hit rate per phrase."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="folder with prior.safetensors (default: package weights)")
    ap.add_argument("--phrases", nargs="+", default=["red ball", "blue box", "green wedge", "large yellow box",
                                                     "small magenta ball", "cyan wedge", "null"])
    ap.add_argument("--position", nargs=2, type=float, default=None, help="pixel (col, row) for every phrase")
    ap.add_argument("--n", type=int, default=8, help="samples per phrase")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--churn", type=float, default=20.0)
    ap.add_argument("--guidance", type=float, default=1.0, help="CFG weight w (1 = plain conditional)")
    ap.add_argument("--no-clip", action="store_true", help="do not clamp x0_hat to [-1, 1]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/shapes_samples.png")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prior = load_prior(args.weights)
    null = prior.null()
    sigmas = karras_sigmas(args.steps, max(prior.config["sigma_min"], 0.002), prior.config["sigma_max"])
    rows, t0, nfe = [], time.time(), 0
    for phrase in args.phrases:
        expert = prior.expert(None if phrase == "null" else phrase, args.position)

        def denoise(x, s):
            """Guided, clipped denoiser."""
            nonlocal nfe
            nfe += 1
            d = expert.denoise(x, s)
            if args.guidance != 1.0:
                d = null.denoise(x, s) + args.guidance * (d - null.denoise(x, s))
            return d if args.no_clip else d.clamp(-1, 1)

        gen = torch.Generator().manual_seed(args.seed)
        x = sample(denoise, (args.n, *expert.shape), sigmas, gen, churn=args.churn).clamp(-1, 1)
        rows.append(x)
        if phrase != "null":
            want = parse_phrase(phrase)
            hits = [any(want.matches(d) for d in detect(im)) for im in x]
            print(f"{phrase!r}: checker finds it in {sum(hits)}/{len(hits)} samples", flush=True)
        counts = [len(detect(im)) for im in x]
        print(f"  objects per sample: {counts}", flush=True)
    elapsed = time.time() - t0
    print(f"{nfe} denoiser calls (batch {args.n}) in {elapsed:.1f} s: {1000 * elapsed / nfe:.0f} ms per call")
    from PIL import Image
    Image.fromarray(grid(torch.cat(rows), ncol=args.n)).save(args.out)
    print(f"saved {args.out} (rows: {', '.join(args.phrases)})")


if __name__ == "__main__":
    main()
