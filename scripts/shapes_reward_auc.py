"""How early does the steering reward tell a good chain from a bad one? A diagnosis of ShapesEval's samplers.

Runs independent chains (best-of-n's proposal, no resampling) on ShapesEval prompts and records, at every noise
level, each chain's reward on its denoised estimate x0_hat at full strength. At the end the checker says which chains
came out exactly right. Per level it prints the mean AUC of the reward for separating right from wrong chains (0.5:
no information) and how often the chain ranked first at that level came out right (runs with at least one right
chain). Resampling on the reward at a level helps only where the AUC is well above 0.5; ``--lookahead M`` also scores
an M-step deterministic (Euler) rollout from the level's state instead of x0_hat, at the levels of ``--levels``.

    python scripts/shapes_reward_auc.py --categories objects,chain,counts --per-category 3 --samples 2
"""
import argparse

import torch

from poegen import compare, samplers, schedules
from poegen.experts.shapes import shapeseval
from poegen.job import Job
from poegen.samplers import kernels


def auc(f: torch.Tensor, ok: torch.Tensor):
    """P(reward of a right chain > reward of a wrong one), ties half; None without both kinds."""
    pos, neg = f[ok], f[~ok]
    if len(pos) == 0 or len(neg) == 0:
        return None
    return float((pos[:, None] > neg[None, :]).double().mean() + 0.5 * (pos[:, None] == neg[None, :]).double().mean())


@torch.no_grad()
def rollout(product, x, sigma, B, steps: int):
    """x0 after ``steps`` Euler steps from (x, sigma) down to sigma 0.002 (Karras grid)."""
    sig = schedules.karras(steps, 0.002, float(sigma))
    for k in range(steps):
        s, t = torch.tensor(float(sig[k])), torch.tensor(float(sig[k + 1]))
        x = kernels.euler_step(x, product.evaluate(x, s, B).x0, s, t)
    return product.evaluate(x, torch.tensor(float(sig[-1])), B).x0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiers", default="AB")
    ap.add_argument("--categories", default="objects,chain,counts")
    ap.add_argument("--per-category", type=int, default=3)
    ap.add_argument("--samples", type=int, default=2, help="seeds per prompt")
    ap.add_argument("--chains", type=int, default=2 * Job.particles, help="independent chains per run")
    ap.add_argument("--steps", type=int, default=Job.steps)
    ap.add_argument("--seed0", type=int, default=1000)
    ap.add_argument("--prompt-seed", type=int, default=1000)
    ap.add_argument("--lookahead", type=int, default=0, metavar="M", help="also score M-step rollouts")
    ap.add_argument("--levels", default="2,4,6,8,10", help="levels scored with --lookahead")
    args = ap.parse_args()

    items = shapeseval.items(args.tiers, args.per_category, args.prompt_seed, args.categories.split(","))
    compare._init_worker(torch.get_num_threads(), None, (), None)
    look_levels = [int(v) for v in args.levels.split(",")] if args.lookahead else []
    seen = {}  # (what, level) -> [(rewards, right)]
    for it in items:
        product, _, verdict = compare._target(it.prompt, None, None)
        for seed in range(args.seed0, args.seed0 + args.samples):
            states, evaluate = [], product.evaluate

            def recording(x, s, B, density=False):
                out = evaluate(x, s, B, density)
                states.append((x.detach().clone(), out.x0.detach().clone(), s, B))
                return out
            product.evaluate = recording
            try:
                r = samplers.sample(product, "best-of-n", num_particles=args.chains, num_steps=args.steps,
                                    generator=torch.Generator().manual_seed(seed), select="all")
            finally:
                product.evaluate = evaluate
            ok = torch.tensor([bool(verdict(v)["exact"]) for v in r.x.float()])
            with torch.no_grad():
                for level, (x, x0, s, B) in enumerate(states):
                    seen.setdefault(("x0_hat", level), []).append((product.log_potentials(x0, 1.0)[0], ok))
                    if level in look_levels:
                        f = product.log_potentials(rollout(product, x, s, B, args.lookahead), 1.0)[0]
                        seen.setdefault((f"lookahead{args.lookahead}", level), []).append((f, ok))
            print(f"{it.category} seed={seed} right={int(ok.sum())}/{len(ok)} | {it.prompt}", flush=True)
    for (what, level), runs in sorted(seen.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        aucs = [a for a in (auc(f, ok) for f, ok in runs) if a is not None]
        top = [float(ok[f.argmax()]) for f, ok in runs if ok.any()]
        if aucs:
            sigma = float(schedules.karras(args.steps, *product.sigma_range(None, None))[level])
            print(f"level={level:2d} sigma={sigma:7.3f} "
                  f"{what:11s} auc={sum(aucs) / len(aucs):.3f} top1_right={sum(top) / len(top):.3f} "
                  f"(runs={len(aucs)})")


if __name__ == "__main__":
    main()
