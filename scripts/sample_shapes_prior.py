"""Sanity check of the shapes prior through the engine: a grid of samples per phrase, read back by the checker.

Each phrase is sampled as the guided product cond^w * null^(1-w) with the `ancestral` sampler
(composable diffusion, no potentials), so this shows the generative expert alone.

    python scripts/sample_shapes_prior.py --out samples.png --phrases "red ball" "blue box"
"""
import argparse
import time

import torch

import poegen
from poegen.experts.shapes.checker import detect
from poegen.experts.shapes.model import load_prior
from poegen.experts.shapes.render import grid
from poegen.experts.shapes.vocab import parse_phrase


def sample_phrases(prior, phrases, n, steps, guidance, seed, position=None):
    """(images (len(phrases) * n, 3, H, W), checker hits per phrase)."""
    rows, hits = [], {}
    for phrase in phrases:
        expert = prior.expert(None if phrase == "null" else phrase, position)
        experts, weights = [expert], [1.0]
        if guidance != 1.0:
            experts, weights = [expert, prior.null()], [guidance, 1.0 - guidance]
        r = poegen.sample(poegen.Product(experts, weights=weights), sampler="ancestral", num_particles=n,
                          num_steps=steps, generator=torch.Generator().manual_seed(seed))
        rows.append(r.x)
        if phrase != "null":
            want = parse_phrase(phrase)
            hits[phrase] = sum(any(want.matches(d) for d in detect(im)) for im in r.x)
    return torch.cat(rows), hits


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="folder with prior.safetensors (default: package weights)")
    ap.add_argument("--phrases", nargs="+", default=["red ball", "blue box", "green wedge", "yellow ball", "null"])
    ap.add_argument("--position", nargs=2, type=float, default=None, help="pixel (col, row) for every phrase")
    ap.add_argument("--n", type=int, default=8, help="samples per phrase")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=1.0, help="weight w of cond^w * null^(1-w)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="shapes_samples.png")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = time.time()
    images, hits = sample_phrases(load_prior(args.weights), args.phrases, args.n, args.steps, args.guidance,
                                  args.seed, args.position)
    for phrase, h in hits.items():
        print(f"{phrase!r}: checker finds it in {h}/{args.n} samples")
    from PIL import Image
    Image.fromarray(grid(images, ncol=args.n)).save(args.out)
    print(f"saved {args.out} (rows: {', '.join(args.phrases)}) in {time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
