"""Evaluate samplers on shapes-world prompts with the ground-truth checker (never optimised by a sampler).

For each prompt and sampler, --samples runs with fixed seeds; a run's image is its selected particle.
Samplers run at equal NFE (poegen.compare.equal_nfe_options): poe uses --particles particles and
--mcmc-steps moves per level; best-of-n gets particles * (1 + mcmc_steps) chains and keeps the best;
ancestral's uniform draw from independent chains has the law of one chain, so it runs one. Prints the
share of samples that are exactly what was asked (every asked object, the relations holding, and nothing
else: no other object, no blend, no unexplained pixel; poegen.experts.shapes.checker.exactly), the
share that contain every asked object and, for relation prompts, the share whose relations hold;
also the share present when touching objects of one colour are read as one object (the checker
before it tried cuts, `detect(split=False)`); with --time, the median wall time of three `poegen
generate` runs with defaults.

    python scripts/eval_shapes.py --workers 2 --time
"""
import argparse
import statistics
import subprocess
import sys
import time
from collections import defaultdict

from poegen import compare, samplers
from poegen.job import Job

PROMPTS = {
    "single": ["a red ball", "a blue box", "a green wedge", "a yellow ball"],
    "pair": ["a red ball and a blue box", "a green wedge and a yellow ball", "a cyan box and a magenta ball",
             "a blue ball and a red box"],
    "relation": ["a red ball left of a blue box", "a green wedge right of a yellow box", "a red ball on a blue box",
                 "a yellow ball left of a green wedge and a magenta box"],
    # issue 25's harder prompts (opt in with --categories tierb): counts, three objects, same-shape and size
    # binding, chains, absences
    "tierb": ["two red balls and a blue box", "three boxes", "a red box, a cyan ball and a yellow wedge",
              "a red ball and a blue ball", "a green ball on a red box on a blue box",
              "a magenta wedge left of a green box and the green box left of a blue ball", "a yellow wedge and no ball",
              "a large blue ball left of a small red ball"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=16, help="seeds per prompt (4 prompts per category, 8 in tierb)")
    ap.add_argument("--seed0", type=int, default=0, help="first seed (tune on other seeds than you report)")
    ap.add_argument("--samplers", default="poe,best-of-n,ancestral")
    ap.add_argument("--categories", default="single,pair,relation")
    ap.add_argument("--particles", type=int, default=Job.particles, help="default: poegen generate's")
    ap.add_argument("--mcmc-steps", type=int, default=samplers.PRESETS["poe"]["mcmc_steps"])
    ap.add_argument("--steps", type=int, default=Job.steps)
    ap.add_argument("--guidance", type=float, default=None, help="phrase weight (default: the shapes world's)")
    ap.add_argument("--vlm-weight", type=float, default=None, help="default: the shapes world's")
    ap.add_argument("--grad-guidance", type=float, default=0.0, help="gradient guidance of the stochastic proposals")
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the runs")
    ap.add_argument("--reward-every", default="1", metavar="K,K,...",
                    help="score the potentials every K levels; several values: one evaluation each, with its wall time")
    ap.add_argument("--time", action="store_true", help="also time `poegen generate` with defaults (3 runs)")
    args = ap.parse_args()
    for k in [int(v) for v in args.reward_every.split(",")]:
        evaluate(args, k)
    if args.time:
        walls = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "poegen", "generate", "a red ball and a blue box", "-q",
                            "--out", "/tmp/poegen_eval_time.png"], check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t)
        print(f"generate_walls_s={','.join(f'{w:.1f}' for w in walls)} generate_median_s={statistics.median(walls):.1f}")


def evaluate(args, reward_every: int):
    """One evaluation of every sampler on every category; lines carry a reward_every= prefix when k > 1."""
    cats = args.categories.split(",")
    prompts = [p for c in cats for p in PROMPTS[c]]
    category = {p: c for c in cats for p in PROMPTS[c]}
    options = {k: v for k, v in (("grad_guidance", args.grad_guidance), ("reward_every", reward_every)) if v not in (0, 1)}
    t0 = time.perf_counter()
    rows, images = compare.run(prompts, args.samplers.split(","), args.samples, args.particles, args.mcmc_steps,
                               args.steps, args.guidance, args.vlm_weight, workers=args.workers, seed0=args.seed0,
                               options=options or None)
    wall = time.perf_counter() - t0
    tag = f"reward_every={reward_every} " if reward_every != 1 else ""
    groups = defaultdict(list)
    for r in rows:
        groups[r.prompt, r.sampler].append(r)
    print(f"{'prompt':55s} {'sampler':10s}   exact present  relation  s/sample    NFE")
    totals, unsplit = defaultdict(list), defaultdict(list)
    for (prompt, sampler), rs in groups.items():
        n, cat = len(rs), category[prompt]
        present, rel = sum(r.present for r in rs) / n, sum(r.relation for r in rs) / n
        rel_txt = f"{rel:8.2f}" if cat == "relation" else "       -"
        exact = sum(r.exact for r in rs) / n
        print(f"{prompt:55s} {sampler:10s} {exact:7.2f} {present:7.2f} {rel_txt}  {statistics.median(r.seconds for r in rs):8.1f}"
              f" {statistics.mean(r.nfe for r in rs):6.0f}", flush=True)
        totals[cat, sampler] += rs
        unsplit[cat, sampler] += [compare.judge(x, prompt, split=False)["present"] for x in images[sampler, prompt, args.particles]]
    for (cat, sampler), rs in totals.items():
        n = len(rs)
        extra = f" relation_holds={sum(r.relation for r in rs) / n:.3f}" if cat == "relation" else ""
        print(f"{tag}{cat}_{sampler}_exact={sum(r.exact for r in rs) / n:.3f} "
              f"{cat}_{sampler}_present={sum(r.present for r in rs) / n:.3f}{extra} (n={n}) "
              f"present_unsplit={sum(unsplit[cat, sampler]) / n:.3f}")
    for sampler in dict.fromkeys(r.sampler for r in rows):
        rs = [r for r in rows if r.sampler == sampler]
        print(f"{tag}{sampler}_median_s_per_sample={statistics.median(r.seconds for r in rs):.2f} "
              f"total_wall_s={wall:.0f}")


if __name__ == "__main__":
    main()
