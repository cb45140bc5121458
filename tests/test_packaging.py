"""The package as a user installs it: the wheel carries the code, the shipped weights and the license, and
`poegen generate` runs from it in a fresh environment, away from this checkout."""
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_makefile_and_pyproject_agree_on_torch_and_the_extras():
    from packaging.requirements import Requirement

    project = _pyproject()["project"]
    (torch,) = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "torch"]
    pins = re.findall(r"torch==([\w.+]+)", (ROOT / "Makefile").read_text())
    assert pins, "the Makefile no longer pins torch"
    for pin in pins:
        assert torch.specifier.contains(pin), f"Makefile's torch=={pin} is outside pyproject's {torch}"
    # `make test` installs the video extra, so the .mp4 test runs
    assert "'.[test,video]'" in (ROOT / "Makefile").read_text()
    assert {"test", "video"} <= set(project["optional-dependencies"])
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().split()[:3] == ["Apache", "License", "Version"]


def test_the_wheel_ships_the_weights_and_generates_from_a_fresh_venv(tmp_path):
    """Build the wheel from a copy of the sources (nothing written into the checkout), check it carries every file
    that package-data names and the license, install it alone into a new venv that borrows this one's
    dependencies (torch is not installed twice), and run `poegen generate` from a folder outside the checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "poegen", src / "poegen", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist)], check=True, cwd=tmp_path)
    (wheel,) = dist.glob("poegen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    shipped = set()  # every file the package-data globs name, as the checkout has them
    for package, globs in _pyproject()["tool"]["setuptools"]["package-data"].items():
        folder = Path(*package.split("."))
        for pattern in globs:
            shipped |= {str(p.relative_to(ROOT)) for p in (ROOT / folder).glob(pattern)}
    assert any(n.endswith(".safetensors") for n in shipped), "no shipped weights found in the checkout"
    weights = {str(p.relative_to(ROOT)) for p in (ROOT / "poegen" / "experts" / "shapes" / "weights").iterdir()
               if p.is_file()}
    assert weights <= shipped, f"not named by package-data: {sorted(weights - shipped)}"
    assert shipped <= names, f"missing from the wheel: {sorted(shipped - names)}"
    assert "poegen/cli.py" in names and "poegen/evaluate.py" in names
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(meta).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # this venv's packages, appended after the new venv's own: its .pth files (the editable install of this
    # checkout) are not read, so `poegen` can only come from the wheel
    import torch
    (site / "borrowed.pth").write_text(str(Path(torch.__file__).parent.parent) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    where = subprocess.run([str(python), "-c", "import poegen; print(poegen.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(site), where
    run = subprocess.run([str(venv / "bin" / "poegen"), "generate", "a red ball", "--particles", "2", "--steps", "4",
                          "--threads", "1", "-q", "--out", "x.png"], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (work / "x.png").is_file() and "wrote x.png" in run.stdout
