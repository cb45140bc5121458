"""Keeping a run within a memory cap (``--max-memory GB``): micro-batches sized by measuring one backbone call,
and, on an accelerator, idle models moved off it between uses with accelerate's offload hooks.

Memory is torch.cuda's allocated bytes on a GPU, and the process's resident set on a CPU (Linux: read from
/proc/self/status, its peak reset through /proc/self/clear_refs).
"""
from __future__ import annotations

import ctypes
import logging
import math
import re
from typing import Callable, Dict, List, Optional

import torch

log = logging.getLogger("poegen.memory")
GB = 1024 ** 3
# copies of a particle the loop holds at once (state, cached x0_hat and score, proposal and resampling temporaries):
# measured as about 30 on the shapes-sized UNet with 160 particles
STATE_COPIES = 32


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def _trim():
    """Hand freed heap memory back to the OS, so that the resident set counts live memory only."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def current(device) -> int:
    """Bytes in use now: allocated on a GPU, resident on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    _trim()
    return _status("VmRSS")


def available():
    """(bytes, note) this process may still take on the host: MemAvailable, or less under a soft address-space
    limit (``ulimit -v``), whose note then says so; (inf, "") where neither can be read."""
    import resource

    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        free = float("inf")
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY and soft - _status("VmSize") < free:
        return max(0, soft - _status("VmSize")), f" under the address-space limit of {soft / GB:.1f} GB (ulimit -v)"
    return free, ""


def reset_peak(device):
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    _trim()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set


def peak(device) -> int:
    """Peak bytes since the last ``reset_peak``."""
    device = torch.device(device)
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _status("VmHWM")


def measure(fn: Callable[[], object], device) -> int:
    """Bytes ``fn()`` needs above what is in use before it (its peak)."""
    base = current(device)
    reset_peak(device)
    fn()
    return max(0, peak(device) - base)


def _per_row(call: Callable[[int], object], device, rows: int = 8) -> float:
    """Bytes per row of ``call(n)``: the peak of 2 * rows rows minus that of rows rows, divided by rows."""
    with torch.no_grad():
        call(rows)  # warm up (lazy buffers, kernels) before measuring
        small = measure(lambda: call(rows), device)
        large = measure(lambda: call(2 * rows), device)
    return max(large - small, 1) / rows


def _groups(items) -> List[List]:
    """``items`` grouped as the product batches them (``batch_groups``)."""
    from .product import batch_groups
    return [[items[i] for i in group] for group in batch_groups(items)]


def offload(product, device) -> List:
    """Install accelerate's CPU-offload hooks on the product's large modules (backbones, the VAE decoder, scorer
    models), chained in the order a level uses them and closed into a cycle, so that running one moves the
    previous one off ``device``. Returns the hooks."""
    from accelerate import cpu_offload_with_hook

    modules, seen = [], set()
    for obj in product.experts + [product.decode] + product.potentials:
        for m in getattr(obj, "offload_modules", lambda: [])():
            if id(m) not in seen:
                seen.add(id(m))
                modules.append(m)
    hooks, prev = [], None
    for m in modules:
        _, prev = cpu_offload_with_hook(m, execution_device=device, prev_module_hook=prev)
        hooks.append(prev)
    if len(hooks) > 1:
        hooks[0].hook.prev_module_hook = hooks[-1]  # the next level's first call offloads the last scorer
    log.info("offload hooks on %d modules", len(hooks))
    return hooks


def fit(product, max_memory_gb: float, num_particles: int, device="cpu") -> Dict[str, int]:
    """Set micro-batches of the product's backbone groups, its decoder and its scorer groups so that a level of
    ``num_particles`` particles stays under ``max_memory_gb``, and on a GPU offload idle models (``offload``).
    Returns the chosen micro-batch per group; a cap below what the models alone need is refused."""
    device = torch.device(device)
    if device.type == "cuda":
        offload(product, device)
    cap = max_memory_gb * GB
    shape = product.shape
    x = torch.randn(16, *shape, device=device)
    sigma = torch.tensor(1.0, device=device)
    chosen: Dict[str, int] = {}

    state = STATE_COPIES * num_particles * math.prod(shape) * 4  # the particles' own tensors, float32

    def budget(per_row: float, what: str) -> int:
        free = cap - current(device) - state
        if free <= per_row:
            raise ValueError(f"--max-memory {max_memory_gb:g} GB: the models use {current(device) / GB:.2f} GB and "
                             f"{num_particles} particles {state / GB:.2f} GB, leaving no room for {what}; raise the "
                             "cap, use fewer particles, or load the models with torch_dtype: bfloat16")
        return max(1, int(0.6 * free / per_row))  # the probe reads per-row cost up to 25% low; keep a margin

    for group in _groups(product.experts):
        if not hasattr(group[0], "micro_batch"):
            continue
        E = len(group)
        for e in group:
            e.micro_batch = None
        per_row = _per_row(lambda n: type(group[0]).denoise_batch(group, x[:n], sigma), device) / E
        mb = min(budget(per_row, group[0].name), E * num_particles)
        for e in group:
            e.micro_batch = mb
        chosen[group[0].name] = mb
    images = x
    if product.decode is not None:
        decode = product.decode
        if hasattr(decode, "micro_batch"):
            decode.micro_batch = None
            per_row = _per_row(lambda n: decode(x[:n]), device)
            decode.micro_batch = min(budget(per_row, "the VAE decode"), num_particles)
            chosen["decode"] = decode.micro_batch
        with torch.no_grad():
            images = decode(x[:8])
    for group in _groups(product.potentials):
        if not hasattr(group[0], "micro_batch") or not hasattr(group[0], "rows_per_question"):
            continue
        K = len(group)
        for r in group:
            r.micro_batch = None
        batch = type(group[0]).log_potential_batch if K > 1 else (lambda rs, im: rs[0].log_potential(im))
        probe = images.repeat(2, *[1] * (images.dim() - 1))
        per_row = _per_row(lambda n: batch(group, probe[:n]), device) / (K if group[0].rows_per_question else 1)
        mb = min(budget(per_row, group[0].name), K * num_particles)
        for r in group:
            r.micro_batch = mb
        chosen[group[0].name] = mb
    log.info("micro-batches under %.2f GB: %s", max_memory_gb, chosen)
    return chosen
