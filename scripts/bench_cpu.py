"""How fast poegen is on this machine's CPU, as whole processes (issue 21): the dtype micro-probe, what `auto` picks,
import and `--help` times, and the default `poegen generate` idle and beside one busy process.

    python scripts/bench_cpu.py            # about 2 minutes on 2 cores
    python scripts/bench_cpu.py --runs 5 --prompt "a red ball on a blue box"

Run it alone: anything else of yours running makes the idle figures wrong. Prints key=value lines; wall times are
min/median/max over --runs runs after one warm-up.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

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
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # let auto pick, as a user's shell does
    env["HF_HUB_OFFLINE"] = "1"
    print(f"cpu={cpu_model()!r} cores={len(os.sched_getaffinity(0))} capability={torch.backends.cpu.get_cpu_capability()}")
    fp32, bf16 = conv_probe(torch.float32), conv_probe(torch.bfloat16)
    print(f"conv_probe_ms fp32={fp32:.1f} bf16={bf16:.1f} bf16_over_fp32={bf16 / fp32:.2f}")
    dtype, why = pick_dtype("auto", "cpu")
    print(f"auto_dtype={str(dtype).replace('torch.', '')} ({why})")
    print(f"auto_threads_idle={pick_threads().threads}")
    print(fmt("import_torch", walls([sys.executable, "-c", "import torch"], args.runs, env)))
    print(fmt("help", walls([sys.executable, "-m", "poegen", "--help"], args.runs, env)))
    with tempfile.TemporaryDirectory() as tmp:
        gen = [sys.executable, "-m", "poegen", "generate", args.prompt, "-q", "--out", os.path.join(tmp, "b.png")]
        idle = walls(gen, args.runs, env)
        print(fmt("generate_idle", idle))
        spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(1.0)
            print(f"auto_threads_busy={pick_threads().threads}")
            busy = walls(gen, args.runs, env)
        finally:
            spin.kill()
        print(fmt("generate_busy", busy))
        print(f"busy_over_idle={statistics.median(busy) / statistics.median(idle):.2f}")


if __name__ == "__main__":
    main()
