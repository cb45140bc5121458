"""Compare samplers at equal NFE on prompts, layout specs and scene specs, in the shapes world (checked by its
checker) or on named models (scored by evaluation-only metrics): the runs and their per-sample rows. Their tables
(CSV, JSON) and HTML report are ``report``'s."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from . import defaults, samplers
from .edit import replaces_known

log = logging.getLogger("poegen.compare")


def equal_nfe_options(sampler: str, particles: int, mcmc_steps: int) -> dict:
    """Options giving every sampler the NFE of ``poe`` with ``particles`` and ``mcmc_steps`` moves per level:
    the samplers without MCMC run particles * (1 + mcmc_steps) chains (up to the level-0 evaluation, which
    each extra chain also makes). ``ancestral`` runs one chain: a uniform draw from independent chains is
    distributed as one chain, so extra NFE cannot change its output, and its rows show the NFE it spent."""
    chains = particles * (1 + mcmc_steps)
    if sampler in ("poe", "ais"):
        return dict(num_particles=particles, mcmc_steps=mcmc_steps, select="best")
    if sampler == "ancestral":
        return dict(num_particles=1, select="all")
    return dict(num_particles=chains, select="best")


def parse_budgets(text: Optional[str]) -> Optional[List[int]]:
    """--budgets "N,N,..." as particle counts; None when not given."""
    if not text:
        return None
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise ValueError(f"--budgets {text!r}: expected particle counts separated by commas, e.g. 1,4,16") from None


def sample_one(product, sampler: str, particles: int, mcmc_steps: int, steps: int, seed: int,
               budget: str = defaults.BUDGET, max_nfe: Optional[int] = None, **options):
    """One image's run of ``sampler`` at the NFE of ``poe`` with ``particles`` and ``mcmc_steps`` (``options``:
    further SamplerConfig fields), by ``budget`` as a job's (``anytime.sample``: each round, the first one too,
    at the NFE of poe's round), an ``anytime.Outcome``."""
    from . import anytime

    opts = {**equal_nfe_options(sampler, particles, mcmc_steps), **options}
    n = opts.pop("num_particles")
    first = min(n, max(1, round(defaults.FIRST_ROUND * n / particles)))  # poe's first round, in this sampler's
    return anytime.sample(product, sampler, n, steps, torch.Generator().manual_seed(seed), budget=budget,
                          max_nfe=max_nfe, first=first, **opts)


def judge(image, prompt, split: bool = True) -> Dict[str, object]:
    """The checker's verdict on a prompt (its text or a parsed ``Prompt``): ``present``: every asked object is
    there, as many as asked; ``relation``: and every relation holds; ``lenient``: and every absence holds (other
    objects allowed); ``exact``: and nothing else is there (``checker.exactly``); ``atoms``: the share of the
    asked facts (each phrase's count, relation, absence) that hold. ``split``: see ``detect``."""
    from .experts.shapes import answer_detections, detect
    from .experts.shapes.checker import exactly
    from .experts.shapes.prompt import parse_prompt

    p = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    dets = detect(image, split=split)
    have = [sum(o.matches(d) for d in dets) >= p.objects.count(o) for o in dict.fromkeys(p.objects)]
    holds = [answer_detections(q, dets) for q in p.relation_questions()]
    gone = [not any(a.matches(d) for d in dets) for a in p.absent]
    present = all(have)
    relation = present and all(holds)
    lenient = relation and all(gone)
    atoms = have + holds + gone
    return {"present": present, "relation": relation, "lenient": lenient,
            "exact": lenient and exactly(image, p.objects, dets), "atoms": sum(atoms) / len(atoms)}


def _verdict(image, dets, wanted, placed: bool) -> Dict[str, bool]:
    """present / relation / exact of a spec's objects (phrases, or objects with colour, shape and size=None)."""
    from .experts.shapes.checker import exactly

    present = all(_matching(dets, o.colour, o.shape) for o in wanted)
    return {"present": present, "relation": present and placed,
            "exact": present and placed and exactly(image, wanted, dets)}


def judge_scene(image, physics, tolerance: float = 2.0) -> Dict[str, bool]:
    """The checker's verdict on a simulated scene: every visible object present (colour and shape); ``relation``:
    each one's centroid within ``tolerance`` px of where the simulation put it; ``exact``: and nothing else."""
    from .experts.shapes import detect
    from .experts.shapes.vocab import Phrase

    dets, placed = detect(image), True
    scale = image.shape[-1] / physics.spec.camera.resolution  # simulated places are in camera pixels
    wanted = []
    for k in physics.visible:
        o = physics.scene.objects[k]
        pos = ((physics.positions[k][0] + 0.5) * scale - 0.5, (physics.positions[k][1] + 0.5) * scale - 0.5)
        placed = placed and _near(_matching(dets, o.colour, o.shape), pos, tolerance)
        wanted.append(Phrase(o.colour, o.shape))
    return _verdict(image, dets, wanted, placed)


TRACK_PX = 3.0  # a clip's object is on its track when found this close to its simulated centroid


def judge_clip(clip, traj, phrases) -> Dict[str, object]:
    """The verdict on a clip (3, F, H, W) of a motion prompt against its simulation ``traj`` (objects ``phrases``):
    ``exact``: every frame holds exactly the objects in view at that time (``checker.exactly``); ``metrics``:
    ``iou``, the mean over frames of the foreground IoU with the simulation's render (``motion.foreground_iou``),
    ``exact_frames``, the share of exact frames, each frame's IoU (``iou_fNN``), and ``tracked``: 1 when every object
    in view is found (its colour and shape) within ``TRACK_PX`` of its simulated centroid in every frame, one track
    per object with no jump, else 0."""
    from .experts.motion import foreground_iou
    from .experts.shapes import detect
    from .experts.shapes.checker import exactly

    iou = foreground_iou(clip[None].float(), traj)[0].tolist()
    exact, tracked = [], True
    scale = clip.shape[-1] / traj.masks.shape[-1]  # simulated centroids are in the trajectory's pixels
    for f in range(clip.shape[1]):
        dets = detect(clip[:, f].float())
        seen = [(p, [(v + 0.5) * scale - 0.5 for v in c])
                for p, c, v in zip(phrases, traj.centroids[f].tolist(), traj.visible[f].tolist()) if v]
        exact.append(exactly(clip[:, f].float(), [p for p, _ in seen], dets))
        tracked = tracked and all(_near(_matching(dets, p.colour, p.shape), c, TRACK_PX) for p, c in seen)
    metrics = {"iou": sum(iou) / len(iou), "exact_frames": sum(exact) / len(exact), "tracked": float(tracked),
               **{f"iou_f{f:02d}": v for f, v in enumerate(iou)}}
    return {"present": None, "relation": None, "exact": all(exact), "metrics": metrics}


def _matching(dets, colour, shape):
    """The detections of a shape in a colour (any colour when None)."""
    return [d for d in dets if d.colour == (colour or d.colour) and d.shape == shape]


def _near(dets, place, tolerance: float) -> bool:
    """Whether one of the detections has its centroid within ``tolerance`` px of (col, row) ``place``."""
    return any(math.hypot(d.centroid[0] - place[0], d.centroid[1] - place[1]) <= tolerance for d in dets)


def judge_layout(image, layout, tolerance: float = 2.0) -> Dict[str, bool]:
    """The checker's verdict on a layout spec in the shapes world: every object present (colour and shape);
    ``relation``: each one's centroid within its box (widened by ``tolerance`` px); ``exact``: and nothing else."""
    from .experts.shapes import detect
    from .experts.shapes.vocab import parse_phrase

    dets, placed, size = detect(image), True, image.shape[-1]
    wanted = [parse_phrase(o.phrase) for o in layout.objects]
    for o, p in zip(layout.objects, wanted):
        if o.box is not None:
            x0, y0, x1, y1 = (v * size for v in o.box)
            placed = placed and any(x0 - tolerance <= d.centroid[0] + 0.5 <= x1 + tolerance
                                    and y0 - tolerance <= d.centroid[1] + 0.5 <= y1 + tolerance
                                    for d in _matching(dets, p.colour, p.shape))
    return _verdict(image, dets, wanted, placed)


def judge_edit(image, layout, tolerance: float = 2.0) -> Dict[str, bool]:
    """The checker's verdict on an edit in the shapes world: ``present``: every new object present; ``relation``:
    each within ``tolerance`` px of where the simulation dropped it (a mask edit: inside the mask), and every
    object already in the image still read at its place; ``exact``: and nothing else in the image."""
    from .experts.shapes import detect
    from .experts.shapes.checker import exactly
    from .experts.shapes.vocab import parse_phrase

    dets, placed = detect(image), True
    mask = layout.edit.mask
    wanted = [parse_phrase(o.phrase) for o in layout.objects]
    for o, p in zip(layout.objects, wanted):
        same = _matching(dets, p.colour, p.shape)
        if o.mask is not None and (o.known or layout.physics is not None):
            placed = placed and _near(same, o.centre(image.shape[-1]), tolerance)
        else:
            placed = placed and any(mask[round(d.centroid[1]), round(d.centroid[0])] > 0 for d in same)
    present = all(_matching(dets, p.colour, p.shape) or o.known for o, p in zip(layout.objects, wanted))
    # a scene edit lists every object of the image; a mask edit only the new ones, so nothing else is asked of it
    listed = wanted if layout.physics is not None else None
    return {"present": present, "relation": present and placed,
            "exact": present and placed and exactly(image, listed, dets)}


def is_scene(target: str) -> bool:
    """A comparison target is a spec file when it names a .yaml, .yml or .json file (a scene or a layout spec),
    else a prompt."""
    return Path(target).suffix.lower() in (".yaml", ".yml", ".json")


@dataclass
class Row:
    sampler: str
    prompt: str            # the prompt, or the spec file's path
    seed: int
    present: Optional[bool]   # shapes world: every object present (checker); None for named models
    relation: Optional[bool]  # prompt: every relation holds; scene: every object within 2 px of its simulated
    #                           place; layout: every object in its box
    exact: Optional[bool]     # relation, and nothing else in the image (checker.exactly)
    vlm: float             # the steering potentials' mean log-potential on the final image (shapes world: the VLM)
    log_Z: float
    nfe: int
    seconds: float
    ess: List[float]
    particles: int = 0     # the budget: poe's particles (the others run at equal NFE)
    metrics: Dict[str, float] = field(default_factory=dict)   # evaluation-only scorers (--metrics)
    lenient: Optional[bool] = None  # prompt: relation, and every absence holds (other objects allowed)
    atoms: Optional[float] = None   # prompt: the share of asked facts (counts, relations, absences) that hold
    certified: Optional[bool] = None  # the pick certified by the product's own potentials (None: none certifies)
    first_certified: Optional[int] = None  # NFE (as ``nfe``) spent when a certified particle first appeared
    rounds: int = 1                 # the sampler's rounds (anytime budget; fixed: 1)
    fixed_nfe: Optional[int] = None  # NFE (as ``nfe``) of one fixed run at this budget, the anytime rounds' yardstick


_WORKER: dict = {}


def _init_worker(threads: int, config: Optional[dict] = None, metrics: Sequence[str] = (),
                 shapes_options: Optional[dict] = None):
    """Per-process state of a comparison worker: its thread count, the experts and built targets."""
    if threads:  # pinned: the worker's share, never re-picked by its runs
        from .hardware import configure_threads
        configure_threads(threads)
    config = config or {"experts": [], "potentials": []}
    _WORKER.update(config=config, metrics=list(metrics), targets={}, shapes_options=dict(shapes_options or {}))
    if not config["experts"]:
        from .experts.shapes import load_prior
        _WORKER.update(prior=load_prior())  # the scorers come from families' cache (images and clips differ)


def _metric_scorers(layout) -> List:
    """(column, potentials) of every --metrics scorer for a layout: one potential per question or object."""
    from .experts.registry import POTENTIALS, _entry, POTENTIAL_FIELDS

    out = []
    for spec in _WORKER["metrics"]:
        e = _entry(spec, POTENTIALS, POTENTIAL_FIELDS, "--metrics")
        pots = POTENTIALS[e["kind"]][1](e["path"], layout.texts(), layout, **e["options"])
        boxed = e["kind"] == "detector" and any(o.bounding_box() is not None for o in layout.objects)
        out.append((e["kind"] + ("_miou" if boxed else ""), pots, layout if boxed else None))
    return out


def _target(target: str, guidance: Optional[float], potential_weight: Optional[float], frames: Optional[int] = None,
            seed: Optional[int] = None):
    """(product, metrics function, verdict function) of a prompt, layout spec or scene spec (with ``frames``: a
    shapes-world motion prompt's clips of that many frames, its start varied by ``seed`` as a job's), built once
    per process as a job's Layout is: read by ``specs.load_target``, built by ``pipeline.build``."""
    from .job import Job
    from .layout import Layout
    from .pipeline import build
    from .specs import clip_seconds, load_target

    seed = seed if frames else None
    key = target, guidance, potential_weight, frames, seed
    if key not in _WORKER["targets"]:
        cfg = _WORKER["config"]
        shapes = not cfg["experts"]
        extra = dict(prior=_WORKER["prior"], **_WORKER["shapes_options"]) if shapes else {}
        layout = load_target(target, shapes, video=bool(frames), place=extra.pop("place", True), seed=seed,
                             seconds=clip_seconds(frames) if frames else None)
        job = Job(guidance=guidance, potential_weight=potential_weight, video="gif" if frames else None, frames=frames)
        product = build(layout, job, cfg, **extra)
        verdict = (lambda x: {"present": None, "relation": None, "exact": None})
        if frames:
            from .experts.motion import trajectory
            from .experts.shapes.vocab import parse_phrase
            spec = layout.physics.spec
            traj = trajectory(spec, frames, product.fps, product.shape[-1])
            phrases = [parse_phrase(f"{o.size} {o.colour} {o.shape}") for o in spec.objects]
            verdict = (lambda x: judge_clip(x, traj, phrases))
        elif shapes:
            physics = layout.physics
            verdict = ((lambda x: judge_edit(x, layout)) if layout.edit is not None else
                       (lambda x: judge_scene(x, physics)) if physics is not None else
                       (lambda x: judge_layout(x, layout)) if is_scene(target) else (lambda x: judge(x, target)))
        asked = Layout(layout.text) if layout.text is not None else layout  # a prompt as typed, else the spec's
        _WORKER["targets"][key] = (product, _metric_scorers(asked), verdict)
    return _WORKER["targets"][key]


@torch.no_grad()
def _scores(product, scorers, image) -> Tuple[float, Dict[str, float]]:
    """The steering potentials' mean log-potential and each metric scorer's value on one decoded image."""
    from .experts.detector import mean_iou

    from .experts.known import KnownPixels
    from .experts.physics import CentroidConstraint, LayoutPotential
    from .experts.shapes.footprint import Footprint

    x = image[None]
    asked = [r for r in product.potentials
             if not isinstance(r, (LayoutPotential, CentroidConstraint, KnownPixels, Footprint))]
    reward = float(torch.stack([r.log_potential(x)[0] for r in asked]).mean()) if asked else 0.0
    metrics = {}
    for column, pots, layout in scorers:
        if layout is not None:
            boxed = [o for o in layout.objects if o.bounding_box() is not None]
            metrics[column] = float(mean_iou(pots[0].scorer, x, [o.phrase for o in boxed],
                                             [o.bounding_box() for o in boxed])[0])
        else:
            metrics[column] = float(torch.stack([r.log_potential(x)[0] for r in pots]).mean())
    return reward, metrics


def _run_task(task):
    """One (sampler, target, seed, budget): sample, then score; (row, decoded image)."""
    sampler, target, seed, particles, mcmc_steps, steps, guidance, potential_weight, options, frames, budget = task
    product, scorers, verdict = _target(target, guidance, potential_weight, frames, seed)
    if replaces_known(product):  # as `poegen edit`
        options = {"replace_known": True, **options}
    t = time.perf_counter()
    r = sample_one(product, sampler, particles, mcmc_steps, steps, seed, budget=budget, **options)
    seconds = time.perf_counter() - t
    x = r.images[0].float()
    score, metrics = _scores(product, scorers, x)
    if product.edit is not None:
        from .edit import background_mse
        metrics["bg_mse"] = background_mse(x, product.edit)
    judged = verdict(x)
    metrics.update(judged.pop("metrics", {}))
    if judged["exact"] is not None and not frames:
        metrics["pool_exact"] = _pool_exact(product, r.particles, verdict)
    generative = lambda nfe: sum(v for k, v in nfe.items() if k in product.names)  # noqa: E731
    return Row(sampler, target, seed, seconds=round(seconds, 3), vlm=score, log_Z=r.log_Z, nfe=generative(r.nfe),
               ess=r.diagnostics["ess"], particles=particles, metrics=metrics, certified=r.certified[0],
               first_certified=None if r.first_certified is None else generative(r.first_certified),
               rounds=len(r.rounds), fixed_nfe=generative(r.fixed_nfe),
               **judged), x


@torch.no_grad()
def _pool_exact(product, final, verdict) -> float:
    """The share of the run's live final particles (their x0) that the checker finds exact: how much of what a
    sampler ends with is right, before any selection (``best`` picks one of them by the potentials)."""
    live = torch.isfinite(final.log_w)
    x = final.x[live]
    if not len(x):
        return 0.0
    images = product.decode(x) if product.decode is not None else x
    return sum(bool(verdict(im.float())["exact"]) for im in images) / len(images)


def _results(tasks, workers: int, config: Optional[dict], metrics: Sequence[str], shapes_options: Optional[dict]):
    """The tasks' (row, image) results in order: here, or in ``workers`` spawned processes sharing torch's threads
    (as many as ``hardware.configure_threads`` finds free: a core another process keeps busy is not oversubscribed)."""
    from .hardware import configure_threads

    configure_threads()
    if workers <= 1:
        _init_worker(0, config, metrics, shapes_options)
        yield from map(_run_task, tasks)
        return
    import multiprocessing as mp

    threads = max(1, torch.get_num_threads() // workers)
    with mp.get_context("spawn").Pool(workers, _init_worker, (threads, config, metrics, shapes_options)) as pool:
        yield from pool.imap(_run_task, tasks)


def run(targets: Sequence[str], sampler_names: Sequence[str] = defaults.COMPARE_SAMPLERS,
        seeds: int = defaults.COMPARE_SEEDS, particles: int = defaults.PARTICLES,
        mcmc_steps: int = samplers.PRESETS["poe"]["mcmc_steps"], steps: int = defaults.STEPS,
        guidance: Optional[float] = None, potential_weight: Optional[float] = None, progress: bool = True,
        workers: int = 1, seed0: int = 0, options: Optional[dict] = None, config: Optional[dict] = None,
        metrics: Sequence[str] = (), budgets: Optional[Sequence[int]] = None, shapes_options: Optional[dict] = None,
        frames: Optional[int] = None, budget: str = defaults.BUDGET):
    """(rows, images[(sampler, target, budget)] -> (seeds, 3, H, W)) for every sampler x target x seed x budget
    (seeds seed0, seed0 + 1, ...; budgets: poe's particle counts, default ``particles``). A target is a prompt,
    a layout spec or a scene spec path; ``config`` names the models ({experts, potentials}, as
    ``registry.load_config``; default: the shapes world); ``metrics`` are 'kind:path' scorers that only
    evaluate; ``options`` are further SamplerConfig fields for every sampler (e.g. grad_guidance); ``shapes_options``:
    the shapes world's product options (the ablations ``place=False``, ``counts=False``). ``frames``: the targets
    are shapes-world motion prompts ("a red ball rolls off a blue box"), sampled as clips of that many frames
    (images (seeds, 3, frames, H, W)) and judged against their simulation (``judge_clip``). With
    ``workers`` > 1 the runs are spread over that many processes, each with an equal share of torch's threads;
    results do not depend on ``workers``. ``budget``: every sampler's, as a job's (``anytime``: rounds until
    certified, each at the NFE of poe's round; ``fixed``: one run, every sampler at equal NFE; ``auto``: anytime,
    a clip fixed). The defaults are a job's (``poegen.defaults``, as ``poegen compare``)."""
    from .experts.registry import POTENTIAL_FIELDS, POTENTIALS, _entry
    from .specs import load_target

    shapes = not (config and config["experts"])
    for what, given in (("--samplers", list(sampler_names)), ("targets", list(targets))):
        twice = sorted({t for t in given if given.count(t) > 1})
        if twice:  # each would be run and counted twice, doubling its n
            raise ValueError(f"{what}: {twice[0][:60]!r} is named twice; name each once (--seeds sets the runs)")
    if frames is not None:
        from .specs import motion_scene
        if not shapes or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames {frames}: clips are compared in the shapes world (no --config), with a frame "
                             "count >= 1, e.g. --frames 5")
        for target in targets:
            if is_scene(target) or motion_scene(target) is None:
                from .experts.shapes.motions import EXAMPLES
                raise ValueError(f"target {target[:60]!r}: --frames compares clips of motion prompts; write one as "
                                 + ", ".join(f"'{e}'" for e in EXAMPLES.values()))
    for target in targets:  # bad prompts and specs fail before any work
        load_target(target, shapes, video=frames is not None)
    for spec in metrics:
        _entry(spec, POTENTIALS, POTENTIAL_FIELDS, "--metrics")
    if options:
        samplers.config("poe", **options)  # unknown options fail before any work
    budgets = list(budgets or [particles])
    if any(not isinstance(b, int) or b < 1 for b in budgets):
        raise ValueError(f"budgets {budgets}: expected particle counts >= 1, e.g. 1,4,16")
    if budget not in defaults.BUDGETS:
        raise ValueError(f"budget {budget!r}: expected auto, anytime or fixed")
    tasks = [(s, p, seed, b, mcmc_steps, steps, guidance, potential_weight, dict(options or {}), frames, budget)
             for b in budgets for p in targets for s in sampler_names for seed in range(seed0, seed0 + seeds)]
    results = []  # the first result waits for the models: the bar says so until then
    with tqdm(total=len(tasks), desc="compare: loading models", disable=None if progress else True) as bar:
        for result in _results(tasks, workers, config, metrics, shapes_options):
            results.append(result)
            bar.set_description("compare", refresh=False)
            bar.update()
    rows, images = [r for r, _ in results], {}
    for (s, p, _, b, *_), (_, x) in zip(tasks, results):
        images.setdefault((s, p, b), []).append(x)
    return rows, {k: torch.stack(v) for k, v in images.items()}
