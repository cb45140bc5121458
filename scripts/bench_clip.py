"""What a shapes-world clip costs, and how the cost grows with its frames: `poegen generate PROMPT --video` as whole
processes at --frames 4, 8, 16 (the default) and 32, the default particles and steps, runs in turn.

    python scripts/bench_clip.py                # about 6 minutes on 2 cores
    python scripts/bench_clip.py --frames 16 --runs 5

Run it alone: anything else of yours running makes the figures wrong. Prints per frame count the median wall
seconds of the whole process, the sampling seconds the process logs (``wrote ... in S s``), those per frame, and the
NFE per expert; then the CPU."""
import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from poegen.envinfo import cpu_model


def one(prompt: str, frames: int, out: Path):
    """(wall seconds, seconds the command reports, NFE per expert) of one `poegen generate --video` process."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "poegen", "generate", prompt, "--video", str(out), "--frames",
                           str(frames)], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    said = re.search(r"in ([\d.]+) s", done.stdout)
    meta = json.loads(Image.open(out).info["comment"])
    return wall, float(said.group(1)) if said else float("nan"), max(
        v for k, v in meta["nfe"].items() if k in meta["experts"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt", default="a red ball rolls off a blue box")
    ap.add_argument("--frames", default="4,8,16,32", help="comma-separated frame counts")
    ap.add_argument("--runs", type=int, default=3, help="runs of each frame count, after one warm-up")
    args = ap.parse_args()
    counts = [int(f) for f in args.frames.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clip.gif"
        one(args.prompt, counts[0], out)  # warm-up: caches, pybullet
        walls = {f: [] for f in counts}
        said = {f: [] for f in counts}
        nfe = {}
        for _ in range(args.runs):
            for f in counts:
                w, s, nfe[f] = one(args.prompt, f, out)
                walls[f].append(w)
                said[f].append(s)
    for f in counts:
        w, s = statistics.median(walls[f]), statistics.median(said[f])
        print(f"frames={f:3d} wall_s={w:6.1f} reported_s={s:6.1f} per_frame_s={w / f:5.2f} nfe_per_expert={nfe[f]}",
              flush=True)
    print(f"cpu={cpu_model()!r} runs={args.runs} prompt={args.prompt!r} at={time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
