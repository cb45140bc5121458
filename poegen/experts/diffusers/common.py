"""Helpers shared by every diffusers backbone: finding a checkpoint, tokenising and encoding a prompt once, and
stacking several experts' rows into one micro-batched backbone call."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor


def resolve(path_or_id: str) -> str:
    """A local folder, or a model id already in the local Hugging Face cache; otherwise a clear error."""
    if Path(path_or_id).exists():
        return str(path_or_id)
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(path_or_id, local_files_only=True)
    except Exception:
        if Path(path_or_id).is_absolute() or path_or_id.startswith((".", "~")) or path_or_id.count("/") != 1:
            raise FileNotFoundError(f"model folder {path_or_id!r} does not exist; pass the folder a model was "
                                    f"downloaded or saved to, or a hub id such as 'org/name'") from None
        raise FileNotFoundError(
            f"model {path_or_id!r} not found: it is neither a local folder nor in the Hugging Face cache "
            f"(HF_HOME). Fetch it first, e.g. `huggingface-cli download {path_or_id}` or "
            f"`huggingface-cli download {path_or_id} --local-dir <folder>` and pass the folder.") from None


def _prompt_ids(tokenizer, prompt: str, length: Optional[int] = None) -> Tensor:
    """(1, length) token ids of ``prompt`` padded or truncated to ``length`` (default: the tokenizer's maximum)."""
    return tokenizer([prompt], padding="max_length", max_length=length or tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def _encoded(parts: dict, prompt: str, encode):
    """``encode(prompt)``, once per prompt and loaded model."""
    if prompt not in parts["embeddings"]:
        parts["embeddings"][prompt] = encode(prompt)
    return parts["embeddings"][prompt]


def _stacked_conditioning(experts, n: int) -> dict:
    """The experts' per-row conditioning tensors for n rows each, concatenated in expert order."""
    conds = [e._conditioning(n) for e in experts]
    return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}


def _micro_batched(forward, rows: Tensor, t: Tensor, cond: dict, micro_batch: Optional[int], dtype) -> Tensor:
    """``forward(rows, t, **cond)`` in chunks of ``micro_batch`` rows (all at once when None): one backbone call
    per chunk, inputs cast to the model's dtype and outputs back to the rows' dtype."""
    mb = micro_batch or rows.shape[0]
    cond = {k: v.to(rows.device, dtype) for k, v in cond.items()}
    return torch.cat([forward(rows[i:i + mb].to(dtype), t[i:i + mb], **{k: v[i:i + mb] for k, v in cond.items()})
                      .to(rows.dtype) for i in range(0, rows.shape[0], mb)])
