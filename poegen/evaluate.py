"""``poegen eval shapes|physics|edit|video|user``: the shapes world's benchmarks, each a set of targets run through
``compare.run`` (every sampler at equal NFE) and judged by the ground-truth checker, which no sampler optimises.

- ``shapes``: ShapesEval, the benchmark prompts of ``experts.shapes.shapeseval`` (tier A: GenEval's six categories
  in the shapes world; tier B: what composition is for), strict / lenient exact and atoms per category, paired
  bootstrap intervals against best-of-n, ablations of poe, curves over NFE.
- ``physics``: the example scenes; is every object where the simulation put it?
- ``edit``: eight rendered scenes with one object dropped in by pybullet; background kept, new object placed?
- ``video``: motion prompts as clips; the per-frame IoU against the simulation's render and exact frames.
- ``user``: the user suite (``experts.shapes.usersuite``), inputs written by hand on every route (prompts,
  relations, layout and scene specs, clips, edits); strict exact per route, and each miss with the checker's reason.

Every suite takes the same run options (``--seeds``, ``--seed0``, ``--samplers``, ``--particles``, ``--mcmc-steps``,
``--steps``, ``--workers``, ``--out``, ``--report``): ``--out DIR`` keeps every row (rows.json) and image
(images.pt), ``--report DIR ...`` prints the tables again from such folders, merged, without running anything.

Nothing here imports torch at module level: the parser is built for every ``poegen`` command."""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# name: (sampler, the shapes product's options, MCMC moves kept); best-of-n-noplace is plain search: the same
# experts and reward without the scene prior's placement (what composition adds), at poe's NFE; without moves poe
# runs particles * (1 + mcmc_steps) particles, so every variant spends the same NFE
ABLATIONS = {"poe-noplace": ("poe", {"place": False}, True), "poe-nocount": ("poe", {"counts": False}, True),
             "poe-noregion": ("poe", {"region": 0}, True), "poe-nomove": ("poe", {}, False),
             "best-of-n-noplace": ("best-of-n", {"place": False}, True)}

# edit cases: (name, objects already in the image (shape, colour, size, x, y), the new one (shape, colour, size, x, y))
EDIT_CASES = [
    ("ball_onto_box", [("box", "blue", "large", 0.0, 1.0)], ("ball", "red", "small", 0.05, 3.5)),
    ("box_onto_box", [("box", "green", "large", -1.0, 1.0)], ("box", "yellow", "small", -1.0, 3.6)),
    ("ball_beside_wedge", [("wedge", "magenta", "large", -0.8, 0.8)], ("ball", "cyan", "small", 1.6, 2.0)),
    ("ball_between_boxes", [("box", "red", "small", -1.8, 0.6), ("box", "blue", "small", 1.8, 0.6)],
     ("ball", "yellow", "small", 0.0, 2.0)),
    ("wedge_onto_box", [("box", "cyan", "large", 0.8, 1.0)], ("wedge", "red", "small", 0.8, 3.6)),
    ("ball_onto_stack", [("box", "blue", "large", -1.0, 1.0), ("box", "green", "small", -1.0, 2.6)],
     ("ball", "red", "small", -1.0, 4.5)),
    ("box_beside_ball", [("ball", "yellow", "large", 1.5, 1.0)], ("box", "magenta", "small", -1.0, 2.0)),
    ("box_between_balls", [("ball", "red", "small", -1.5, 0.6), ("ball", "green", "small", 1.5, 0.6)],
     ("box", "blue", "small", 0.0, 2.0)),
]

SHAPES_HELP = """ShapesEval: the samplers on the shapes world's benchmark prompts, judged by the checker.

Tier A is GenEval's six categories in the shapes world (one object, two objects, counting, colours, position,
colour attribution), tier B what composition is for (three and four objects, same-shape binding, size binding,
chained relations, absences, mixed counts); each prompt is drawn with a simulated scene that satisfies it, so
every prompt is physically possible. Each category has --per-category prompts, each run with --seeds seeds
(n = their product per category and sampler).

Samplers run at equal NFE: poe uses --particles particles and --mcmc-steps moves per level; best-of-n and smc get
particles * (1 + mcmc_steps) chains; ancestral runs one chain. Per sample: strict exact (every asked object,
relation and absence, nothing else), lenient (other objects allowed) and atoms (the share of asked facts that
hold). Per category and sampler the means and the paired bootstrap 95% interval of the difference in strict exact
against best-of-n (pairs: the same prompt and seed); pool is the share of a run's final particles that are exact,
and each tier's misses split into runs with no exact final particle (search failed) and runs whose exact particle
the potentials did not pick. --ablations adds poe without placement(), without the count potentials, without
regional composition, without MCMC moves (more particles at the same NFE), and plain search: best-of-n without
placement(); --budgets draws strict exact over NFE to --plot. Tune on --seed0 1000 and --prompt-seed 1000;
report the defaults (0).

  poegen eval shapes --workers 2 --tiers B --ablations
  poegen eval shapes --workers 2 --tiers B --budgets 1,4,16,48 --samplers poe,best-of-n --plot nfe.png
  poegen eval shapes --tiers B --out runs/main        # keep the rows and images
  poegen eval shapes --report runs/main runs/noplace  # the tables of saved runs, merged"""

PHYSICS_HELP = """Samplers on the example scenes: does every object sit where the simulation put it?

For each scene spec under --scenes, --seeds runs per sampler at equal NFE. A sample is placed when, for every
visible simulated object, the checker finds an object of the same colour and shape whose centroid lies within
2 px (at 32x32) of the simulated one; it is exact when, besides, nothing else is in the image. Prints the shares
per scene and sampler, then overall.

  poegen eval physics --workers 2"""

EDIT_HELP = """Editing: objects dropped by pybullet into rendered scenes, judged by the checker.

Eight cases, each a rendered scene (the objects already in the image, at rest) and one new object that pybullet
drops onto or beside them. Every sampler edits each case with --seeds seeds at equal NFE. Prints, per sampler,
edit_bg_mse= (mean squared difference to the given image outside the edit mask, [-1, 1] scale; its median in
brackets) and edit_placed= (the share of samples whose new object is within 2 px of its simulated place and
whose old objects are all read at their places). --variants compares the KnownPixels potential alone with the
replacement of the kept pixels.

  poegen eval edit --workers 2"""

USER_HELP = """The user suite: inputs written by hand as a new user would try them, on every route, judged by the checker.

Routes: prompt (objects, counts, sizes, colours, absences), relation ("left of", "on", "above", "below", chains),
layout (layout specs, boxes anywhere: floating, at the frame's edges, overlapping, in a row), scene (scene specs,
the examples' and others), clip (motion prompts as clips of --frames frames), edit (an object dropped into a
rendered image, or painted into a mask). The inputs are poegen/experts/shapes/usersuite.py; none comes from
ShapesEval's generator, and none may be used to tune anything. Every input runs with --seeds seeds per sampler at
the default budget (the samplers at equal NFE). A sample is strict exact when the checker finds what was asked
(a prompt's objects, relations and absences; a layout's objects in their boxes; a scene's objects within 2 px of
their simulated places; every frame of a clip exact; an edit's new object placed and the old ones kept) and nothing
else. Prints strict exact per route and overall per sampler with n, then every miss: its input id, seed and the
checker's reason (an extra object, one missing, a malformed one, a relation that does not hold). --out also writes
each miss as a PNG under DIR/misses.

  poegen eval user --seeds 2 --workers 2
  poegen eval user --routes layout,edit --seeds 1 --out runs/user"""

VIDEO_HELP = """Motion: clips of motion prompts of every kind (a ball rolling off a box, a drop, a push along the
floor, a hit, two objects colliding, a tower toppling; experts/shapes/motions.py), --per-kind of each drawn with
--prompt-seed (0: held out; tune on 1000+), the samplers at equal NFE, each clip started from its simulation's
render at the default noise level and judged frame by frame against the simulation.

Per prompt and sampler: the mean foreground IoU per frame and the share of exact frames (the checker finds exactly
the objects in view at that frame and nothing else). Per kind and sampler: clip exact (every frame exact), exact
frames, IoU, and the paired bootstrap 95% interval of clip exact against best-of-n (the same prompt and seed);
per sampler the share of frames with IoU >= 0.85, the lowest frame's, the share of clips whose every object stays
on its simulated track (found within 3 px of its simulated centroid in every frame), and the share of clips their
potentials certify with the precision of those (exact among them). --out also writes an HTML report with the
clips as GIFs.

  poegen eval video --workers 2
  poegen eval video --per-kind 1 --seeds 1 --samplers poe --frames 8"""


BUDGET_HELP = ("every sampler's budget, as generate's: anytime, rounds until an image is certified, each round at "
               "the NFE of poe's; fixed: one run, every sampler at equal NFE; auto: anytime, clips fixed "
               "(default %(default)s)")


def _run_options(p: argparse.ArgumentParser, *, seeds: int, samplers: str, particles: int, mcmc_steps: int,
                 steps: int, particles_help: Optional[str] = None) -> None:
    """The options every suite shares, with the suite's defaults."""
    from . import defaults

    p.add_argument("--seeds", "--samples", dest="seeds", type=int, default=seeds,
                   help=f"seeds per target (default {seeds})")
    p.add_argument("--seed0", type=int, default=0, help="first sampling seed (tune on 1000+)")
    p.add_argument("--samplers", default=samplers, help=f"comma-separated (default {samplers})")
    p.add_argument("--budget", default=defaults.BUDGET, choices=defaults.BUDGETS, help=BUDGET_HELP)
    p.add_argument("--particles", type=int, default=particles, help=particles_help or f"poe's particles (default "
                                                                                     f"{particles})")
    p.add_argument("--mcmc-steps", type=int, default=mcmc_steps,
                   help=f"poe's moves per level; the others get equal NFE (default {mcmc_steps})")
    p.add_argument("--steps", type=int, default=steps, help=f"noise levels (default {steps})")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the runs (results do not change)")
    p.add_argument("--out", default=None, metavar="DIR", help="keep every row (rows.json) and image (images.pt) here")
    p.add_argument("--report", nargs="+", default=None, metavar="DIR",
                   help="run nothing: print the tables from these --out folders' rows, merged (e.g. samplers run "
                        "separately on the same targets and seeds)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _weights(p: argparse.ArgumentParser, potential: bool = True) -> None:
    from . import defaults

    p.add_argument("--guidance", type=float, default=None,
                   help=f"phrase weight (default {defaults.SHAPES_GUIDANCE:g}, the shapes world's)")
    if potential:
        p.add_argument("--potential-weight", dest="potential_weight", type=float, default=None,
                       help=f"lambda of each potential (default {defaults.SHAPES_POTENTIAL_WEIGHT:g}, the shapes "
                            "world's)")
        p.add_argument("--vlm-weight", dest="potential_weight", type=float, default=None, help=argparse.SUPPRESS)


def add_parsers(parser: argparse.ArgumentParser) -> None:
    """The suites as subcommands of ``parser`` (``poegen eval``); each sets ``suite``."""
    from . import defaults, samplers

    poe_moves = samplers.PRESETS["poe"]["mcmc_steps"]
    sub = parser.add_subparsers(dest="suite", required=True, metavar="{shapes,physics,edit,video,user}")
    raw = argparse.RawDescriptionHelpFormatter

    s = sub.add_parser("shapes", help="ShapesEval: benchmark prompts, strict exact per category",
                       description=SHAPES_HELP, formatter_class=raw)
    _run_options(s, seeds=8, samplers="poe,best-of-n,smc,ancestral", particles=defaults.PARTICLES,
                 mcmc_steps=poe_moves, steps=defaults.STEPS)
    s.add_argument("--tiers", default="AB", help="A, B or AB")
    s.add_argument("--categories", default=None, help="only these categories (comma-separated)")
    s.add_argument("--per-category", type=int, default=8, help="prompts per category")
    s.add_argument("--prompt-seed", type=int, default=0, help="seed of the prompt set (tune on 1000+)")
    s.add_argument("--ablations", nargs="?", const=",".join(ABLATIONS), default=None, metavar="NAME,...",
                   help=f"also these variants (default all: {', '.join(ABLATIONS)})")
    s.add_argument("--budgets", default=None, metavar="N,N,...", help="poe's particle counts for the NFE curves")
    s.add_argument("--plot", default=None, help="PNG of strict exact over NFE (with --budgets)")
    _weights(s)
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a SamplerConfig field for every sampler (e.g. ess_threshold=0.8); repeatable")
    s.add_argument("--time", action="store_true", help="also time `poegen generate` on a tier B prompt (3 runs)")

    p = sub.add_parser("physics", help="the example scenes: every object where the simulation put it?",
                       description=PHYSICS_HELP, formatter_class=raw)
    _run_options(p, seeds=32, samplers="poe,best-of-n,ancestral", particles=defaults.PARTICLES,
                 mcmc_steps=poe_moves, steps=defaults.STEPS)
    p.add_argument("--scenes", default="examples", help="a folder of scene specs, or comma-separated files")
    _weights(p, potential=False)
    p.add_argument("--grad-guidance", type=float, default=defaults.GRAD_GUIDANCE,
                   help="gradient guidance of the stochastic proposals (default %(default)s)")

    e = sub.add_parser("edit", help="objects dropped into rendered scenes: background kept, object placed?",
                       description=EDIT_HELP, formatter_class=raw)
    _run_options(e, seeds=8, samplers="poe,best-of-n,ancestral", particles=16, mcmc_steps=2, steps=30)
    e.add_argument("--variants", default="replace", help="potential (KnownPixels weights only), replace (the kept "
                                                         "pixels replaced at every level), or both "
                                                         "(potential,replace)")
    e.add_argument("--cases", default=None, help="a folder to write the case files to (default: a temporary one)")
    e.add_argument("--figure", default=None, help="write a before/after grid (the first seed of the first sampler)")

    v = sub.add_parser("video", help="motion prompts as clips: IoU per frame against the simulation",
                       description=VIDEO_HELP, formatter_class=raw)
    _run_options(v, seeds=2, samplers="poe,best-of-n,smc", particles=defaults.PARTICLES, mcmc_steps=1,
                 steps=defaults.STEPS)
    v.add_argument("--prompts", default=None, help="comma-separated motion prompts (default: --per-kind of every "
                                                   "kind, drawn with --prompt-seed)")
    v.add_argument("--per-kind", type=int, default=2, help="prompts of each kind of motion (default 2)")
    v.add_argument("--prompt-seed", type=int, default=0, help="draws the prompts (0: held out; tune on 1000+)")
    v.add_argument("--frames", type=int, default=defaults.SHAPES_CLIP_FRAMES)
    v.add_argument("--region", type=float, default=None,
                   help="regional composition's window std in pixels (default 0: off; the images' is 5)")
    v.add_argument("--video-prior", choices=("auto", "on", "off"), default="auto",
                   help="the base: the shapes video prior (on), the image prior frame by frame (off), or auto: the "
                        "video prior for clips from noise, frames for clips started from their simulation")

    u = sub.add_parser("user", help="the user suite: hand-written inputs on every route, strict exact per route",
                       description=USER_HELP, formatter_class=raw)
    _run_options(u, seeds=2, samplers="poe", particles=defaults.PARTICLES, mcmc_steps=poe_moves, steps=defaults.STEPS)
    u.add_argument("--routes", default=None, metavar="ROUTE,...",
                   help="only these routes (default all: prompt, relation, layout, scene, clip, edit)")
    u.add_argument("--ids", default=None, metavar="ID,...",
                   help="only these inputs (e.g. layout/readme_two_objects; a route name takes all of its inputs)")
    u.add_argument("--frames", type=int, default=5, help="frames of each clip (default %(default)s)")


def run(args) -> int:
    """Run (or, with --report, re-print) the suite ``args.suite``; the tables go to stdout."""
    for flag, value, low in (("--seeds", args.seeds, 1), ("--particles", args.particles, 1),
                             ("--steps", args.steps, 1), ("--mcmc-steps", args.mcmc_steps, 0),
                             ("--workers", args.workers, 1)):
        if value < low:
            raise ValueError(f"{flag} {value}: must be >= {low}")
    if args.report:
        rows, extras = load_rows(args.report)
        TABLES[args.suite](rows, extras, args)
        return 0
    if args.out and Path(args.out).is_file():
        raise ValueError(f"--out {args.out} is a file; name a folder for rows.json and images.pt")
    rows, extras, images = RUNS[args.suite](args)
    if args.out:
        save_rows(Path(args.out), rows, extras, images)
        print(f"wrote {Path(args.out) / 'rows.json'} and images.pt")
    return 0


def _compare(args, targets: Sequence[str], **kw):
    """``compare.run`` with the suite's shared options."""
    from . import compare

    return compare.run(list(targets), args.samplers.split(","), args.seeds, args.particles, args.mcmc_steps,
                       args.steps, kw.pop("guidance", None), kw.pop("potential_weight", None),
                       progress=not args.quiet, workers=args.workers, seed0=args.seed0,
                       budget=args.budget, **kw)


# ---- saved runs ---------------------------------------------------------------------------------------------------

def save_rows(out: Path, rows: List, extras: List[dict], images: dict) -> None:
    """rows.json (each row with its suite's extra fields, e.g. tier and category) and images.pt in ``out``."""
    import torch
    from dataclasses import asdict

    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps([{**asdict(r), **x} for r, x in zip(rows, extras)]))
    torch.save({f"{s}|{p}|{b}": v for (s, p, b), v in images.items()}, out / "images.pt")


def load_rows(folders: Sequence[str]) -> Tuple[List, List[dict]]:
    """The rows (``compare.Row``) and their extra fields saved by --out in ``folders``; a run saved twice is refused."""
    from dataclasses import fields

    from .compare import Row

    names = {f.name for f in fields(Row)}
    rows, extras, seen = [], [], set()
    for folder in folders:
        path = Path(folder) / "rows.json"
        if not path.is_file():
            raise FileNotFoundError(f"--report: no {path}; write one with --out {folder}")
        for d in json.loads(path.read_text()):
            extra = {k: d.pop(k) for k in list(d) if k not in names}
            key = (d["sampler"], d["prompt"], d["seed"], d["particles"], *sorted(extra.items()))
            if key in seen:
                raise ValueError(f"--report: {d['sampler']} on {d['prompt']!r} seed {d['seed']} is in two of the "
                                 "folders; name each run once")
            seen.add(key)
            rows.append(Row(**d))
            extras.append(extra)
    return rows, extras


# ---- shapes: ShapesEval -------------------------------------------------------------------------------------------

def run_shapes(args):
    import time

    from . import compare
    from .experts.shapes import shapeseval

    unknown = [a for a in (args.ablations or "").split(",") if a and a not in ABLATIONS]
    if unknown:
        raise ValueError(f"--ablations: unknown {unknown[0]!r}; known: {', '.join(ABLATIONS)}")
    if not args.tiers or set(args.tiers) - set(shapeseval.TIERS):
        raise ValueError(f"--tiers {args.tiers!r}: name A, B or AB")
    known = [name for tier in args.tiers for name in shapeseval.TIERS[tier]]
    categories = args.categories.split(",") if args.categories else None
    wrong = [c for c in categories or () if c not in known]
    if wrong:  # a misspelt category would silently run nothing
        raise ValueError(f"--categories: {wrong[0]!r} is not a category of tier(s) {args.tiers}; known: "
                         f"{', '.join(known)}")
    items = shapeseval.items(args.tiers, args.per_category, args.prompt_seed, categories)
    where = {it.prompt: (it.tier, it.category) for it in items}
    prompts = [it.prompt for it in items]
    options = _options(args.option)
    budgets = compare.parse_budgets(args.budgets)
    weights = dict(guidance=args.guidance, potential_weight=args.potential_weight)
    t0 = time.perf_counter()
    rows, images = _compare(args, prompts, options=options or None, budgets=budgets, **weights)
    if args.ablations:
        for name in args.ablations.split(","):
            sampler, shapes, moves = ABLATIONS[name]
            particles, mcmc = ((args.particles, args.mcmc_steps) if moves else
                               (args.particles * (1 + args.mcmc_steps), 0))
            variant = argparse.Namespace(**{**vars(args), "samplers": sampler, "particles": particles,
                                            "mcmc_steps": mcmc})
            more, imgs = _compare(variant, prompts, options=options or None, shapes_options=shapes or None, **weights)
            for r in more:  # the table's budget: poe's particles at this NFE
                r.sampler, r.particles = name, args.particles
            rows += more
            images.update({(name, p, b): v for (_, p, b), v in imgs.items()})
    wall = time.perf_counter() - t0
    extras = [{"tier": where[r.prompt][0], "category": where[r.prompt][1]} for r in rows]
    shapes_report(rows, where, args.particles if budgets is None else max(budgets))
    if budgets and args.plot:
        shapes_plot(rows, where, args.plot)
    for sampler in dict.fromkeys(r.sampler for r in rows):
        print(f"{sampler}_median_s_per_sample={statistics.median(r.seconds for r in rows if r.sampler == sampler):.2f}")
    print(f"total_wall_s={wall:.0f}")
    if args.time:
        _time_generate(next((it.prompt for it in items if it.tier == "B"), "two red balls and a blue box"))
    return rows, extras, images


def _options(given: Sequence[str]) -> dict:
    """--option KEY=VALUE pairs (values as JSON: numbers, true/false, strings in quotes)."""
    options = {}
    for o in given:
        key, sep, value = o.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {o!r}: expected KEY=VALUE, e.g. ess_threshold=0.8")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"--option {o!r}: the value is not a number, true/false or a quoted string; "
                             "e.g. ess_threshold=0.8") from None
    return options


def _time_generate(prompt: str) -> None:
    """Time `poegen generate` on ``prompt`` as a whole process, three runs."""
    import subprocess
    import sys
    import tempfile
    import time

    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "poegen", "generate", prompt, "-q", "--out", f"{tmp}/eval.png"],
                           check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t)
    print(f"generate_prompt={prompt!r} generate_walls_s={','.join(f'{w:.1f}' for w in walls)} "
          f"generate_median_s={statistics.median(walls):.1f}")


def table_shapes(rows, extras, args) -> None:
    """The tables of saved rows at the budget --particles (the largest saved one where none was run at it)."""
    budgets = {r.particles for r in rows}
    budget = args.particles if args.particles in budgets or not budgets else max(budgets)
    shapes_report(rows, {r.prompt: (x["tier"], x["category"]) for r, x in zip(rows, extras)}, budget)


def shapes_report(rows, where, budget) -> None:
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
    anytime_report(rows, where)
    search = "best-of-n-noplace"  # composition against plain search: poe minus best-of-n without placement()
    for (tier, cat, sampler), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] == "all")):
        diff = paired(rs, groups.get((tier, cat, search))) if sampler == "poe" else None
        if diff:
            print(f"{tier}_{cat}_poe_minus_{search}={diff} (n={len(rs)})")


def anytime_report(rows, where) -> None:
    """Per tier and sampler: the NFE spent (mean, and its share of one fixed run at the budget), NFE to the first
    certified image (median and 90th percentile over the runs that found one), how often the pick is certified,
    the certificate's precision (certified picks that are exact) and recall (exact picks certified), and the NFE
    to the first certified image (a run that found none counted at what it spent) minus poe's, paired, with its
    bootstrap 95% interval."""
    import numpy as np

    groups = defaultdict(list)
    for r in rows:
        if r.certified is not None:
            groups[where[r.prompt][0], r.sampler].append(r)
    for (tier, sampler), rs in sorted(groups.items()):
        rs.sort(key=lambda r: (r.prompt, r.seed))
        found = [r.first_certified for r in rs if r.first_certified is not None]
        cert = [r for r in rs if r.certified]
        exact = [r for r in rs if r.exact]
        share = statistics.mean(r.nfe for r in rs) / statistics.mean(r.fixed_nfe or r.nfe for r in rs)
        first = (f"first_certified_median={statistics.median(found):.0f} "
                 f"first_certified_p90={float(np.percentile(found, 90)):.0f}" if found else "first_certified=none")
        precision = f"{sum(r.exact for r in cert) / len(cert):.3f}" if cert else "n/a"
        recall = f"{sum(bool(r.certified) for r in exact) / len(exact):.3f}" if exact else "n/a"
        to_first = lambda r: r.first_certified if r.first_certified is not None else r.nfe  # noqa: E731
        diff = paired(rs, groups.get((tier, "poe")), to_first) if sampler != "poe" else None
        print(f"{tier}_{sampler}_anytime: nfe_mean={statistics.mean(r.nfe for r in rs):.0f} "
              f"nfe_vs_fixed={share:.2f} {first} certified={len(cert) / len(rs):.3f} precision={precision} "
              f"recall={recall} strict={len(exact) / len(rs):.3f} (n={len(rs)})"
              + (f" first_certified_minus_poe={diff}" if diff else ""))


def misses(rows) -> Tuple[float, float]:
    """Why strict exact fails, as shares of the runs: no final particle is exact (the search never found one), or
    one is but the potentials picked another (the reward was fooled at selection)."""
    none = sum(_pool(r) == 0 for r in rows) / len(rows)
    return none, sum(not r.exact and _pool(r) > 0 for r in rows) / len(rows)


def _pool(row) -> float:
    """The share of a run's final particles that are exact (``compare``'s ``pool_exact``)."""
    return row.metrics["pool_exact"]


def paired(rows, base, value: Callable = lambda r: r.exact) -> Optional[str]:
    """'d [lo, hi]': the mean of ``value`` (default strict exact) over rows minus over base with its paired
    bootstrap 95% interval, or None unless both cover the same (prompt, seed) pairs."""
    from .report import paired_bootstrap

    key = lambda r: (r.prompt, r.seed)  # noqa: E731
    rows, base = sorted(rows, key=key), sorted(base or [], key=key)
    if not base or [key(r) for r in rows] != [key(r) for r in base]:
        return None
    d, lo, hi = paired_bootstrap([value(r) for r in rows], [value(r) for r in base])
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def shapes_plot(rows, where, path) -> None:
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
    plt.close(fig)
    print(f"plot={path}")


# ---- physics: the example scenes ----------------------------------------------------------------------------------

def run_physics(args):
    from .specs import spec_kind

    folder = Path(args.scenes)
    scenes = (sorted(str(p) for p in folder.glob("*.yaml") if spec_kind(p) == "scene") if folder.is_dir()
              else args.scenes.split(","))
    if not scenes:
        raise ValueError(f"--scenes {args.scenes}: no scene specs there; name a folder of them (e.g. examples) "
                         "or files, comma-separated")
    rows, images = _compare(args, scenes, guidance=args.guidance,
                            options={"grad_guidance": args.grad_guidance} if args.grad_guidance else None)
    extras = [{} for _ in rows]
    table_physics(rows, extras, args)
    return rows, extras, images


def table_physics(rows, extras, args) -> None:
    groups, totals = defaultdict(list), defaultdict(list)
    for r in rows:
        groups[r.prompt, r.sampler].append(r)
        totals[r.sampler].append(r)
    print(f"{'scene':20s} {'sampler':10s} present  placed   exact  s/sample    NFE")
    for (scene, sampler), rs in groups.items():
        n = len(rs)
        print(f"{Path(scene).stem:20s} {sampler:10s} {sum(r.present for r in rs) / n:7.2f} "
              f"{sum(r.relation for r in rs) / n:7.2f} {sum(r.exact for r in rs) / n:7.2f}  "
              f"{statistics.median(r.seconds for r in rs):8.1f} {statistics.mean(r.nfe for r in rs):6.0f}", flush=True)
    for sampler, rs in totals.items():
        n = len(rs)
        print(f"overall_{sampler}_exact={sum(r.exact for r in rs) / n:.3f} "
              f"overall_{sampler}_placed={sum(r.relation for r in rs) / n:.3f} (n={n})")


# ---- edit: objects dropped into rendered scenes -------------------------------------------------------------------

def write_edit_cases(folder: Path) -> List[str]:
    """One edit spec per case (the image of the old objects, and the scene with the new one) in ``folder``."""
    import yaml

    from .experts.shapes import render
    from .experts.shapes.world import Scene
    from .pipeline import to_pil
    from .experts.scene import parse_scene, world_objects

    paths = []
    for name, old, (shape, colour, size, x, y) in EDIT_CASES:
        objects = [{"name": f"{c} {s}", "shape": s, "colour": c, "size": z, "position": [px, py]}
                   for s, c, z, px, py in old]
        new = {"name": f"new {colour} {shape}", "shape": shape, "colour": colour, "size": size, "position": [x, y],
               "new": True}
        image, _ = render(Scene(tuple(world_objects(parse_scene({"objects": objects})))), 32)
        to_pil(image).save(folder / f"{name}.png")
        spec = {"image": f"{name}.png", "prompt": f"a {size} {colour} {shape}",
                "scene": {"objects": objects + [new], "physics": {"duration": 3.0}}}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        paths.append(str(folder / f"{name}.yaml"))
    return paths


def _edit_figure(targets, images, sampler: str, particles: int, out: str) -> None:
    """Two rows: the given images, and the sampler's first edit of each."""
    import torch
    from PIL import Image

    from .edit import load_image
    from .experts.shapes.render import grid

    before = [load_image(Path(t).with_suffix(".png")) for t in targets]
    after = [images[sampler, t, particles][0] for t in targets]
    Image.fromarray(grid(torch.stack(before + after), ncol=len(targets), scale=4)).save(out)


def run_edit(args):
    import tempfile

    variants = ["potential", "replace"] if args.variants == "both" else args.variants.split(",")
    unknown = [v for v in variants if v not in ("potential", "replace")]
    if unknown:
        raise ValueError(f"--variants: unknown {unknown[0]!r}; name potential, replace, or both (potential,replace)")
    rows, extras, images = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.cases or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        targets = write_edit_cases(folder)
        for variant in variants:
            more, imgs = _compare(args, targets, options={"replace_known": variant == "replace"})
            if args.figure:
                _edit_figure(targets, imgs, args.samplers.split(",")[0], args.particles, args.figure)
            table_edit(more, [{"variant": variant}] * len(more), args)
            rows += more
            extras += [{"variant": variant} for _ in more]
            images.update({(s if len(variants) == 1 else f"{s}-{variant}", p, b): v for (s, p, b), v in imgs.items()})
    return rows, extras, images


def table_edit(rows, extras, args) -> None:
    for variant in dict.fromkeys(x["variant"] for x in extras):
        rs_v = [r for r, x in zip(rows, extras) if x["variant"] == variant]
        names = list(dict.fromkeys(r.sampler for r in rs_v))
        print(f"{'case':20s} {'sampler':10s} placed  bg_mse   s/sample")
        for target in dict.fromkeys(r.prompt for r in rs_v):
            for sampler in names:
                rs = [r for r in rs_v if r.prompt == target and r.sampler == sampler]
                print(f"{Path(target).stem:20s} {sampler:10s} {sum(r.relation for r in rs) / len(rs):6.2f} "
                      f"{statistics.mean(r.metrics['bg_mse'] for r in rs):8.1e} "
                      f"{statistics.median(r.seconds for r in rs):8.1f}")
        for sampler in names:
            rs = [r for r in rs_v if r.sampler == sampler]
            mse = [r.metrics["bg_mse"] for r in rs]
            print(f"variant={variant} {sampler} edit_bg_mse={statistics.mean(mse):.2e} "
                  f"(median {statistics.median(mse):.2e}) edit_placed={sum(r.relation for r in rs) / len(rs):.3f} "
                  f"(n={len(rs)}) nfe={statistics.mean(r.nfe for r in rs):.0f}", flush=True)


# ---- video: motion prompts as clips -------------------------------------------------------------------------------

def _video_prompts(args) -> Dict[str, str]:
    """{prompt: kind of motion}: --prompts as given, else --per-kind of every kind drawn with --prompt-seed."""
    from .experts.shapes.motions import benchmark_prompts, kind_of

    if args.prompts:
        return {p: kind_of(p) or "?" for p in args.prompts.split(",")}
    return {p: k for k, p in benchmark_prompts(args.per_kind, args.prompt_seed)}


def run_video(args):
    if args.frames < 1:
        raise ValueError(f"--frames {args.frames}: must be >= 1")
    prompts = list(_video_prompts(args))
    options = {} if args.region is None else {"region": args.region}
    if args.video_prior != "auto":
        options["video_prior"] = args.video_prior == "on"
    rows, images = _compare(args, prompts, frames=args.frames, shapes_options=options)
    extras = [{} for _ in rows]
    table_video(rows, extras, args)
    if args.out:
        from . import report

        print("wrote", report.write(Path(args.out), rows, images, report.summarise(rows, images)))
    return rows, extras, images


def table_video(rows, extras, args) -> None:
    from .experts.shapes.motions import kind_of

    for prompt in dict.fromkeys(r.prompt for r in rows):
        for sampler in dict.fromkeys(r.sampler for r in rows if r.prompt == prompt):
            rs = [r for r in rows if r.prompt == prompt and r.sampler == sampler]
            frames = sum(k.startswith("iou_f") for k in rs[0].metrics)
            iou = [statistics.mean(r.metrics[f"iou_f{f:02d}"] for r in rs) for f in range(frames)]
            print(f"{prompt!r} {sampler:10s} NFE {rs[0].nfe:5d}  IoU per frame " + " ".join(f"{v:.2f}" for v in iou)
                  + f"  mean {statistics.mean(iou):.3f}  exact frames "
                  + f"{statistics.mean(r.metrics['exact_frames'] for r in rs):.3f}", flush=True)
    kinds = {r.prompt: kind_of(r.prompt) or "?" for r in rows}
    names = list(dict.fromkeys(r.sampler for r in rows))
    base = "best-of-n" if "best-of-n" in names else None
    print(f"{'kind':8s} {'sampler':10s} clip_exact exact_frames   iou    n   clip_exact - best-of-n [95% CI]")
    for kind in list(dict.fromkeys(kinds.values())) + ["all"]:
        for sampler in names:
            rs = [r for r in rows if r.sampler == sampler and kind in ("all", kinds[r.prompt])]
            ref = [r for r in rows if r.sampler == base and kind in ("all", kinds[r.prompt])]
            diff = paired(rs, ref) if base and sampler != base else None
            print(f"{kind:8s} {sampler:10s} {sum(r.exact for r in rs) / len(rs):10.3f} "
                  f"{statistics.mean(r.metrics['exact_frames'] for r in rs):12.3f} "
                  f"{statistics.mean(r.metrics['iou'] for r in rs):6.3f} {len(rs):4d}   {diff or ''}", flush=True)
    for sampler in names:
        rs = [r for r in rows if r.sampler == sampler]
        frames = [r.metrics[k] for r in rs for k in r.metrics if k.startswith("iou_f")]
        sure = [r for r in rs if r.certified]
        print(f"video_{sampler}: clip_exact={sum(r.exact for r in rs) / len(rs):.3f} "
              f"exact_frames={statistics.mean(r.metrics['exact_frames'] for r in rs):.3f} "
              f"iou={statistics.mean(r.metrics['iou'] for r in rs):.3f} "
              f"frames_iou_0.85={sum(v >= 0.85 for v in frames) / len(frames):.3f} min_frame_iou={min(frames):.3f} "
              f"tracked={statistics.mean(r.metrics.get('tracked', float('nan')) for r in rs):.3f} "
              f"certified={len(sure) / len(rs):.3f} precision={sum(r.exact for r in sure) / max(1, len(sure)):.3f} "
              f"nfe={statistics.mean(r.nfe for r in rs):.0f} median_s={statistics.median(r.seconds for r in rs):.1f} "
              f"(n={len(rs)})", flush=True)


# ---- user: the hand-written user suite ----------------------------------------------------------------------------

def write_user_targets(inputs: Sequence[dict], folder: Path) -> Dict[str, str]:
    """{input id: comparison target}: a prompt as it is; a layout or scene spec written to ``folder`` as JSON; an
    edit as an edit spec there, its image rendered from the objects already in it (and a mask edit's mask)."""
    from .experts.scene import parse_scene, world_objects
    from .experts.shapes import render
    from .experts.shapes.world import Scene
    from .pipeline import to_pil

    def image_of(objects, name):
        old = [{k: v for k, v in o.items() if k not in ("new", "velocity")} for o in objects if not o.get("new")]
        image, _ = render(Scene(tuple(world_objects(parse_scene({"objects": old})))), 32)
        to_pil(image).save(folder / f"{name}.png")
        return f"{name}.png"

    targets = {}
    for inp in inputs:
        name, target = inp["id"].replace("/", "__"), inp["target"]
        if inp["route"] in ("layout", "scene"):
            (folder / f"{name}.json").write_text(json.dumps(target))
        elif inp["route"] == "edit":
            if "scene" in target:
                spec = {"image": image_of(target["scene"]["objects"], name), "scene": target["scene"]}
            else:
                from PIL import Image, ImageDraw

                mask = Image.new("L", (32, 32), 0)
                ImageDraw.Draw(mask).rectangle(list(target["mask"]), fill=255)
                mask.save(folder / f"{name}_mask.png")
                spec = {"image": image_of(target["objects"], name), "prompt": target["prompt"],
                        "mask": f"{name}_mask.png"}
            (folder / f"{name}.json").write_text(json.dumps(spec))
        else:
            targets[inp["id"]] = target
            continue
        targets[inp["id"]] = str(folder / f"{name}.json")
    return targets


def _wanted(inp: dict) -> List[tuple]:
    """(colour, shape, size, place) of every object the checker expects in an input's image (None: any; place: a
    layout box's centre (col, row) in pixels of 32, else None)."""
    from .experts.shapes.prompt import parse_prompt
    from .experts.shapes.vocab import parse_phrase
    from .specs import motion_scene

    route, target = inp["route"], inp["target"]
    if route in ("prompt", "relation"):
        return [(o.colour, o.shape, o.size, None) for o in parse_prompt(inp.get("check", target)).objects]
    if route == "clip":
        return [(o.colour, o.shape, o.size, None) for o in motion_scene(target).objects]
    if route == "layout":
        return [(p.colour, p.shape, p.size, (16 * (o["box"][0] + o["box"][2]), 16 * (o["box"][1] + o["box"][3])))
                for p, o in ((parse_phrase(o["phrase"]), o) for o in target["objects"])]
    objects = target.get("scene", target)["objects"]
    found = [(o["colour"], o["shape"], None, None) for o in objects]  # judged by colour and shape, as the checker
    if "prompt" in target and route == "edit":
        found += [(o.colour, o.shape, None, None) for o in parse_prompt(target["prompt"]).objects]
    return found


def _faults(image, wanted) -> List[str]:
    """What the checker finds wrong with one image against the objects wanted: missing ones, extra ones, malformed
    ones (not fitting their shape's template) and pixels no object explains."""
    from .experts.shapes import detect
    from .experts.shapes.checker import MISFIT, unexplained

    dets = detect(image)
    free, out = list(dets), []
    for colour, shape, size, place in sorted(wanted, key=lambda w: sum(v is None for v in w[:3])):  # specific first
        fits = [d for d in free if (colour is None or d.colour == colour) and (shape is None or d.shape == shape)
                and (size is None or d.size == size)]
        if place is not None:  # the one nearest its box
            fits.sort(key=lambda d: (d.centroid[0] + 0.5 - place[0]) ** 2 + (d.centroid[1] + 0.5 - place[1]) ** 2)
        hit = fits[0] if fits else None
        if hit is None:
            out.append("missing " + " ".join(v for v in (size, colour, shape or "object") if v))
        else:
            free.remove(hit)
    out += [f"extra {d.colour} {d.shape} at ({d.centroid[0]:.0f}, {d.centroid[1]:.0f})" for d in free]
    out += [f"malformed {d.colour} {d.shape} at ({d.centroid[0]:.0f}, {d.centroid[1]:.0f})" for d in dets
            if d.fit_error > MISFIT]
    stray = unexplained(image, dets)
    return out + ([f"{stray} unexplained pixels"] if stray else [])


def _why(inp: dict, row, image) -> str:
    """The checker's reason for a miss, in one line, with what it saw."""
    from .experts.shapes import detect
    from .experts.shapes.checker import describe

    wanted = _wanted(inp)
    if inp["route"] == "clip":
        bad = []
        for f in range(image.shape[1]):
            faults = _faults(image[:, f], wanted)
            if faults:
                bad.append(f"frame {f}: {', '.join(faults)}")
        return "; ".join(bad) or "a frame is not exact"
    faults = _faults(image, wanted)
    if row.present and not row.relation:
        faults.insert(0, {"prompt": "a relation does not hold", "relation": "a relation does not hold",
                          "layout": "an object outside its box", "scene": "an object off its simulated place",
                          "edit": "an object off its place (new, or kept)"}[inp["route"]])
    if row.relation and row.lenient is False:
        faults.insert(0, "an absent object is there")
    seen = describe(detect(image)) or "nothing"
    return f"{', '.join(faults) or 'not exact'} | saw: {seen}"


def run_user(args):
    import tempfile

    from .experts.shapes import usersuite

    if args.frames < 1:
        raise ValueError(f"--frames {args.frames}: must be >= 1")
    inputs = usersuite.select(args.routes.split(",") if args.routes else None,
                              args.ids.split(",") if args.ids else None)
    rows, extras, images = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        targets = write_user_targets(inputs, Path(tmp))
        by_target = {targets[i["id"]]: i for i in inputs}
        stills = [targets[i["id"]] for i in inputs if i["route"] != "clip"]
        clips = [targets[i["id"]] for i in inputs if i["route"] == "clip"]
        for group, frames in ((stills, None), (clips, args.frames)):
            if group:
                more, imgs = _compare(args, group, frames=frames)
                rows += more
                images.update(imgs)
    for r in rows:
        inp = by_target[r.prompt]
        image = images[r.sampler, r.prompt, r.particles][r.seed - args.seed0]
        if "check" in inp:  # judged against another prompt than the one sampled
            from .compare import judge

            judged = judge(image, inp["check"])
            r.present, r.relation, r.lenient, r.exact, r.atoms = (judged[k] for k in ("present", "relation",
                                                                                     "lenient", "exact", "atoms"))
        extras.append({"id": inp["id"], "route": inp["route"], "reason": "" if r.exact else _why(inp, r, image)})
    table_user(rows, extras, args)
    if args.out:
        _save_misses(Path(args.out) / "misses", rows, extras, images, args.seed0)
    return rows, extras, images


def _save_misses(folder: Path, rows, extras, images, seed0: int) -> None:
    """Each miss as a PNG upscaled 4x (a clip's frames side by side), named by its input, sampler and seed."""
    import torch
    from PIL import Image

    from .experts.shapes.render import grid

    folder.mkdir(parents=True, exist_ok=True)
    for r, x in zip(rows, extras):
        if not r.exact:
            image = images[r.sampler, r.prompt, r.particles][r.seed - seed0]
            frames = list(image.unbind(1)) if image.dim() == 4 else [image]
            name = f"{x['id'].replace('/', '__')}_{r.sampler}_seed{r.seed}.png"
            Image.fromarray(grid(torch.stack(frames), ncol=len(frames))).save(folder / name)
    print(f"wrote the misses' images to {folder}")


def table_user(rows, extras, args) -> None:
    """Strict exact per route and sampler with n, overall, then every miss with the checker's reason."""
    from .experts.shapes.usersuite import ROUTES

    samplers = list(dict.fromkeys(r.sampler for r in rows))
    print(f"{'route':10s} {'sampler':12s} {'strict':>7s} {'n':>5s}")
    for sampler in samplers:
        mine = [(r, x) for r, x in zip(rows, extras) if r.sampler == sampler]
        for route in ROUTES + ("all",):
            rs = [r for r, x in mine if route in ("all", x["route"])]
            if rs:
                strict = sum(bool(r.exact) for r in rs) / len(rs)
                print(f"{route:10s} {sampler:12s} {strict:7.3f} {len(rs):5d}", flush=True)
        rs = [r for r, _ in mine]
        print(f"user_{sampler}_strict={sum(bool(r.exact) for r in rs) / len(rs):.3f} (n={len(rs)})")
    for sampler in samplers:
        missed = [(r, x) for r, x in zip(rows, extras) if r.sampler == sampler and not r.exact]
        total = sum(r.sampler == sampler for r in rows)
        print(f"misses {sampler}: {len(missed)} of {total}")
        for r, x in missed:
            print(f"  {x['id']} seed {r.seed}: {x['reason']}")


RUNS: Dict[str, Callable] = {"shapes": run_shapes, "physics": run_physics, "edit": run_edit, "video": run_video,
                             "user": run_user}
TABLES: Dict[str, Callable] = {"shapes": table_shapes, "physics": table_physics, "edit": table_edit,
                               "video": table_video, "user": table_user}
