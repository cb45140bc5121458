"""Evaluate samplers on shapes-world prompts with the ground-truth checker (never optimised by a sampler).

For each prompt and sampler, --samples runs with fixed seeds; a run's image is its selected particle.
Samplers run at equal NFE: poe uses --particles particles and --mcmc-steps moves per level; best-of-n
and ancestral use particles * (1 + mcmc_steps) independent chains of the same number of levels
(ancestral returns one uniformly drawn chain). Prints the share of samples that contain every asked
object and, for relation prompts, the share whose relations hold; with --time, the median wall time
of three `poegen generate` runs with defaults.
"""
import argparse
import statistics
import subprocess
import sys
import time
from collections import defaultdict

from poegen.compare import judge, sample_one
from poegen.experts.shapes import load_prior, load_vlm
from poegen.experts.shapes.prompt import build_product

PROMPTS = {
    "single": ["a red ball", "a blue box", "a green wedge", "a yellow ball"],
    "pair": ["a red ball and a blue box", "a green wedge and a yellow ball", "a cyan box and a magenta ball",
             "a blue ball and a red box"],
    "relation": ["a red ball left of a blue box", "a green wedge right of a yellow box", "a red ball on a blue box",
                 "a yellow ball left of a green wedge and a magenta box"],
}


def run_one(product, sampler, args, seed):
    """The image of one run at equal NFE (see poegen.compare.equal_nfe_options)."""
    return sample_one(product, sampler, args.particles, args.mcmc_steps, args.steps, seed).x[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--samplers", default="poe,best-of-n,ancestral")
    ap.add_argument("--categories", default="single,pair,relation")
    ap.add_argument("--particles", type=int, default=16)
    ap.add_argument("--mcmc-steps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--vlm-weight", type=float, default=1.0)
    ap.add_argument("--time", action="store_true", help="also time `poegen generate` with defaults (3 runs)")
    args = ap.parse_args()
    prior, vlm = load_prior(), load_vlm()
    totals = defaultdict(lambda: [0, 0, 0])  # (category, sampler) -> [present, relation ok, n]
    print(f"{'prompt':55s} {'sampler':10s} present  relation  s/sample")
    for cat in args.categories.split(","):
        for prompt in PROMPTS[cat]:
            product = build_product(prompt, prior=prior, vlm=vlm, guidance=args.guidance, vlm_weight=args.vlm_weight)
            for sampler in args.samplers.split(","):
                t, ok_p, ok_r = time.perf_counter(), 0, 0
                for seed in range(args.samples):
                    verdict = judge(run_one(product, sampler, args, seed), prompt)
                    present, rel = verdict["present"], verdict["relation"]
                    ok_p, ok_r = ok_p + present, ok_r + rel
                per = (time.perf_counter() - t) / args.samples
                n = args.samples
                rel_txt = f"{ok_r / n:8.2f}" if cat == "relation" else "       -"
                print(f"{prompt:55s} {sampler:10s} {ok_p / n:7.2f} {rel_txt}  {per:8.1f}", flush=True)
                tot = totals[cat, sampler]
                tot[0], tot[1], tot[2] = tot[0] + ok_p, tot[1] + ok_r, tot[2] + n
    for (cat, sampler), (p, r, n) in totals.items():
        extra = f" relation_holds={r / n:.3f}" if cat == "relation" else ""
        print(f"{cat}_{sampler}_present={p / n:.3f}{extra} (n={n})")
    if args.time:
        walls = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "poegen", "generate", "a red ball and a blue box", "-q",
                            "--out", "/tmp/poegen_eval_time.png"], check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t)
        print(f"generate_median_s={statistics.median(walls):.1f}")


if __name__ == "__main__":
    main()
