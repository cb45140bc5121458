"""Every shapes-world example the README and docs/ show (a `poegen generate` or `poegen edit` line of a block that
runs) is exact by the checker at its documented seed and at the three seeds after it, run as the command asks
(its sampler, particles, steps and budget) through the comparison route (``compare.run``: the same Product and
``anytime.sample`` as the command, judged by the checker). A prompt, a layout spec, a scene spec (one frame), an
edit (by scene or by mask) and a motion prompt's clip are judged; lines that fail on purpose (``|| echo``), named
models, and a scene's several frames or clip are not. The block's other lines (writing a mask, say) run first, in
a temporary folder, as ``test_docs`` runs them."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from poegen import compare, samplers
from poegen.cli import build_parser
from poegen.defaults import SHAPES_CLIP_FRAMES as SHAPES_FRAMES

from test_docs import PAGES, ROOT, blocks, parse_markers

SEEDS = 4  # the documented seed and three more
NAMED = ("--expert", "--config", "--potential")
# a motion prompt's clip is not exact yet (a ghost copy left where the ball was, frames where the box is drawn round:
# 0 of 4 seeds at the documented budget); kept here, under -m slow, so that it is noticed the day it passes
CLIP_MARKS = (pytest.mark.slow, pytest.mark.xfail(strict=True, reason="clips are not yet exact in every frame"))


def _examples():
    out = []
    for page in PAGES:
        for line, lang, marks, code in blocks(page):
            m = parse_markers(marks)
            if lang not in ("sh", "bash", "shell") or m["tiny"] or m["skip"]:
                continue
            lines = code.replace("\\\n", " ").splitlines()
            setup = "\n".join(c for c in lines if not c.startswith("poegen "))  # the block's other lines
            for c in lines:
                if not c.startswith(("poegen generate ", "poegen edit ")) or "||" in c:
                    continue
                words = shlex.split(c, comments=True)
                if not any(w in NAMED for w in words):
                    clip = "--video" in words and "--scene" not in words
                    out.append(pytest.param(words[1:], setup, id=f"{page.relative_to(ROOT)}:{line}:{words[1]}",
                                            marks=CLIP_MARKS if clip else ()))
    return out


def _case(argv, folder: Path):
    """(target, frames, args) of one example: a prompt or spec path, an edit written as an edit spec file."""
    args = build_parser().parse_args(argv)
    if argv[0] == "edit":
        spec = {"image": str(Path(args.image).resolve())}
        if args.scene:
            spec["scene"] = str(Path(args.scene).resolve())
        else:
            spec.update(prompt=args.prompt, mask=str(Path(args.mask).resolve()))
        path = folder / "edit_case.json"
        path.write_text(json.dumps(spec))
        return str(path), None, args
    if args.scene and ((args.frames or 1) > 1 or args.video_out):
        return None, None, args
    frames = (args.frames or SHAPES_FRAMES) if args.video_out else None
    return args.scene or args.layout or args.prompt, frames, args


@pytest.mark.parametrize("argv, setup", _examples())
def test_documented_example_is_exact_at_its_seed_and_three_more(argv, setup, tmp_path, monkeypatch):
    for name in ("examples", "scripts", "docs"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", "-e", "-c", setup], check=True, cwd=tmp_path, capture_output=True, env=env)  # a mask...
    target, frames, args = _case(argv, tmp_path)
    if target is None:
        pytest.skip("a scene's several frames or its clip: judged by poegen eval physics and video")
    moves = args.mcmc_steps if args.mcmc_steps is not None else samplers.PRESETS[args.sampler]["mcmc_steps"]
    rows, _ = compare.run([target], [args.sampler], SEEDS, args.particles, moves if args.sampler in ("poe", "ais")
                          else 0, args.steps, args.guidance, args.potential_weight, progress=False, seed0=args.seed,
                          frames=frames, budget=args.budget)
    missed = [(r.seed, r.metrics.get("reason")) for r in rows if not r.exact]
    assert not missed, f"{' '.join(argv)}: not exact at seeds {[s for s, _ in missed]} of {args.seed}..{args.seed + 3}"
