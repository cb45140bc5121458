"""The one check of user-given mappings (scene specs, batch jobs, sampler options): short errors that
name the place, the unknown or missing field, and what is allowed."""
from __future__ import annotations

from typing import Any, Dict, Iterable


def check_keys(d: Any, where: str, allowed: Iterable[str], required: Iterable[str] = ()) -> Dict:
    """``d`` itself when it is a mapping whose keys are all allowed and include every required one."""
    allowed = tuple(allowed)
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping with keys {', '.join(allowed)}, got {type(d).__name__}")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{where}: missing required field(s) {', '.join(missing)}")
    return d


def read_file(path, what: str):
    """The parsed content of a .json file, or else a YAML one (safe_load: no code runs); a missing file or a
    parse error (with its line) is a short error naming ``what`` and the path."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        if path.suffix.lower() == ".json":
            return json.loads(path.read_text())
        import yaml
        return yaml.safe_load(path.read_text())
    except Exception as e:  # json and yaml errors carry the line number
        raise ValueError(f"{path}: cannot parse: {e}") from None
