"""How fast poegen is on this machine's CPU, as whole processes: the dtype micro-probe, what `auto` picks, import
and `--help` times, the default `poegen generate` idle and beside one busy process, and the same for the Python API
(the layout example through poegen.build_product and poegen.sample with a job's defaults, as `poegen generate
--layout` runs it).

    python scripts/bench_cpu.py            # about 4 minutes on 2 cores
    python scripts/bench_cpu.py --runs 5 --prompt "a red ball on a blue box"
    python scripts/bench_cpu.py --baseline # also the API beside the busy process at torch's own thread count

Run it alone: anything else of yours running makes the idle figures wrong. Prints key=value lines; wall times are
min/median/max over --runs runs after one warm-up. busy_over_idle and api_busy_over_idle are the ratios of the
medians: near 1 when the runs use only the cores the busy process leaves free.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from poegen.envinfo import cpu_model
from poegen.hardware import pick_dtype, pick_threads


def walls(cmd, runs: int, env=None):
    """Wall seconds of ``runs`` runs of ``cmd`` after one warm-up (each must succeed)."""
    out = []
    for i in range(runs + 1):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        if i:
            out.append(time.perf_counter() - t)
    return out


LAYOUT = Path(__file__).resolve().parent.parent / "examples" / "layout_two_objects.yaml"
# the Python API as a user calls it: no thread setting of its own, a job's defaults (poegen.defaults)
API = ("import logging, sys, torch, poegen\n"
       "logging.basicConfig(level=logging.ERROR)  # the layout's unused background prompt is not news here\n"
       "from poegen import defaults\n"
       "product = poegen.build_product(poegen.load_layout(sys.argv[1]))\n"
       "poegen.sample(product, select=defaults.SELECT, generator=torch.Generator().manual_seed(defaults.SEED))\n")


def lscpu_model() -> str:
    """lscpu's "Model name" ("" where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")


def fmt(name: str, ts) -> str:
    return f"{name}_s min={min(ts):.2f} median={statistics.median(ts):.2f} max={max(ts):.2f}"


def conv_probe(dtype, repeats: int = 5) -> float:
    """Median ms of one Conv2d forward of the shapes prior's size (48 x 64 x 32 x 32, 3x3) under ``dtype``."""
    conv, x = torch.nn.Conv2d(64, 64, 3, padding=1), torch.randn(48, 64, 32, 32)
    ts = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        for i in range(repeats + 1):
            t = time.perf_counter()
            conv(x)
            if i:
                ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt", default="a blue wedge and a yellow box")
    ap.add_argument("--baseline", action="store_true",
                    help="also time the API beside the busy process with torch's own thread count (OMP_NUM_THREADS "
                         "set to the cores: what the API ran with before it picked its threads)")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # let auto pick, as a user's shell does
    env["HF_HUB_OFFLINE"] = "1"
    print(f"cpu={cpu_model()!r} cores={len(os.sched_getaffinity(0))} capability={torch.backends.cpu.get_cpu_capability()}")
    print(f"lscpu_model={lscpu_model()!r}")
    fp32, bf16 = conv_probe(torch.float32), conv_probe(torch.bfloat16)
    print(f"conv_probe_ms fp32={fp32:.1f} bf16={bf16:.1f} bf16_over_fp32={bf16 / fp32:.2f}")
    dtype, why = pick_dtype("auto", "cpu")
    print(f"auto_dtype={str(dtype).replace('torch.', '')} ({why})")
    print(f"auto_threads_idle={pick_threads().threads}")
    print(fmt("import_torch", walls([sys.executable, "-c", "import torch"], args.runs, env)))
    print(fmt("help", walls([sys.executable, "-m", "poegen", "--help"], args.runs, env)))
    api = [sys.executable, "-c", API, str(LAYOUT)]
    with tempfile.TemporaryDirectory() as tmp:
        gen = [sys.executable, "-m", "poegen", "generate", args.prompt, "-q", "--out", os.path.join(tmp, "b.png")]
        idle = walls(gen, args.runs, env)
        print(fmt("generate_idle", idle))
        api_idle = walls(api, args.runs, env)
        print(fmt("api_idle", api_idle))
        spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(1.0)
            print(f"auto_threads_busy={pick_threads().threads}")
            busy = walls(gen, args.runs, env)
            api_busy = walls(api, args.runs, env)
            if args.baseline:
                cores = str(len(os.sched_getaffinity(0)))
                api_torch = walls(api, args.runs, {**env, "OMP_NUM_THREADS": cores})
        finally:
            spin.kill()
        print(fmt("generate_busy", busy))
        print(fmt("api_busy", api_busy))
        if args.baseline:
            print(fmt("api_busy_torch_threads", api_torch))
        print(f"api_idle_s={statistics.median(api_idle):.2f} api_busy_s={statistics.median(api_busy):.2f}")
        print(f"busy_over_idle={statistics.median(busy) / statistics.median(idle):.2f}")
        print(f"api_busy_over_idle={statistics.median(api_busy) / statistics.median(api_idle):.2f}")
        if args.baseline:
            print(f"api_busy_torch_threads_over_idle={statistics.median(api_torch) / statistics.median(api_idle):.2f}")


if __name__ == "__main__":
    main()
