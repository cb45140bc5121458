"""Regenerate the README's demo image, the compare report's screenshot and the figures they produce, from today's
code, and write them to docs/readme_figures.json; tests/test_ux.py checks that the README quotes them.

    python scripts/readme_figures.py                  # both: 32 minutes on 2 CPU cores beside other work
    python scripts/readme_figures.py --only demo      # the demo alone: 2 minutes there        (load average ~5)
    python scripts/readme_figures.py --only clip      # the README's clip, timed (--runs): docs/clip.gif

- demo: `make demo`'s command (`poegen generate "a red ball on a blue box"`), timed as a whole process (median of
  --runs); its image becomes docs/demo.png.
- clip: the README's clip (`poegen generate "a red ball rolls off a blue box" --video clip.gif`, the default clip),
  timed as a whole process (median of --runs); it becomes docs/clip.gif.
- compare: the README's `poegen compare` of four prompts at --seeds 8 (defaults, 2 workers); its summary table,
  and a headless-Chromium screenshot of its report.html (1000 x 1400, as tests/test_compare.py renders it) becomes
  docs/compare_report.png.
Speeds depend on the CPU and on what else runs: each part waits (--wait) for a quiet machine, and the file records
the CPU, the dtype auto picked and the load average before each part. ShapesEval's figures are not in scope (`poegen eval shapes`).
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "readme_figures.json"
DEMO = ["generate", "a red ball on a blue box"]
CLIP = ["generate", "a red ball rolls off a blue box"]
COMPARE = ["compare", "a red ball", "a red ball and a blue box", "a green wedge left of a yellow ball",
           "a red ball on a blue box", "--seeds", "8", "--workers", "2", "--budget", "fixed"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1000,1400"]


def poegen(args, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("OMP_NUM_THREADS", None)  # let auto pick, as a user's shell does
    return subprocess.run([sys.executable, "-m", "poegen", *args, "--quiet"], check=True, env=env, text=True,
                          capture_output=True, **kw)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def machine() -> dict:
    import torch

    from poegen.envinfo import cpu_model
    from poegen.hardware import pick_dtype

    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "capability": torch.backends.cpu.get_cpu_capability(), "dtype_auto": str(pick_dtype("auto", "cpu")[0]),
            "torch": torch.__version__}


def wait_idle(limit: float, below: float = 1.0) -> float:
    """Wait up to ``limit`` seconds for the 1-minute load average to fall below ``below``; the load then."""
    end = time.time() + limit
    while os.getloadavg()[0] >= below and time.time() < end:
        time.sleep(10)
    return round(os.getloadavg()[0], 2)


def timed(args: list, runs: int, tmp: Path, name: str, load: float) -> dict:
    """`poegen ARGS OUT` run ``runs`` times as whole processes (median wall), its output copied to docs/NAME."""
    walls = []
    for i in range(runs):
        t = time.perf_counter()
        poegen([*args, str(tmp / name)], cwd=tmp)
        walls.append(time.perf_counter() - t)
    shutil.copyfile(tmp / name, ROOT / "docs" / name)
    return {"runs": runs, "seconds": round(statistics.median(walls), 1), "walls": [round(w, 2) for w in walls],
            "load_before": load, "image": f"docs/{name}", "sha256": sha256(ROOT / "docs" / name)}


def demo(runs: int, tmp: Path, load: float) -> dict:
    return {"command": "poegen " + " ".join(_quote(a) for a in DEMO),
            **timed([*DEMO, "--out"], runs, tmp, "demo.png", load)}


def clip(runs: int, tmp: Path, load: float) -> dict:
    from PIL import Image

    out = timed([*CLIP, "--video"], runs, tmp, "clip.gif", load)
    gif = Image.open(ROOT / out["image"])
    return {"command": "poegen " + " ".join(_quote(a) for a in CLIP) + " --video clip.gif", **out,
            "frames": gif.n_frames, "fps": round(1000 / gif.info["duration"], 1), "size": list(gif.size)}


def compare(tmp: Path, load: float) -> dict:
    from poegen.report import table

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("readme_figures: the report's screenshot needs chromium (make install adds Debian's)")
    t = time.perf_counter()
    out = tmp / "compare"
    printed = poegen([*COMPARE, "--out", str(out)], cwd=tmp).stdout
    seconds = time.perf_counter() - t
    summary = json.loads((out / "summary.json").read_text())["summary"]
    text = table(summary)
    assert text in printed, "the table printed differs from today's report.table of summary.json"
    shot = ROOT / "docs" / "compare_report.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", f"--screenshot={shot}",
                    f"file://{out / 'report.html'}"], check=True, timeout=300, capture_output=True)
    return {"command": "poegen " + " ".join(_quote(a) for a in COMPARE), "summary": summary, "table": text,
            "wall_seconds": round(seconds), "load_before": load, "image": "docs/compare_report.png",
            "sha256": sha256(shot)}


def _quote(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("demo", "clip", "compare"), default=None)
    ap.add_argument("--runs", type=int, default=3, help="demo runs (median)")
    ap.add_argument("--wait", type=float, default=300, metavar="S",
                    help="before each part, wait up to S seconds for a 1-minute load average below 1 (recorded)")
    args = ap.parse_args()
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for part, make in (("demo", lambda load: demo(args.runs, tmp, load)),
                           ("clip", lambda load: clip(args.runs, tmp, load)),
                           ("compare", lambda load: compare(tmp, load))):
            if args.only in (None, part):
                load, t = wait_idle(args.wait), time.perf_counter()
                figures[part] = make(load)
                figures[part].update(machine=machine(), commit=commit.strip(), date=time.strftime("%Y-%m-%d"))
                print(f"{part}: {time.perf_counter() - t:.0f} s", flush=True)
    FIGURES.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {FIGURES.relative_to(ROOT)}; demo {figures.get('demo', {}).get('seconds')} s median")
    if "compare" in figures:
        print(figures["compare"]["table"])


if __name__ == "__main__":
    main()
