"""The report of a sampler comparison: per-sample rows (``compare.Row``, from ``compare.run``) summarised into
tables by sampler and budget, written as CSV and JSON with a self-contained HTML report (image grids, clips as
animated GIFs, reward versus NFE over budgets, ESS traces)."""
from __future__ import annotations

import base64
import csv
import io
import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import List, Sequence, Tuple

import torch


def diversity(x: torch.Tensor) -> float:
    """Mean pairwise RMS distance between images."""
    n = x.shape[0]
    if n < 2:
        return 0.0
    d = torch.cdist(x.flatten(1), x.flatten(1)) / x[0].numel() ** 0.5
    return float(d.sum() / (n * (n - 1)))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], reps: int = 10000, seed: int = 0,
                     level: float = 0.95) -> Tuple[float, float, float]:
    """(mean of a - b, low, high): the percentile bootstrap interval of the mean paired difference, each
    resample drawing pairs (the same prompt and seed under both samplers) with replacement."""
    import numpy as np

    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired_bootstrap: expected two equal-length, non-empty sequences, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    means = d[np.random.default_rng(seed).integers(0, len(d), size=(reps, len(d)))].mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(low), float(high)


def summarise(rows: List, images) -> List[dict]:
    """One record per sampler and budget: rates, means and diversity over targets and seeds (None where a
    column does not apply, e.g. the checker's rates for named models). ``rows``: ``compare.Row`` records;
    ``images``: (sampler, target, budget) -> (seeds, 3, H, W) (clips: (seeds, 3, F, H, W)), both as ``compare.run``
    returns them."""
    out = []
    for sampler, budget in dict.fromkeys((r.sampler, r.particles) for r in rows):
        rs = [r for r in rows if r.sampler == sampler and r.particles == budget]
        div = statistics.mean(diversity(v) for (s, _, b), v in images.items() if s == sampler and b == budget)

        def mean(f):
            values = [f(r) for r in rs if f(r) is not None]
            return float(statistics.mean(values)) if values else None
        record = {"sampler": sampler, "particles": budget, "n": len(rs), "present": mean(lambda r: r.present),
                  "relation": mean(lambda r: r.relation), "exact": mean(lambda r: r.exact),
                  "certified": mean(lambda r: r.certified), "vlm": mean(lambda r: r.vlm)}
        record.update({k: mean(lambda r: r.metrics.get(k)) for k in dict.fromkeys(k for r in rs for k in r.metrics)})
        record.update({"diversity": div, "log_Z": mean(lambda r: r.log_Z), "nfe": mean(lambda r: r.nfe),
                       "seconds": mean(lambda r: r.seconds)})
        out.append(record)
    return out


def table(summary: List[dict]) -> str:
    """The summary as aligned text."""
    cols = list(dict.fromkeys(c for s in summary for c in s))

    def cell(v):
        return f"{v:>10.3f}" if isinstance(v, float) else f"{'-' if v is None else v!s:>10s}"
    return "\n".join(["  ".join(f"{c:>10s}" for c in cols)] + ["  ".join(cell(s.get(c)) for c in cols) for s in summary])


def _headline(summary: List[dict]) -> str:
    """The column the reward-versus-NFE plot shows: the checker's rate, else the first metric, else the reward."""
    if summary[0]["exact"] is not None:
        return "exact"
    fixed = {"sampler", "particles", "n", "present", "relation", "exact", "certified", "vlm", "diversity", "log_Z", "nfe",
             "seconds"}
    return next((c for c in summary[0] if c not in fixed), "vlm")


def _png_b64(fig_or_image) -> str:
    buf = io.BytesIO()
    if hasattr(fig_or_image, "savefig"):
        fig_or_image.savefig(buf, format="png", dpi=80)
    else:
        fig_or_image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _grid_uri(v: torch.Tensor, grid, Image) -> str:
    """A data URI of one sampler and target's samples side by side: a PNG of images (N, 3, H, W), or an animated
    GIF of clips (N, 3, F, H, W), frame f of every clip in frame f of the GIF (4 frames a second, looping)."""
    ncol = min(8, len(v))
    if v.dim() == 4:
        return f"data:image/png;base64,{_png_b64(Image.fromarray(grid(v, ncol=ncol)))}"
    frames = [Image.fromarray(grid(v[:, :, f], ncol=ncol)) for f in range(v.shape[2])]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=250, loop=0)
    return f"data:image/gif;base64,{base64.b64encode(buf.getvalue()).decode()}"


def write(out: Path, rows: List, images, summary: List[dict], progress: bool = False) -> Path:
    """samples.csv, summary.csv, summary.json and report.html (self-contained) in ``out``; with ``progress``, a bar
    on stderr where it is a terminal."""
    from tqdm.auto import tqdm

    top = max(b for _, _, b in images)
    steps = 3 + sum(b == top for *_, b in images)  # tables, plots, one grid per sampler and target, the page
    with tqdm(total=steps, desc="writing report", disable=None if progress else True, leave=False) as bar:
        return _write(out, rows, images, summary, top, bar)


def _write(out: Path, rows: List, images, summary: List[dict], top: int, bar) -> Path:
    """``write``'s steps, each advancing ``bar``; grids of the largest budget ``top`` only."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from .experts.shapes.render import grid

    out.mkdir(parents=True, exist_ok=True)
    flat = [{**{k: v for k, v in asdict(r).items() if k not in ("ess", "metrics")}, **r.metrics} for r in rows]
    with open(out / "samples.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in flat for k in r)))
        w.writeheader()
        w.writerows(flat)
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(c for s in summary for c in s)))
        w.writeheader()
        w.writerows(summary)
    (out / "summary.json").write_text(json.dumps({"summary": summary, "samples": [asdict(r) for r in rows]}, indent=1))
    bar.update()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    y = _headline(summary)
    for sampler in dict.fromkeys(s["sampler"] for s in summary):
        points = sorted((s["nfe"], s[y]) for s in summary if s["sampler"] == sampler)
        a1.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=sampler)
        traces = [r.ess for r in rows if r.sampler == sampler]
        a2.plot([statistics.mean(v) for v in zip(*traces)], label=sampler)
    a1.set_xlabel("NFE per image"), a1.set_ylabel(y if y != "exact" else "exactly what was asked (checker)"), a1.legend()
    a2.set_xlabel("noise level"), a2.set_ylabel("mean ESS"), a2.legend()
    if len({s["particles"] for s in summary}) > 1:
        a1.set_xscale("log")
    fig.tight_layout()
    plots = _png_b64(fig)
    plt.close(fig)
    bar.update()
    grids = ""
    for (s, p, b), v in images.items():
        if b == top:
            grids += f"<h3>{s} &middot; {p}</h3><img class=grid src='{_grid_uri(v, grid, Image)}'>"
            bar.update()
    head = "".join(f"<th>{c}</th>" for c in summary[0])
    body = "".join("<tr>" + "".join(f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{'-' if v is None else v}</td>"
                                    for v in s.values()) + "</tr>" for s in summary)
    html = (f"<!doctype html><html><head><meta charset=utf-8><title>poegen comparison</title><style>"
            f"body{{font-family:sans-serif;margin:2em;background:#fff}}td,th{{padding:4px 10px;border-bottom:1px solid #ccc}}"
            f"img.grid{{image-rendering:pixelated;max-width:100%}}</style></head><body>"
            f"<h1>poegen sampler comparison</h1><table><tr>{head}</tr>{body}</table>"
            f"<h2>Reward versus NFE, ESS traces</h2><img src='data:image/png;base64,{plots}'>"
            f"<h2>Samples</h2>{grids}</body></html>")
    (out / "report.html").write_text(html)
    bar.update()
    return out / "report.html"
