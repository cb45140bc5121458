"""What anytime sampling saves on easy prompts, as whole processes: `poegen generate PROMPT` with the default budget
(rounds until certified) against `--budget fixed` (one run of the default particles), on ShapesEval's tier A
held-out prompts (the first of each category, prompt seed 0), the two run in turn, prompt by prompt.

    python scripts/bench_anytime.py             # about 3 minutes on 2 cores
    python scripts/bench_anytime.py --runs 5 --per-category 2

Run it alone: anything else of yours running makes the figures wrong. Prints one line per prompt (median wall
seconds of each budget, their ratio, the NFE each spent and whether the image is certified) and then
median_ratio (the median over prompts of anytime / fixed) and ratio_of_medians (the median anytime wall over the
median fixed wall, all prompts and runs together)."""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from poegen.envinfo import cpu_model
from poegen.experts.shapes import shapeseval


def one(prompt: str, budget: str, out: Path):
    """(wall seconds, NFE per expert, certified) of one `poegen generate` process."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "poegen", "generate", prompt, "--out", str(out), "--budget", budget, "-q"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    meta = json.loads(Image.open(out).text["poegen"])
    return wall, max(v for k, v in meta["nfe"].items() if k in meta["experts"]), meta["certified"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each budget per prompt, after one warm-up")
    ap.add_argument("--per-category", type=int, default=1)
    args = ap.parse_args()
    prompts = [it.prompt for it in shapeseval.items("A", args.per_category, 0)]
    print(f"cpu={cpu_model()!r} prompts={len(prompts)} runs={args.runs}")
    walls = {"anytime": [], "fixed": []}
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        one(prompts[0], "anytime", Path(tmp) / "warm.png")
        for i, prompt in enumerate(prompts):
            got = {"anytime": [], "fixed": []}
            for _ in range(args.runs):
                for budget in got:
                    got[budget].append(one(prompt, budget, Path(tmp) / f"{i}_{budget}.png"))
            med = {b: statistics.median(w for w, _, _ in v) for b, v in got.items()}
            for b, v in got.items():
                walls[b] += [w for w, _, _ in v]
            ratios.append(med["anytime"] / med["fixed"])
            print(f"{prompt!r}: anytime {med['anytime']:.2f} s (NFE {got['anytime'][0][1]}, certified "
                  f"{got['anytime'][0][2]}) fixed {med['fixed']:.2f} s (NFE {got['fixed'][0][1]}) "
                  f"ratio {ratios[-1]:.2f}", flush=True)
    print(f"median_ratio={statistics.median(ratios):.2f} ratio_of_medians="
          f"{statistics.median(walls['anytime']) / statistics.median(walls['fixed']):.2f} "
          f"anytime_median_s={statistics.median(walls['anytime']):.2f} "
          f"fixed_median_s={statistics.median(walls['fixed']):.2f}")


if __name__ == "__main__":
    main()
