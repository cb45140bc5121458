"""One cache of loaded models, keyed by (kind, path, dtype, device): every expert and question on a checkpoint
shares one backbone, whichever config entry, region or frame asked for it."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, Dict, Hashable, Tuple

log = logging.getLogger("poegen.experts.cache")

_MODELS: Dict[Tuple, object] = {}


def _path_key(path: str) -> str:
    p = Path(path)
    return str(p.resolve()) if p.exists() else str(path)


def cached(kind: str, path: str, dtype, device, load: Callable[[], object], extra: Hashable = None):
    """``load()`` the first time (kind, path, dtype, device[, extra]) is asked for, the same object afterwards."""
    key = (kind, _path_key(path), str(dtype), str(device or "cpu"), extra)
    if key not in _MODELS:
        log.info("loading %s from %s", kind, path)
        _MODELS[key] = load()
    return _MODELS[key]


def digest(*tensors) -> str:
    """A key for conditioning tensors (an image, a mask, a control video): their shapes, dtypes and values."""
    h = hashlib.sha1()
    for t in tensors:
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def torch_dtype(value):
    """A torch dtype, or None, from a dtype or its name as a config gives it (float32, float16, bfloat16)."""
    import torch

    if value is None or isinstance(value, torch.dtype):
        return value
    if value not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"torch_dtype {value!r} is not one of float32, float16, bfloat16")
    return getattr(torch, value)


def clear():
    """Forget every loaded model (their memory is freed once no expert holds them)."""
    _MODELS.clear()
