"""Compare samplers at equal NFE on shapes-world prompts: per-sample metrics, aggregated tables (CSV,
JSON) and a self-contained HTML report (image grids, reward versus NFE, ESS traces)."""
from __future__ import annotations

import base64
import csv
import io
import json
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from . import samplers

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


def sample_one(product, sampler: str, particles: int, mcmc_steps: int, steps: int, seed: int, **options):
    """One image's run of ``sampler`` at the NFE of ``poe`` with ``particles`` and ``mcmc_steps`` (``options``:
    further SamplerConfig fields)."""
    return samplers.sample(product, sampler=sampler, num_steps=steps, generator=torch.Generator().manual_seed(seed),
                           **{**equal_nfe_options(sampler, particles, mcmc_steps), **options})


def judge(image, prompt, split: bool = True) -> Dict[str, bool]:
    """The checker's verdict on a prompt: every asked object present; every relation holds (``split``:
    see ``detect``)."""
    from .experts.shapes import answer_detections, detect
    from .experts.shapes.prompt import parse_prompt

    p = parse_prompt(prompt)
    dets = detect(image, split=split)
    present = all(any(o.colour == d.colour and o.shape == d.shape for d in dets) for o in p.objects)
    relations = p.questions()[len(p.objects):]
    return {"present": present, "relation": present and all(answer_detections(q, dets) for q in relations)}


def judge_scene(image, physics, tolerance: float = 2.0) -> Dict[str, bool]:
    """The checker's verdict on a simulated scene: every visible object present (colour and shape), and
    ``relation``: each one's centroid within ``tolerance`` px of where the simulation put it."""
    from .experts.shapes import detect

    dets, present, placed = detect(image), True, True
    for k in physics.visible:
        o, pos = physics.scene.objects[k], physics.positions[k]
        same = [d for d in dets if d.colour == o.colour and d.shape == o.shape]
        present = present and bool(same)
        placed = placed and any(math.hypot(d.centroid[0] - pos[0], d.centroid[1] - pos[1]) <= tolerance for d in same)
    return {"present": present, "relation": placed}


def is_scene(target: str) -> bool:
    """A comparison target is a scene spec when it names a .yaml, .yml or .json file, else a prompt."""
    return Path(target).suffix.lower() in (".yaml", ".yml", ".json")


@dataclass
class Row:
    sampler: str
    prompt: str            # the prompt, or the scene spec's path
    seed: int
    present: bool          # every object present (checker)
    relation: bool         # prompt: every relation holds; scene: every object within 2 px of its simulated place
    vlm: float
    log_Z: float
    nfe: int
    seconds: float
    ess: List[float]


_WORKER: dict = {}


def _init_worker(threads: int):
    """Per-process state of a comparison worker: its thread count, the experts and built targets."""
    from .experts.shapes import load_prior, load_vlm

    if threads:
        torch.set_num_threads(threads)
    _WORKER.update(prior=load_prior(), vlm=load_vlm(), targets={})


def _target(target: str, guidance: Optional[float], vlm_weight: Optional[float]):
    """(product, VLM questions, verdict function) of a prompt or a scene spec path, built once per process."""
    from .experts.physics import PhysicsExpert
    from .experts.shapes.prompt import build_product, build_scene_product, parse_prompt
    from .scene import load_scene

    key = target, guidance, vlm_weight
    if key not in _WORKER["targets"]:
        prior, vlm = _WORKER["prior"], _WORKER["vlm"]
        if is_scene(target):
            physics = PhysicsExpert(load_scene(target))
            questions = [f"is there a {physics.scene.objects[k].colour} {physics.scene.objects[k].shape}?"
                         for k in physics.visible]
            built = (build_scene_product(physics, prior, guidance), questions, lambda x: judge_scene(x, physics))
        else:
            built = (build_product(target, prior=prior, vlm=vlm, guidance=guidance, vlm_weight=vlm_weight),
                     parse_prompt(target).questions(), lambda x: judge(x, target))
        _WORKER["targets"][key] = built
    return _WORKER["targets"][key]


def _run_task(task):
    """One (sampler, target, seed): sample, then score with the checker and the VLM; (row, image)."""
    sampler, target, seed, particles, mcmc_steps, steps, guidance, vlm_weight, options = task
    product, questions, verdict = _target(target, guidance, vlm_weight)
    t = time.perf_counter()
    r = sample_one(product, sampler, particles, mcmc_steps, steps, seed, **options)
    seconds = time.perf_counter() - t
    x = r.x[0]
    score = float(_WORKER["vlm"].log_prob_yes(x[None].expand(len(questions), -1, -1, -1), questions).mean())
    return Row(sampler, target, seed, seconds=round(seconds, 3), vlm=score, log_Z=r.log_Z,
               nfe=sum(v for k, v in r.nfe.items() if k in product.names), ess=r.diagnostics["ess"],
               **verdict(x)), x


def _results(tasks, workers: int):
    """The tasks' (row, image) results in order: here, or in ``workers`` spawned processes sharing torch's threads."""
    if workers <= 1:
        _init_worker(0)
        yield from map(_run_task, tasks)
        return
    import multiprocessing as mp

    threads = max(1, torch.get_num_threads() // workers)
    with mp.get_context("spawn").Pool(workers, _init_worker, (threads,)) as pool:
        yield from pool.imap(_run_task, tasks)


def run(targets: Sequence[str], sampler_names: Sequence[str], seeds: int, particles: int = 16, mcmc_steps: int = 2,
        steps: int = 30, guidance: Optional[float] = None, vlm_weight: Optional[float] = None, progress: bool = True,
        workers: int = 1, seed0: int = 0, options: Optional[dict] = None):
    """(rows, images[(sampler, target)] -> (seeds, 3, H, W)) for every sampler x target x seed (seeds
    seed0, seed0 + 1, ...); a target is a prompt or a scene spec path; ``options`` are further
    SamplerConfig fields for every sampler (e.g. grad_guidance). With ``workers`` > 1 the runs are
    spread over that many processes, each with an equal share of torch's threads; results do not
    depend on ``workers``."""
    from .experts.shapes.prompt import parse_prompt
    from .scene import load_scene

    for target in targets:  # bad prompts and specs fail before any work
        load_scene(target) if is_scene(target) else parse_prompt(target)
    if options:
        samplers.config("poe", **options)  # unknown options fail before any work
    tasks = [(s, p, seed, particles, mcmc_steps, steps, guidance, vlm_weight, dict(options or {}))
             for p in targets for s in sampler_names for seed in range(seed0, seed0 + seeds)]
    results = list(tqdm(_results(tasks, workers), total=len(tasks), desc="compare", disable=not progress))
    rows, images = [r for r, _ in results], {}
    for (s, p, *_), (_, x) in zip(tasks, results):
        images.setdefault((s, p), []).append(x)
    return rows, {k: torch.stack(v) for k, v in images.items()}


def diversity(x: torch.Tensor) -> float:
    """Mean pairwise RMS distance between images."""
    n = x.shape[0]
    if n < 2:
        return 0.0
    d = torch.cdist(x.flatten(1), x.flatten(1)) / x[0].numel() ** 0.5
    return float(d.sum() / (n * (n - 1)))


def summarise(rows: List[Row], images) -> List[dict]:
    """One record per sampler: rates, means and diversity over prompts and seeds."""
    out = []
    for sampler in dict.fromkeys(r.sampler for r in rows):
        rs = [r for r in rows if r.sampler == sampler]
        div = statistics.mean(diversity(v) for (s, _), v in images.items() if s == sampler)
        mean = lambda f: float(statistics.mean(f(r) for r in rs))  # noqa: E731
        out.append({"sampler": sampler, "n": len(rs), "present": mean(lambda r: r.present),
                    "relation": mean(lambda r: r.relation), "vlm": mean(lambda r: r.vlm), "diversity": div,
                    "log_Z": mean(lambda r: r.log_Z), "nfe": mean(lambda r: r.nfe), "seconds": mean(lambda r: r.seconds)})
    return out


def table(summary: List[dict]) -> str:
    """The summary as aligned text."""
    cols = ["sampler", "n", "present", "relation", "vlm", "diversity", "log_Z", "nfe", "seconds"]
    lines = ["  ".join(f"{c:>10s}" for c in cols)]
    for s in summary:
        lines.append("  ".join(f"{s[c]:>10.3f}" if isinstance(s[c], float) else f"{s[c]!s:>10s}" for c in cols))
    return "\n".join(lines)


def _png_b64(fig_or_image) -> str:
    buf = io.BytesIO()
    if hasattr(fig_or_image, "savefig"):
        fig_or_image.savefig(buf, format="png", dpi=80)
    else:
        fig_or_image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write(out: Path, rows: List[Row], images, summary: List[dict]) -> Path:
    """samples.csv, summary.csv, summary.json and report.html (self-contained) in ``out``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from .experts.shapes.render import grid

    out.mkdir(parents=True, exist_ok=True)
    fields = [f for f in asdict(rows[0]) if f != "ess"]
    with open(out / "samples.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows({k: v for k, v in asdict(r).items() if k != "ess"} for r in rows)
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    (out / "summary.json").write_text(json.dumps({"summary": summary, "samples": [asdict(r) for r in rows]}, indent=1))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for s in summary:
        a1.scatter(s["nfe"], s["present"], label=s["sampler"], s=40)
        traces = [r.ess for r in rows if r.sampler == s["sampler"]]
        a2.plot([statistics.mean(v) for v in zip(*traces)], label=s["sampler"])
    a1.set_xlabel("NFE per image"), a1.set_ylabel("objects present (checker)"), a1.legend()
    a2.set_xlabel("noise level"), a2.set_ylabel("mean ESS"), a2.legend()
    fig.tight_layout()
    plots = _png_b64(fig)
    plt.close(fig)
    grids = "".join(
        f"<h3>{s} &middot; {p}</h3><img class=grid src='data:image/png;base64,"
        f"{_png_b64(Image.fromarray(grid(v, ncol=min(8, len(v)))))}'>" for (s, p), v in images.items())
    head = "".join(f"<th>{c}</th>" for c in summary[0])
    body = "".join("<tr>" + "".join(f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{v}</td>" for v in s.values())
                   + "</tr>" for s in summary)
    html = (f"<!doctype html><html><head><meta charset=utf-8><title>poegen comparison</title><style>"
            f"body{{font-family:sans-serif;margin:2em;background:#fff}}td,th{{padding:4px 10px;border-bottom:1px solid #ccc}}"
            f"img.grid{{image-rendering:pixelated;max-width:100%}}</style></head><body>"
            f"<h1>poegen sampler comparison</h1><table><tr>{head}</tr>{body}</table>"
            f"<h2>Reward versus NFE, ESS traces</h2><img src='data:image/png;base64,{plots}'>"
            f"<h2>Samples</h2>{grids}</body></html>")
    (out / "report.html").write_text(html)
    return out / "report.html"
