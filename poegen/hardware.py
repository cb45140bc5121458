"""What the hardware runs fast: the compute dtype and the intra-op thread count that ``auto`` picks, and why.

bf16 only where it is native (a CUDA device with bf16, or a CPU with AVX512-BF16 or AMX): emulated bf16 on an
AVX2-only CPU was measured 45x slower per convolution than fp32. Threads: never more than the free cores, since
torch's spinning threads on a core another process is using made a run 15x slower.
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


# ---- rows per forward -----------------------------------------------------------------------------------------

CPU_ROWS = 64  # 32x32 images per forward of the shapes networks on a CPU (see ``rows_per_forward``)


def rows_per_forward(device) -> Optional[int]:
    """How many rows a small network's forward takes at once on ``device`` (None: all). On a CPU a batch that
    overflows the caches runs slower per row: the shapes prior took 1.6 s for 384 rows whole and 0.96 s in chunks
    of 64 (AMD EPYC, 2 cores, AVX2); a GPU wants the whole batch."""
    import torch

    return CPU_ROWS if torch.device(device).type == "cpu" else None


def in_chunks(fn, rows: Optional[int], *tensors):
    """``fn(*tensors)`` computed over row chunks of at most ``rows`` (None: at once), concatenated."""
    import torch

    n = len(tensors[0])
    if rows is None or n <= rows:
        return fn(*tensors)
    return torch.cat([fn(*(t[i:i + rows] for t in tensors)) for i in range(0, n, rows)])


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


REPICK_AFTER_S = 10.0  # an automatic pick is reused this long (a pick samples /proc/stat for about 30 ms)


@dataclass
class _Threads:
    """What poegen did to torch's intra-op threads in this process."""
    pinned: Optional[ThreadPick] = None  # a count asked for (--threads, configure_threads(n)): never re-picked
    set_to: Optional[int] = None         # the count the last automatic pick left torch with
    pick: Optional[ThreadPick] = None    # that pick, and when it was made
    at: float = -math.inf
    left: Optional[str] = None           # why the caller's count was last left alone (logged once)


_state = _Threads()


def _thread_env() -> Optional[Tuple[str, int]]:
    """(name, count) of the environment variable torch takes its thread count from, if one is set."""
    for name in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):  # torch reads both, MKL's last
        env = os.environ.get(name, "").strip()
        if env.isdigit() and int(env) >= 1:
            return name, int(env)
    return None


def torch_default_threads() -> int:
    """The intra-op thread count torch starts a process with where neither MKL_NUM_THREADS nor OMP_NUM_THREADS is
    set: its count of physical cores, which ``torch.get_num_interop_threads`` reports until someone sets that."""
    import torch

    return torch.get_num_interop_threads()


def _callers(current: int) -> Optional[str]:
    """Why torch's current thread count is the caller's to keep, or None when poegen may pick it: a count poegen
    did not set, other than torch's own default, was set by the caller (torch.set_num_threads). A caller's count
    equal to torch's default cannot be told from it: ``configure_threads(n)`` pins any count."""
    if _state.pinned is not None:
        return f"{_state.pinned.threads} asked for with --threads or configure_threads"
    if _state.set_to is not None:
        return None if current == _state.set_to else f"changed by the caller since poegen set {_state.set_to}"
    env = _thread_env()
    if env is not None:
        return f"the environment's {env[0]}={env[1]}"
    default = torch_default_threads()
    return None if current == default else f"set by the caller (torch's default here is {default})"


def configure_threads(requested: Optional[int] = None) -> ThreadPick:
    """Set torch's intra-op threads: ``requested`` (--threads), pinned for the rest of the process; else the
    automatic ``pick_threads``, unless the caller chose the count (``_callers``). Every entry of the library
    (``samplers.sample``, ``build_product``, a comparison, the CLI) calls it, so the API runs as fast as the CLI;
    the automatic pick is redone when it is older than REPICK_AFTER_S, as other processes come and go."""
    import torch

    current = torch.get_num_threads()
    if requested is not None:
        pick = pick_threads(requested)
        if pick.threads != current:
            torch.set_num_threads(pick.threads)
        _state.pinned = pick
        log.info("intra-op threads: %d (%s)", pick.threads, pick.why)
        return pick
    reason = _callers(current)
    if reason is not None:
        if reason != _state.left:
            log.info("intra-op threads: %d left as they are (%s)", current, reason)
            _state.left = reason
        return ThreadPick(current, reason)
    now = time.monotonic()
    if _state.set_to == current and now - _state.at < REPICK_AFTER_S:
        return _state.pick
    pick = pick_threads()
    if pick.threads != current:
        torch.set_num_threads(pick.threads)
    first = _state.set_to is None
    _state.set_to, _state.pick, _state.at = pick.threads, pick, now
    log.log(logging.INFO if first or pick.threads != current else logging.DEBUG, "intra-op threads: %d (%s)",
            pick.threads, pick.why)
    return pick
