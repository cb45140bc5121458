"""ShapesEval: the samplers on the shapes world's benchmark prompts, judged by the ground-truth checker (which no
sampler optimises).

Prompts come from ``poegen.experts.shapes.shapeseval``: tier A is GenEval's six categories in the shapes world
(one object, two objects, counting, colours, position, colour attribution), tier B what composition is for (three
and four objects, same-shape binding, size binding, chained relations, absences, mixed counts); each prompt is
drawn with a simulated scene that satisfies it, so every prompt is physically possible. Each category has
--per-category prompts, each run with --samples seeds (n = their product per category and sampler).

Samplers run at equal NFE (``compare.equal_nfe_options``): poe uses --particles particles and --mcmc-steps moves
per level; best-of-n and smc get particles * (1 + mcmc_steps) chains (smc is poe without its MCMC moves at equal
NFE); ancestral runs one chain. Per sample: strict ``exact`` (every asked object, relation and absence, nothing
else), ``lenient`` (the same with other objects allowed) and ``atoms`` (the share of asked facts that hold). Per
category and sampler the means, and the paired bootstrap 95% interval of the difference in strict exact against
best-of-n (pairs: the same prompt and seed); ``pool`` is the share of a run's final particles that are exact
before the one returned is chosen (how much of what a sampler ends with is right), and each tier's misses split
into runs with no exact final particle (search failed) and runs whose exact particle the potentials did not pick
(the reward was fooled at selection). --ablations adds poe without placement(), without the count potentials,
without regional composition (every phrase everywhere), without MCMC moves (twice the particles at the same NFE,
with poe's resampling schedule, unlike smc's preset), and plain search: best-of-n over the experts without
placement() (with poe's paired difference to it); --budgets draws strict exact over NFE (poe's particle counts,
the others at equal NFE) to --plot.
Tune on --seed0 1000 and --prompt-seed 1000; report the defaults (0).

    python scripts/eval_shapes.py --workers 2 --tiers B --ablations
    python scripts/eval_shapes.py --workers 2 --tiers B --budgets 1,4,16,48 --samplers poe,best-of-n --plot nfe.png
    python scripts/eval_shapes.py --report runs/main runs/noplace    # the tables of runs saved with --out, merged
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from poegen import compare, samplers
from poegen.experts.shapes import shapeseval
from poegen.job import Job
from poegen.report import paired_bootstrap

# name: (sampler, the shapes product's options, MCMC moves kept); best-of-n-noplace is plain search: the same
# experts and reward without the scene prior's placement (what composition adds), at poe's NFE; without moves poe
# runs particles * (1 + mcmc_steps) particles, so every variant spends the same NFE
ABLATIONS = {"poe-noplace": ("poe", {"place": False}, True), "poe-nocount": ("poe", {"counts": False}, True),
             "poe-noregion": ("poe", {"region": 0}, True), "poe-nomove": ("poe", {}, False),
             "best-of-n-noplace": ("best-of-n", {"place": False}, True)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiers", default="AB", help="A, B or AB")
    ap.add_argument("--categories", default=None, help="only these categories (comma-separated)")
    ap.add_argument("--per-category", type=int, default=8, help="prompts per category")
    ap.add_argument("--samples", type=int, default=8, help="seeds per prompt")
    ap.add_argument("--seed0", type=int, default=0, help="first sampling seed (tune on 1000+)")
    ap.add_argument("--prompt-seed", type=int, default=0, help="seed of the prompt set (tune on 1000+)")
    ap.add_argument("--samplers", default="poe,best-of-n,smc,ancestral")
    ap.add_argument("--ablations", nargs="?", const=",".join(ABLATIONS), default=None, metavar="NAME,...",
                    help=f"also these variants (default all: {', '.join(ABLATIONS)})")
    ap.add_argument("--particles", type=int, default=Job.particles, help="default: poegen generate's")
    ap.add_argument("--budgets", default=None, metavar="N,N,...", help="poe's particle counts for the NFE curves")
    ap.add_argument("--plot", default=None, help="PNG of strict exact over NFE (with --budgets)")
    ap.add_argument("--mcmc-steps", type=int, default=samplers.PRESETS["poe"]["mcmc_steps"])
    ap.add_argument("--steps", type=int, default=Job.steps)
    ap.add_argument("--guidance", type=float, default=None, help="phrase weight (default: the shapes world's)")
    ap.add_argument("--vlm-weight", type=float, default=None, help="default: the shapes world's")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a SamplerConfig field for every sampler (e.g. ess_threshold=0.8); repeatable")
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the runs")
    ap.add_argument("--out", default=None, help="write every row (JSON) and the images (.pt) here")
    ap.add_argument("--time", action="store_true", help="also time `poegen generate` on a tier B prompt (3 runs)")
    ap.add_argument("--report", nargs="+", default=None, metavar="DIR",
                    help="run nothing: print the tables from these --out folders' rows, merged (e.g. samplers or "
                         "ablations run separately on the same prompts and seeds)")
    args = ap.parse_args()
    if args.report:
        return report_saved(args.report, args.particles)

    unknown = [a for a in (args.ablations or "").split(",") if a and a not in ABLATIONS]
    if unknown:
        ap.error(f"--ablations: unknown {unknown[0]!r}; known: {', '.join(ABLATIONS)}")
    items = shapeseval.items(args.tiers, args.per_category, args.prompt_seed,
                             args.categories.split(",") if args.categories else None)
    where = {it.prompt: (it.tier, it.category) for it in items}
    prompts = [it.prompt for it in items]
    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else None
    t0 = time.perf_counter()
    rows, images = compare.run(prompts, args.samplers.split(","), args.samples, args.particles, args.mcmc_steps,
                               args.steps, args.guidance, args.vlm_weight, workers=args.workers, seed0=args.seed0,
                               options=options or None, budgets=budgets)
    if args.ablations:
        for name in args.ablations.split(","):
            sampler, shapes, moves = ABLATIONS[name]
            particles, mcmc = ((args.particles, args.mcmc_steps) if moves else
                               (args.particles * (1 + args.mcmc_steps), 0))
            more, imgs = compare.run(prompts, [sampler], args.samples, particles, mcmc, args.steps,
                                     args.guidance, args.vlm_weight, workers=args.workers, seed0=args.seed0,
                                     options=options or None, shapes_options=shapes or None)
            for r in more:  # the table's budget: poe's particles at this NFE
                r.sampler, r.particles = name, args.particles
            rows += more
            images.update({(name, p, b): v for (_, p, b), v in imgs.items()})
    wall = time.perf_counter() - t0
    report(rows, where, args.particles if budgets is None else max(budgets))
    if budgets and args.plot:
        plot(rows, where, args.plot)
    for sampler in dict.fromkeys(r.sampler for r in rows):
        print(f"{sampler}_median_s_per_sample={statistics.median(r.seconds for r in rows if r.sampler == sampler):.2f}")
    print(f"total_wall_s={wall:.0f}")
    if args.out:
        import torch

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "rows.json").write_text(json.dumps([{**asdict(r), "tier": where[r.prompt][0],
                                                    "category": where[r.prompt][1]} for r in rows]))
        torch.save({f"{s}|{p}|{b}": v for (s, p, b), v in images.items()}, out / "images.pt")
    if args.time:
        prompt = next((it.prompt for it in items if it.tier == "B"), "two red balls and a blue box")
        walls = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "poegen", "generate", prompt, "-q", "--out", "/tmp/poegen_eval.png"],
                           check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t)
        print(f"generate_prompt={prompt!r} generate_walls_s={','.join(f'{w:.1f}' for w in walls)} "
              f"generate_median_s={statistics.median(walls):.1f}")


def report(rows, where, budget):
    """The tables: per tier and category, each sampler's strict / lenient / atoms, and its strict exact minus
    best-of-n's with the paired bootstrap 95% interval; then each tier's totals."""
    rows = [r for r in rows if r.particles == budget]
    groups = defaultdict(list)
    for r in rows:
        tier, cat = where[r.prompt]
        groups[tier, cat, r.sampler].append(r)
        groups[tier, "all", r.sampler].append(r)
    print(f"{'tier':4s} {'category':10s} {'sampler':12s} {'strict':>7s} {'lenient':>7s} {'atoms':>7s} {'pool':>7s} "
          f"{'n':>4s}   strict - best-of-n [95% CI]")
    for (tier, cat, sampler), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] == "all")):
        rs.sort(key=lambda r: (r.prompt, r.seed))
        n = len(rs)
        strict, lenient = sum(r.exact for r in rs) / n, sum(r.lenient for r in rs) / n
        atoms = statistics.mean(r.atoms for r in rs)
        pool = statistics.mean(_pool(r) for r in rs)
        diff = paired(rs, groups.get((tier, cat, "best-of-n"))) if sampler != "best-of-n" else None
        diff = f"   {diff}" if diff else ""
        print(f"{tier:4s} {cat:10s} {sampler:12s} {strict:7.3f} {lenient:7.3f} {atoms:7.3f} {pool:7.3f} {n:4d}{diff}",
              flush=True)
        if cat == "all":
            pool_diff = paired(rs, groups.get((tier, cat, "best-of-n")), _pool) if sampler != "best-of-n" else None
            print(f"{tier}_{sampler}_strict={strict:.3f} {tier}_{sampler}_lenient={lenient:.3f} "
                  f"{tier}_{sampler}_atoms={atoms:.3f} {tier}_{sampler}_pool={pool:.3f} (n={n})"
                  + (f" diff_vs_best_of_n={diff.strip()}" if diff else "")
                  + (f" pool_diff_vs_best_of_n={pool_diff}" if pool_diff else ""))
            none, wrong = misses(rs)
            print(f"{tier}_{sampler}_misses: no_exact_particle={none:.3f} exact_particle_not_picked={wrong:.3f}")
    search = "best-of-n-noplace"  # composition against plain search: poe minus best-of-n without placement()
    for (tier, cat, sampler), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] == "all")):
        diff = paired(rs, groups.get((tier, cat, search))) if sampler == "poe" else None
        if diff:
            print(f"{tier}_{cat}_poe_minus_{search}={diff} (n={len(rs)})")


def report_saved(folders, budget):
    """``report`` over the rows that earlier runs wrote with --out (a sampler run twice is refused)."""
    rows, where, seen = [], {}, set()
    for folder in folders:
        path = Path(folder) / "rows.json"
        if not path.is_file():
            sys.exit(f"--report: no {path}; write one with eval_shapes.py --out {folder}")
        for d in json.loads(path.read_text()):
            where[d["prompt"]] = (d.pop("tier"), d.pop("category"))
            key = (d["sampler"], d["prompt"], d["seed"], d["particles"])
            if key in seen:
                sys.exit(f"--report: {d['sampler']} on {d['prompt']!r} seed {d['seed']} is in two of the folders")
            seen.add(key)
            rows.append(compare.Row(**d))
    report(rows, where, budget)


def misses(rows):
    """Why strict exact fails, as shares of the runs: no final particle is exact (the search never found one), or
    one is but the potentials picked another (the reward was fooled at selection)."""
    none = sum(_pool(r) == 0 for r in rows) / len(rows)
    return none, sum(not r.exact and _pool(r) > 0 for r in rows) / len(rows)


def _pool(row) -> float:
    """The share of a run's final particles that are exact (``compare``'s ``pool_exact``)."""
    return row.metrics["pool_exact"]


def paired(rows, base, value=lambda r: r.exact):
    """'d [lo, hi]': the mean of ``value`` (default strict exact) over rows minus over base with its paired
    bootstrap 95% interval, or None unless both cover the same (prompt, seed) pairs."""
    key = lambda r: (r.prompt, r.seed)  # noqa: E731
    rows, base = sorted(rows, key=key), sorted(base or [], key=key)
    if not base or [key(r) for r in rows] != [key(r) for r in base]:
        return None
    d, lo, hi = paired_bootstrap([value(r) for r in rows], [value(r) for r in base])
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def plot(rows, where, path):
    """Strict exact over mean NFE per image, one line per tier and sampler (log x)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    for tier in sorted({t for t, _ in where.values()}):
        for sampler in dict.fromkeys(r.sampler for r in rows):
            points = []
            for b in sorted({r.particles for r in rows}):
                rs = [r for r in rows if r.sampler == sampler and r.particles == b and where[r.prompt][0] == tier]
                if rs:
                    points.append((statistics.mean(r.nfe for r in rs), sum(r.exact for r in rs) / len(rs)))
                    print(f"curve tier={tier} sampler={sampler} particles={b} nfe={points[-1][0]:.0f} "
                          f"strict={points[-1][1]:.3f} (n={len(rs)})")
            ax.plot(*zip(*points), marker="o", label=f"tier {tier}: {sampler}")
    ax.set_xscale("log"), ax.set_xlabel("NFE per image"), ax.set_ylabel("strict exact (checker)"), ax.legend()
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # log minor labels collide at 3x and 4x
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot={path}")


if __name__ == "__main__":
    main()
