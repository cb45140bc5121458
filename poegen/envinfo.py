"""`poegen env`: what a bug report needs, as lines of text (versions, device, CPU, the auto picks, model caches)."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import List

PACKAGES = ("poegen", "torch", "diffusers", "transformers", "accelerate", "pybullet", "numpy", "pillow", "safetensors")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform's guess."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor() or "unknown"


def hub_cache() -> Path:
    """Where huggingface_hub keeps downloaded models (HF_HUB_CACHE, HF_HOME/hub or ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def env_lines(device: str = "cpu") -> List[str]:
    """The report, a fact a line."""
    import torch

    from .experts.shapes.weights_io import WEIGHTS_DIR
    from .hardware import cpu_flags, pick_dtype, pick_threads

    flags = set(cpu_flags())
    lines = [f"python {sys.version.split()[0]} on {platform.platform()}"]
    lines += [f"{name} {_version(name)}" for name in PACKAGES]
    lines.append(f"cpu: {cpu_model()}; {os.cpu_count()} logical CPUs; torch capability "
                 f"{torch.backends.cpu.get_cpu_capability()}; flags: "
                 + (", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags)
                    or "none of avx2/avx512/amx"))
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    lines.append("cuda: " + (", ".join(cuda) if cuda else "none"))
    try:
        dtype, why = pick_dtype("auto", device)
        lines.append(f"dtype auto on {device}: {str(dtype).replace('torch.', '')} ({why})")
    except (RuntimeError, ValueError) as e:
        lines.append(f"dtype auto on {device}: cannot tell ({e})")
    pick = pick_threads()
    lines.append(f"threads auto: {pick.threads} ({pick.why}); torch's own default here: {torch.get_num_threads()}")
    lines.append(f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!s}")
    cache = hub_cache()
    models = sorted(p.name[len("models--"):].replace("--", "/") for p in cache.glob("models--*")) if cache.is_dir() else []
    lines.append(f"model cache {cache}: " + (", ".join(models) if models else "no models"))
    shipped = [f"{p.name} ({p.stat().st_size / 1e6:.1f} MB)" for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))]
    lines.append(f"shapes world weights in {WEIGHTS_DIR}: " + (", ".join(shipped) if shipped else
                                                                  "missing (see scripts/train_shapes_prior.py)"))
    return lines
