"""Evaluate samplers on the example scenes: does every object sit where the simulation put it?

For each scene under examples/, --samples runs with fixed seeds per sampler (equal NFE, see
eval_shapes.py). A sample succeeds when, for every visible simulated object, the checker finds an
object of the same colour and shape whose centroid lies within --tolerance px (at 32x32) of the
simulated one. Prints the share per scene and sampler, then overall.
"""
import argparse
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from eval_shapes import run_one
from poegen.experts.physics import PhysicsExpert
from poegen.experts.shapes import detect, load_prior
from poegen.experts.shapes.prompt import build_scene_product
from poegen.scene import load_scene


def placed(image, physics, tolerance):
    """True when every visible simulated object is found, right colour and shape, within tolerance px."""
    dets = detect(image)
    for o, pos in zip(physics.scene.objects, physics.positions):
        if pos is None:
            continue
        if not any(d.colour == o.colour and d.shape == o.shape and
                   np.hypot(d.centroid[0] - pos[0], d.centroid[1] - pos[1]) <= tolerance for d in dets):
            return False
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--samplers", default="poe,best-of-n,ancestral")
    ap.add_argument("--scenes", default="examples")
    ap.add_argument("--particles", type=int, default=16)
    ap.add_argument("--mcmc-steps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--tolerance", type=float, default=2.0)
    args = ap.parse_args()
    prior = load_prior()
    totals = defaultdict(lambda: [0, 0])
    print(f"{'scene':20s} {'sampler':10s} placed  s/sample")
    for path in sorted(Path(args.scenes).glob("*.yaml")):
        physics = PhysicsExpert(load_scene(path))
        product = build_scene_product(physics, prior, args.guidance)
        for sampler in args.samplers.split(","):
            t, ok = time.perf_counter(), 0
            for seed in range(args.samples):
                ok += placed(run_one(product, sampler, args, seed), physics, args.tolerance)
            print(f"{path.stem:20s} {sampler:10s} {ok / args.samples:6.2f}  {(time.perf_counter() - t) / args.samples:8.1f}",
                  flush=True)
            totals[sampler][0] += ok
            totals[sampler][1] += args.samples
    for sampler, (ok, n) in totals.items():
        print(f"overall_{sampler}_placed={ok / n:.3f} (n={n})")


if __name__ == "__main__":
    main()
