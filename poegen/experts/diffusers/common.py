"""Helpers shared by every diffusers backbone: finding a checkpoint, tokenising and encoding a prompt once, and
stacking several experts' rows into one micro-batched backbone call."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ...hardware import in_chunks


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


REFETCH = "re-download the model (huggingface-cli download ID --local-dir FOLDER) or save it again with save_pretrained"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "vocab.txt")
_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def _one_line(e: BaseException, limit: int = 200) -> str:
    return " ".join(str(e).split())[:limit] or type(e).__name__


def read_config(path: Path, required: bool = True) -> dict:
    """A model folder's JSON config as a dict ({} when absent and not required); a missing or broken file is a
    short error naming it and the fix."""
    if not path.exists():
        if not required:
            return {}
        raise FileNotFoundError(f"{path} is missing (looked for it in {path.parent}); {REFETCH}")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({_one_line(e, 120)}); fix it or {REFETCH}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of fields, got {type(data).__name__}; {REFETCH}")
    return data


def _check_fields(cls, config: dict, path: Path):
    """A diffusers config's unknown ``_class_name``, or a field given as text where the class's default is not
    text (or the other way round), as an error naming the field; other mistakes are left to the library."""
    import inspect
    import diffusers

    name = config.get("_class_name")
    if name is not None and not (isinstance(name, str) and hasattr(diffusers, name)):
        raise ValueError(f"{path}: _class_name {str(name)[:60]!r} is no diffusers class; this folder should hold a "
                         f"{cls.__name__}: {REFETCH}")
    for field, p in inspect.signature(cls.__init__).parameters.items():
        if field in config and p.default not in (None, inspect.Parameter.empty) and config[field] is not None \
                and isinstance(config[field], str) != isinstance(p.default, str):
            want = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(
                type(p.default), "a list")
            raise ValueError(f"{path}: field {field!r} is {str(config[field])[:40]!r}, where {cls.__name__} wants "
                             f"{want} such as {repr(p.default)[:60]}; correct it or {REFETCH}")


def _weights(folder: Path):
    """The weight files from_pretrained reads by default: no variant infix (model.fp16.safetensors is skipped)."""
    return [f for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if f.name.count(".") == 1]


def _weight_bytes(files, dtype) -> int:
    """Bytes of the safetensors ``files``' tensors once loaded (floating ones in ``dtype`` when given), read from
    their headers; 0 for a file whose header cannot be read (loading it will say why)."""
    import struct

    total = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
            for k, t in header.items():
                if k != "__metadata__":
                    size = dtype.itemsize if dtype is not None and t["dtype"][0] in "FB" else _BYTES.get(t["dtype"], 1)
                    total += size * math.prod(t["shape"])
        except Exception:
            continue
    return total


def _size(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GB" if n >= 2 ** 30 / 10 else f"{n / 2 ** 20:.0f} MB"


def _check_fits(cls, folder: Path, dtype):
    """Refuse, before loading, weights that would not fit in the host memory this process may still take."""
    from ...memory import available

    need = _weight_bytes([f for f in _weights(folder) if f.suffix == ".safetensors"], dtype)
    free, note = available()
    if need > free:
        small = dtype is not None and dtype.itemsize <= 2
        raise ValueError(f"{folder}: {cls.__name__} needs about {_size(need)} to load "
                         f"({str(dtype or 'as stored').replace('torch.', '')}) and {_size(free)} is available"
                         f"{note}; " + ("free memory or use a smaller model" if small else
                                        "load it in bfloat16 (--dtype bfloat16, or options.torch_dtype in a config) "
                                        "or free memory"))


def _diagnose(e: Exception, folder: Path, config: Optional[Path]) -> Optional[Exception]:
    """A clear error for a failed from_pretrained: a damaged or missing weight file, else a config field; None
    when the folder's files look sound (the library's own error stands)."""
    import zipfile
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception as err:
            return OSError(f"{f} is damaged or incomplete ({_one_line(err, 120)}); {REFETCH}")
    for f in sorted(folder.glob("*.bin")):
        if not zipfile.is_zipfile(f):
            return OSError(f"{f} is damaged or incomplete (not a whole torch archive); {REFETCH}")
    for index in folder.glob("*.index.json"):
        shards = set(read_config(index).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (folder / str(s)).exists())
        if missing:
            return FileNotFoundError(f"{folder / missing[0]} is missing ({index.name} lists it); {REFETCH}")
    if config is None:
        return None
    if config.name == "config.json" and not _weights(folder):
        return FileNotFoundError(f"no weights in {folder} (looked for *.safetensors and *.bin); {REFETCH}")
    if "mismatch" in str(e).lower():
        return ValueError(f"the weights in {folder} do not have the shapes {config} describes (the config was "
                          f"edited or belongs to another model); {REFETCH}")
    if isinstance(e, (ValueError, TypeError)) or "Validation" in type(e).__name__:
        return ValueError(f"{config}: {_one_line(e)}; correct that field or {REFETCH}")
    return None


def load_pretrained(cls, root: str, subfolder: Optional[str] = None, **kwargs):
    """``cls.from_pretrained(root, subfolder=subfolder, **kwargs)`` with the folder checked first (its config,
    tokenizer files, weights against free memory) and a failure named by the file at fault and the fix."""
    folder = Path(root) / subfolder if subfolder else Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing: the {cls.__name__} is looked for there; {REFETCH}")
    name, config = cls.__name__, None
    if "ImageProcessor" in name:
        if not (folder / "preprocessor_config.json").exists():
            raise FileNotFoundError(f"no preprocessor_config.json in {folder}; {REFETCH}")
    elif "Tokenizer" in name or "Processor" in name:
        if not any((folder / f).exists() for f in TOKENIZER_FILES):
            raise FileNotFoundError(f"no tokenizer in {folder} (looked for {', '.join(TOKENIZER_FILES)}); {REFETCH}")
    else:
        config = folder / getattr(cls, "config_name", "config.json")
        fields = read_config(config)
        if hasattr(cls, "config_name") and not name.startswith("Auto"):
            _check_fields(cls, fields, config)
        if config.name == "config.json":
            _check_fits(cls, folder, kwargs.get("torch_dtype", kwargs.get("dtype")))
    try:
        return cls.from_pretrained(root, **({"subfolder": subfolder} if subfolder else {}), **kwargs)
    except Exception as e:
        clear = _diagnose(e, folder, config)
        if clear is None:
            raise
        raise clear from e


def _prompt_ids(tokenizer, prompt: str, length: Optional[int] = None) -> Tensor:
    """(1, length) token ids of ``prompt`` padded or truncated to ``length`` (default: the tokenizer's maximum)."""
    return tokenizer([prompt], padding="max_length", max_length=length or tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _text_output(encoder, tokenizer, prompt: str, length: Optional[int] = None, **kwargs):
    """``encoder``'s output on ``prompt``'s token ids (``_prompt_ids``), sent to the encoder's device (it may
    already be on an accelerator)."""
    return encoder(_prompt_ids(tokenizer, prompt, length).to(encoder.device), **kwargs)


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
    keys = list(cond)
    return in_chunks(lambda r, tt, *c: forward(r.to(dtype), tt, **dict(zip(keys, c))).to(rows.dtype), micro_batch,
                     rows, t, *(cond[k].to(rows.device, dtype) for k in keys))
