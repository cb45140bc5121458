"""Every command and code block of README.md and docs/*.md runs: one test per (page, block).

The pages keep these conventions (a test below checks them):
- A fenced block's language says what it is: ```sh (shell commands) and ```python run here; ```text is output and is
  not run, nor are ```yaml and ```json (file contents). Indented blocks are not run either (formulas, printouts).
- An HTML comment on the line right before a fence marks the block: `<!-- test: MARKERS -->`, where MARKERS are
  - `slow`: runs only under `pytest -m slow` (full benchmark runs, training, real-size benchmarks);
  - `tiny-models`: a named-model block; the placeholder model folders it names (/models/sd15, /models/clip-vit-b32,
    ...; see TINY below) are replaced by tiny random-weight folders built as tests/helpers.py builds them, so the
    block runs offline in seconds (the images are noise; the point is that the commands and code work);
  - `skip REASON`: never run, only where running is impossible here (downloads from the Hub, a CUDA GPU, the test
    suite itself); the reason is required.
  `slow` and `tiny-models` combine (`<!-- test: slow tiny-models -->`).
- A shell block runs as written with `bash -e -o pipefail` (a failing command fails the test; a command meant to fail
  is written `cmd || echo ...`), a python block as a script; both in a fresh temporary folder holding links to the
  repository's examples/, scripts/ and docs/ (so written images do not litter the repository), with this Python's
  bin folder first on PATH and HF_HUB_OFFLINE=1. Nothing is added to the commands (no --threads).
- Blocks are independent: a block that needs a file (a mask, a config) writes it itself.
- Every relative link of the pages points to a file that exists (and a #fragment to a heading of that file).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python"}
NOT_RUN = {"text", "yaml", "json"}
FENCE = re.compile(r"^```([\w-]*)\s*$")
MARK = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->\s*$")
TIMEOUT = 600  # seconds for one block of the default set; slow blocks have none


def blocks(page: Path):
    """(line number, language, markers, code) of every fenced block of a page; markers from the comment before it."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        mark = MARK.match(lines[start - 1]) if start > 0 else None
        found.append((start + 1, lang, mark.group(1) if mark else "", "\n".join(lines[start + 1:j]) + "\n"))
        i = j + 1
    return found


def parse_markers(text: str):
    """{'slow': bool, 'tiny': bool, 'skip': reason or None} of a marker comment's text; unknown words raise."""
    out = {"slow": False, "tiny": False, "skip": None}
    if text.startswith("skip"):
        out["skip"] = text[len("skip"):].strip()
        if not out["skip"]:
            raise ValueError("`skip` needs a reason")
        return out
    for word in text.split():
        if word == "slow":
            out["slow"] = True
        elif word == "tiny-models":
            out["tiny"] = True
        else:
            raise ValueError(f"unknown test marker {word!r} (known: slow, tiny-models, skip REASON)")
    return out


def _cases():
    cases = []
    for page in PAGES:
        rel = page.relative_to(ROOT).as_posix()
        for n, (line, lang, marks, code) in enumerate(blocks(page)):
            if lang not in RUN:
                continue
            m = parse_markers(marks)
            marks_ = []
            if m["skip"]:
                marks_.append(pytest.mark.skip(reason=m["skip"]))
            if m["slow"]:
                marks_.append(pytest.mark.slow)
            cases.append(pytest.param(rel, line, RUN[lang], m["tiny"], code, marks=marks_,
                                      id=f"{rel}:{n}:line{line}"))
    return cases


# ---- tiny model folders for the placeholder paths -------------------------------------------------------------------

def _sd_pipeline_folder(root: Path):
    """A whole Stable Diffusion pipeline folder (model_index.json and its parts), as on the Hub: loads both through
    StableDiffusionPipeline.from_pretrained and as an `sd` kind."""
    from helpers import tiny_sd_folder
    from test_from_pipeline import sd_pipeline

    sd_pipeline(tiny_sd_folder(root / "parts")).save_pretrained(root / "pipe")
    return root / "pipe"


def _wan(kind):
    def build(root: Path):
        from test_wan import save_folders
        return save_folders(root, kinds=(kind,)) / kind
    return build


def _helper(name, *args):
    def build(root: Path):
        import helpers
        return getattr(helpers, name)(root, *args)
    return build


# placeholder path (as the pages write it) -> builder of a tiny folder of that shape
TINY = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": _sd_pipeline_folder,
    "/models/sd15-inpaint": _helper("tiny_sd_inpaint_folder"),
    "/models/sd15": _sd_pipeline_folder,
    "/models/clip-vit-b32": _helper("tiny_clip_folder"),
    "/models/pickscore": _helper("tiny_clip_folder"),
    "/models/owlv2": _helper("tiny_owlv2_folder"),
    "/models/sdxl": _helper("tiny_sdxl_folder"),
    "/models/controlnet-depth-sdxl": None,  # built on the tiny SDXL folder's UNet (below)
    "/models/sd3": _helper("tiny_sd3_folder"),
    "/models/flux-dev": _helper("tiny_flux_folder"),
    "/models/llava-1.5-7b": _helper("tiny_vlm_folder"),
    "/models/wan21-t2v-1.3b": _wan("t2v"),
}


def _pattern(placeholder):
    return re.compile(re.escape(placeholder) + r"(?![\w-]|\.\w)")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Builds the tiny folder of a placeholder on first use; returns a function code -> code with the paths replaced."""
    built = {}
    root = tmp_path_factory.mktemp("tiny-models")

    def folder(name):
        if name not in built:
            target = root / re.sub(r"\W+", "_", name).strip("_")
            if name == "/models/controlnet-depth-sdxl":
                from helpers import tiny_controlnet_folder
                built[name] = tiny_controlnet_folder(target, Path(folder("/models/sdxl")))
            else:
                builder = TINY[name]
                if builder is _sd_pipeline_folder and "sd_pipeline" in built:  # one folder for both names
                    built[name] = built["sd_pipeline"]
                else:
                    built[name] = str(builder(target))
                    if builder is _sd_pipeline_folder:
                        built["sd_pipeline"] = built[name]
        return str(built[name])

    def substitute(code):
        for name in sorted(TINY, key=len, reverse=True):  # longest first: /models/sd15-inpaint before /models/sd15
            pattern = _pattern(name)
            if pattern.search(code):
                code = pattern.sub(folder(name).replace("\\", "\\\\"), code)
        return code

    return substitute


# ---- running a block ------------------------------------------------------------------------------------------------

def _workdir(tmp_path):
    for name in ("examples", "scripts", "docs"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    return tmp_path


def _env():
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["MPLBACKEND"] = "Agg"
    env.pop("PYTHONPATH", None)
    return env


def run_block(kind, code, cwd, timeout):
    if kind == "sh":
        argv = ["bash", "-e", "-o", "pipefail", "-c", code]
    else:
        (cwd / "_block.py").write_text(code)
        argv = [sys.executable, "_block.py"]
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("page, line, kind, tiny, code", _cases())
def test_block_runs(page, line, kind, tiny, code, tmp_path, request):
    if tiny:
        code = request.getfixturevalue("tiny_models")(code)
    slow = request.node.get_closest_marker("slow") is not None
    out = run_block(kind, code, _workdir(tmp_path), None if slow else TIMEOUT)
    assert out.returncode == 0, (f"{page}, the {kind} block at line {line} exited {out.returncode}\n--- block\n{code}"
                                 f"--- stdout (end)\n{out.stdout[-3000:]}\n--- stderr (end)\n{out.stderr[-3000:]}")


# ---- the pages keep the conventions -----------------------------------------------------------------------------------

def test_every_block_has_a_known_language_and_valid_markers():
    problems = []
    for page in PAGES:
        rel = page.relative_to(ROOT).as_posix()
        for line, lang, marks, _ in blocks(page):
            if lang not in RUN and lang not in NOT_RUN:
                problems.append(f"{rel}:{line}: fence language {lang!r} (use one of {sorted(RUN) + sorted(NOT_RUN)})")
            try:
                m = parse_markers(marks)
            except ValueError as e:
                problems.append(f"{rel}:{line}: {e}")
                continue
            if marks and lang not in RUN:
                problems.append(f"{rel}:{line}: a test marker on a {lang!r} block, which never runs")
            if lang in RUN and not m["tiny"] and not m["skip"] and re.search(r"/models/[\w.-]+", _code(page, line)):
                problems.append(f"{rel}:{line}: names a /models/ folder without `tiny-models` (or a skip reason)")
    assert not problems, "\n".join(problems)


def _code(page, line):
    return next(code for ln, _, _, code in blocks(page) if ln == line)


def test_the_parser_reads_markers_and_fences(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n<!-- test: slow tiny-models -->\n```sh\necho hi\n```\n\n```text\nout\n```\n"
                    "<!-- test: skip needs a GPU -->\n```python\nprint(1)\n```\n")
    found = blocks(page)
    assert [(ln, lang, marks) for ln, lang, marks, _ in found] == [
        (3, "sh", "slow tiny-models"), (7, "text", ""), (11, "python", "skip needs a GPU")]
    assert parse_markers("slow tiny-models") == {"slow": True, "tiny": True, "skip": None}
    assert parse_markers("skip needs a GPU")["skip"] == "needs a GPU"
    with pytest.raises(ValueError):
        parse_markers("skip")
    with pytest.raises(ValueError):
        parse_markers("fast")


def test_placeholders_are_replaced_whole():
    """/models/sd15 must not eat the start of /models/sd15-inpaint."""
    assert _pattern("/models/sd15").sub("X", "a /models/sd15 b /models/sd15-inpaint c /models/sd15.") == \
        "a X b /models/sd15-inpaint c X."


# ---- links ------------------------------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path):
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


def test_every_relative_link_points_to_a_file_that_exists():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links inside code are not links
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, fragment = target.partition("#")
            file = page if not path else (page.parent / path).resolve()
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif ROOT not in file.parents and file != ROOT:
                broken.append(f"{page.relative_to(ROOT)}: {target} (outside the repository)")
            elif fragment and file.suffix == ".md" and fragment not in _anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{fragment})")
    assert not broken, "\n".join(broken)


def test_the_pages_the_readme_indexes_exist_and_are_linked():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, f"README's documentation index misses docs/{page.name}"
