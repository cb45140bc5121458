"""What the hardware runs fast: the compute dtype and the intra-op thread count that ``auto`` picks, and why.

bf16 only where it is native (a CUDA device with bf16, or a CPU with AVX512-BF16 or AMX): emulated bf16 on an
AVX2-only CPU was measured 45x slower per convolution than fp32. Threads: never more than the free cores, since
torch's spinning threads on a core another process is using made a run 15x slower (shared/ENVIRONMENT.md).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Tuple

log = logging.getLogger("poegen.hardware")
DTYPES = ("auto", "float32", "bfloat16")


def cpu_flags() -> List[str]:
    """The CPU's feature flags from /proc/cpuinfo ([] where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


def cpu_bf16() -> Tuple[bool, str]:
    """(native, why) for bf16 matrix arithmetic on this CPU: torch's AVX512-BF16 and AMX probes, else the flags."""
    import torch  # here and below, not at the top: the CLI reads DTYPES without loading torch

    probes = {"AVX512-BF16": getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              "AMX": getattr(torch.cpu, "_is_amx_tile_supported", None)}
    if all(p is None for p in probes.values()):  # an older torch: read the flags instead
        flags = set(cpu_flags())
        probes = {"AVX512-BF16": lambda: "avx512_bf16" in flags, "AMX": lambda: "amx_bf16" in flags}
    have = [name for name, probe in probes.items() if probe is not None and probe()]
    capability = torch.backends.cpu.get_cpu_capability()
    if have:
        return True, f"the CPU has {' and '.join(have)} (torch capability {capability})"
    return False, f"the CPU has neither AVX512-BF16 nor AMX (torch capability {capability}): bf16 would be emulated"


def native_bf16(device) -> Tuple[bool, str]:
    """(native, why) for bf16 on ``device``."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, f"CUDA device {'with' if ok else 'without'} native bf16"
    if device.type == "cpu":
        return cpu_bf16()
    return False, f"{device.type}: bf16 not assumed native"


def check_dtype(value, where: str = "dtype") -> str:
    """A dtype name as a job, a config or --dtype gives it: one of DTYPES."""
    if value not in DTYPES:
        raise ValueError(f"{where} {str(value)[:40]!r}: expected one of {', '.join(DTYPES)} (auto picks bf16 only "
                         "where the hardware has it natively)")
    return value


@lru_cache(maxsize=None)
def _native(device_type: str, index: Optional[int]) -> Tuple[bool, str]:
    """``native_bf16`` probed once per device."""
    import torch

    native, why = native_bf16(torch.device(device_type, index) if index is not None else device_type)
    log.info("bf16 on %s: %s (%s)", device_type, "native" if native else "not native", why)
    return native, why


def pick_dtype(requested: str = "auto", device="cpu"):
    """(torch dtype, why) for ``requested`` (auto, float32, bfloat16) on ``device``; bf16 asked for where it is not
    native is warned about once per device (an AVX2 CPU ran 45x slower)."""
    import torch

    check_dtype(requested)
    device = torch.device(device)
    native, why = _native(device.type, device.index)
    if requested == "auto":
        return (torch.bfloat16 if native else torch.float32), why
    if requested == "bfloat16" and not native and device.type not in _warned:
        _warned.add(device.type)
        log.warning("--dtype bfloat16 on %s: %s, so expect it many times slower than float32 (auto picks float32 "
                    "here)", device.type, why)
    return getattr(torch, requested), "asked for"


_warned: set = set()


def autocast(requested: str, device):
    """A ``torch.autocast`` context computing at ``pick_dtype(requested, device)`` (off where that is float32)."""
    import torch

    device = torch.device(device)
    half = pick_dtype(requested, device)[0]
    return torch.autocast(device.type, dtype=half, enabled=half != torch.float32)


# ---- threads ------------------------------------------------------------------------------------------------

def cgroup_cpus() -> Optional[float]:
    """CPUs allowed by the cgroup's quota (v2 cpu.max or v1 cfs_quota/period), None when unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as g:
            quota, period = int(f.read()), int(g.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _running_elsewhere() -> Optional[int]:
    """Threads running right now outside this process: /proc/stat's procs_running minus our own running ones."""
    try:
        with open("/proc/stat") as f:
            running = next(int(line.split()[1]) for line in f if line.startswith("procs_running"))
        ours = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    ours += f.read().rsplit(")", 1)[1].split()[0] == "R"
            except OSError:
                pass
        return max(0, running - max(ours, 1))
    except (OSError, StopIteration, ValueError):
        return None


def busy_elsewhere(samples: int = 8, interval: float = 0.004) -> Optional[float]:
    """Mean number of threads of other processes running, over ``samples`` looks ``interval`` s apart."""
    seen = []
    for i in range(samples):
        n = _running_elsewhere()
        if n is None:
            return None
        seen.append(n)
        if i + 1 < samples:
            time.sleep(interval)
    return sum(seen) / len(seen)


@dataclass
class ThreadPick:
    threads: int
    why: str


def pick_threads(requested: Optional[int] = None) -> ThreadPick:
    """Intra-op threads for this process: ``requested`` (--threads), else OMP_NUM_THREADS, else the cores this
    process may use (affinity, cgroup quota, its share of LOCAL_WORLD_SIZE processes) less those other processes
    keep busy right now."""
    if requested is not None:
        if not isinstance(requested, int) or isinstance(requested, bool) or requested < 1:
            raise ValueError(f"threads {requested!r}: expected a whole number >= 1")
        return ThreadPick(requested, "asked for")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return ThreadPick(int(env), "OMP_NUM_THREADS")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    why = [f"{cores} cores in this process's affinity"]
    quota = cgroup_cpus()
    if quota is not None and quota < cores:
        cores = max(1, math.floor(quota))
        why.append(f"cgroup quota of {quota:g} CPUs")
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    if local.isdigit() and int(local) > 1:
        cores = max(1, cores // int(local))
        why.append(f"shared by LOCAL_WORLD_SIZE={local} processes")
    busy = busy_elsewhere()
    if busy is not None:
        taken = min(cores - 1, round(busy))
        if taken > 0:
            cores -= taken
            why.append(f"{busy:.1f} busy with other processes")
    return ThreadPick(cores, ", ".join(why))


_configured: Optional[ThreadPick] = None


def configure_threads(requested: Optional[int] = None) -> ThreadPick:
    """Set torch's intra-op threads from ``pick_threads``; the automatic pick is made once per process."""
    import torch

    global _configured
    if requested is None and _configured is not None:
        return _configured
    pick = pick_threads(requested)
    if pick.threads != torch.get_num_threads():
        torch.set_num_threads(pick.threads)
    log.info("intra-op threads: %d (%s)", pick.threads, pick.why)
    if requested is None:
        _configured = pick
    return pick
