"""Reading and writing the shapes world's shipped weights: safetensors plus a JSON config, atomically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

from torch import Tensor

WEIGHTS_DIR = Path(__file__).parent / "weights"


def write(out_dir: str | Path, stem: str, state: Dict[str, Tensor], config: dict) -> Path:
    """Write ``stem``.safetensors (via a temporary file) and ``stem``_config.json into out_dir."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)
    (out_dir / f"{stem}_config.json").write_text(json.dumps(config, indent=2))
    return path


def read(folder: str | Path | None, stem: str, what: str, script: str) -> Tuple[Dict[str, Tensor], dict, Path]:
    """(state dict, config, weights path) from folder (default: the package's weights/); a missing file
    raises FileNotFoundError saying where it looked and which script creates it."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else WEIGHTS_DIR
    wfile, cfile = folder / f"{stem}.safetensors", folder / f"{stem}_config.json"
    if not wfile.exists() or not cfile.exists():
        raise FileNotFoundError(f"{what} not found: looked for {wfile} and {cfile}; create them with {script}")
    return load_file(str(wfile)), json.loads(cfile.read_text()), wfile
