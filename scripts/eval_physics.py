"""Evaluate samplers on the example scenes: does every object sit where the simulation put it?

For each scene under examples/, --samples runs with fixed seeds per sampler at equal NFE (see
poegen.compare.equal_nfe_options). A sample is placed when, for every visible simulated object, the
checker finds an object of the same colour and shape whose centroid lies within 2 px (at 32x32) of
the simulated one; it is exact when, besides, nothing else is in the image (no other object, no blend,
no unexplained pixel: poegen.experts.shapes.checker.exactly). Prints the shares per scene and sampler,
then overall.

    python scripts/eval_physics.py --workers 2
"""
import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from poegen import compare, samplers
from poegen.job import Job
from poegen.specs import spec_kind


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seed0", type=int, default=0)
    ap.add_argument("--samplers", default="poe,best-of-n,ancestral")
    ap.add_argument("--scenes", default="examples", help="a folder of scene specs, or comma-separated files")
    ap.add_argument("--particles", type=int, default=Job.particles, help="default: poegen generate's")
    ap.add_argument("--mcmc-steps", type=int, default=samplers.PRESETS["poe"]["mcmc_steps"])
    ap.add_argument("--steps", type=int, default=Job.steps)
    ap.add_argument("--guidance", type=float, default=None, help="phrase weight (default: the shapes world's)")
    ap.add_argument("--grad-guidance", type=float, default=0.0, help="gradient guidance of the stochastic proposals")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    folder = Path(args.scenes)
    scenes = (sorted(str(p) for p in folder.glob("*.yaml") if spec_kind(p) == "scene") if folder.is_dir()
              else args.scenes.split(","))
    rows, _ = compare.run(scenes, args.samplers.split(","), args.samples, args.particles, args.mcmc_steps,
                          args.steps, args.guidance, workers=args.workers, seed0=args.seed0,
                          options={"grad_guidance": args.grad_guidance} if args.grad_guidance else None)
    groups, totals = defaultdict(list), defaultdict(list)
    for r in rows:
        groups[r.prompt, r.sampler].append(r)
        totals[r.sampler].append(r)
    print(f"{'scene':20s} {'sampler':10s} present  placed   exact  s/sample    NFE")
    for (scene, sampler), rs in groups.items():
        n = len(rs)
        print(f"{Path(scene).stem:20s} {sampler:10s} {sum(r.present for r in rs) / n:7.2f} "
              f"{sum(r.relation for r in rs) / n:7.2f} {sum(r.exact for r in rs) / n:7.2f}  {statistics.median(r.seconds for r in rs):8.1f} "
              f"{statistics.mean(r.nfe for r in rs):6.0f}", flush=True)
    for sampler, rs in totals.items():
        n = len(rs)
        print(f"overall_{sampler}_exact={sum(r.exact for r in rs) / n:.3f} "
              f"overall_{sampler}_placed={sum(r.relation for r in rs) / n:.3f} (n={n})")


if __name__ == "__main__":
    main()
