"""What a user sees on stderr: every error is one line that ends with a newline and starts at column 0,
even after a progress bar; bars for every stage on a terminal, none with --quiet or in a pipe. stderr is a real
pseudo-terminal (pty.openpty, 100 columns) or a real pipe; faults are real (bad input, missing files, a scene
whose hard constraint kills every particle)."""
import contextlib
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading

import numpy as np
import pytest
from PIL import Image

from poegen.cli import main

FAST = ["--steps", "2", "--particles", "2"]
DEAD = ("objects:\n  - {shape: ball, colour: red, position: [0, 1]}\n"
        "constraints: [{type: hard, tolerance: 0.01}]\n")  # every particle misses the 0.01 px tolerance
BAR = b"%|"  # tqdm's bars, and nothing else poegen writes, contain this


def _terminal(fd):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty has 0 columns


def _drain(fd, chunks):
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the pty's other end is closed
            return
        if not chunk:
            return
        chunks.append(chunk)


@contextlib.contextmanager
def stderr_on(kind):
    """sys.stderr on a pseudo-terminal ("tty") or a pipe ("pipe") for the block; the bytes written land in the
    yielded dict's "bytes" once the block ends."""
    master, slave = pty.openpty() if kind == "tty" else os.pipe()
    if kind == "tty":
        _terminal(slave)
    chunks, got = [], {}
    reader = threading.Thread(target=_drain, args=(master, chunks), daemon=True)
    reader.start()
    old, sys.stderr = sys.stderr, os.fdopen(slave, "w", encoding="utf-8", buffering=1)
    try:
        yield got
    finally:
        sys.stderr.close()
        sys.stderr = old
        reader.join(10)
        os.close(master)
        got["bytes"] = b"".join(chunks)


def run_in(kind, argv):
    """(exit code, stderr bytes) of ``poegen argv`` run here with stderr on ``kind``."""
    with stderr_on(kind) as got:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    return code, got["bytes"]


def run_process(argv, tmp_path):
    """(exit code, stderr bytes) of ``python -m poegen argv`` in a new process with stderr on a pty."""
    master, slave = pty.openpty()
    _terminal(slave)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "poegen", *argv], stderr=slave, stdout=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL, cwd=tmp_path, env=env)
    os.close(slave)
    chunks = []
    _drain(master, chunks)
    os.close(master)
    return p.wait(timeout=120), b"".join(chunks)


def screen(raw: bytes):
    """The lines a terminal shows for ``raw``: a carriage return goes back to column 0, a newline to the start of
    the next row (as a tty's onlcr), tqdm's cursor-up (ESC [ A) up a row; text overwrites what is under it."""
    rows, r, c, i = [[]], 0, 0, 0
    text = raw.decode("utf-8", "replace")
    while i < len(text):
        ch = text[i]
        if text.startswith("\x1b[A", i):
            r, i = max(0, r - 1), i + 3
            continue
        if ch == "\r":
            c = 0
        elif ch == "\n":
            r, c = r + 1, 0
            rows += [[] for _ in range(r + 1 - len(rows))]
        else:
            line = rows[r]
            line += [" "] * (c + 1 - len(line))
            line[c] = ch
            c += 1
        i += 1
    return [line.rstrip() for line in ("".join(row) for row in rows)]


def assert_one_line_error(code, raw, expected_code, words, kind):
    """The error is the last thing shown, one line from column 0 to a final newline, naming ``words``."""
    assert code == expected_code, raw
    assert raw.endswith(b"\n"), raw[-200:]
    assert raw.count(b"poegen: error:") == 1
    after = raw[raw.index(b"poegen: error:"):]
    assert after.count(b"\n") == 1 and b"\r" not in after.rstrip(b"\r\n"), after  # one line, then nothing
    shown = [line for line in screen(raw) if line]
    assert shown[-1].startswith("poegen: error:") and words in shown[-1], shown[-3:]
    assert len(shown[-1]) == len(after.decode().rstrip()), shown[-1]  # no bar remnant after the message
    if kind == "pipe":
        assert BAR not in raw and b"\r" not in raw  # no bar at all in a pipe


@pytest.fixture
def dead_scene(tmp_path):
    path = tmp_path / "dead.yaml"
    path.write_text(DEAD)
    return str(path)


OUT = ["--out", "{tmp}/x.png"]
ERRORS = {  # argv, exit code, words of the message
    "bad prompt": (["generate", "a purple ball", *FAST, *OUT], 2, "unknown word 'purple'"),
    "unknown expert": (["generate", "a red ball", "--expert", "nope:/x", *FAST, *OUT], 2, "--expert 'nope:/x'"),
    "missing scene": (["generate", "--scene", "{tmp}/missing.yaml", *FAST, *OUT], 2, "missing.yaml does not exist"),
    "missing job file": (["batch", "{tmp}/missing.jsonl", "--out", "{tmp}/b"], 2, "missing.jsonl does not exist"),
    "all particles dead": (["generate", "--scene", "{dead}", *FAST, *OUT], 3, "all particles died"),
}


@pytest.mark.parametrize("kind", ["tty", "pipe"])
@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
def test_errors_are_one_line_from_column_0_with_a_final_newline(case, kind, tmp_path, dead_scene):
    argv, expected, words = case
    code, raw = run_in(kind, [a.format(tmp=tmp_path, dead=dead_scene) for a in argv])
    assert_one_line_error(code, raw, expected, words, kind)
    if kind == "tty" and case[1] == 3:
        assert b"sampling" in raw  # the error came after a bar was drawn


@pytest.mark.parametrize("argv, words", [
    (["generate", "a red ball", "--sampler", "nope"], "invalid choice: 'nope'"),
    (["generate", "a red ball", "--particles"], "--particles: expected one argument"),
    (["generate", "a red ball", "--steps", "x"], "invalid int value: 'x'"),
    (["bogus"], "invalid choice: 'bogus'")], ids=["unknown sampler", "missing value", "not a number", "no command"])
def test_argparse_errors_are_one_line_with_a_final_newline(argv, words):
    p = subprocess.run([sys.executable, "-m", "poegen", *argv], capture_output=True, timeout=60)
    assert_one_line_error(p.returncode, p.stderr, 2, words, "pipe")


def test_a_process_that_dies_mid_bar_ends_with_its_error_on_its_own_line(tmp_path, dead_scene):
    """A real process on a real pty: nothing (a bar closed at exit) is written after the error."""
    code, raw = run_process(["generate", "--scene", dead_scene, *FAST, "--out", str(tmp_path / "x.png")], tmp_path)
    assert b"sampling" in raw
    assert_one_line_error(code, raw, 3, "widen a hard constraint's tolerance", "tty")


def test_a_warning_during_a_bar_starts_its_own_line(tmp_path):
    """batch logs a failed item while its bar is drawn: the warning is a line of its own, not glued to the bar
    (it was: 'batch 0/1:  33%|...| 1/3 [00:01<00:03, 1.75s/it]WARNING poegen.batch: item bad failed: ...')."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps({"id": i, "prompt": p, "steps": 2, "particles": 2})
                              for i, p in [("ok", "a red ball"), ("bad", "a purple ball"), ("ok2", "a blue box")]))
    code, raw = run_process(["batch", str(jobs), "--out", str(tmp_path / "out")], tmp_path)
    assert code == 1 and BAR in raw
    shown = screen(raw)
    warnings = [line for line in shown if "item bad failed" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING poegen.batch: item bad failed: unknown word"), shown
    assert shown[-1] == "" and shown[-2].startswith("batch 0/1: 100%")  # the batch bar ends its own line


def _edit_files(tmp_path):
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return [str(tmp_path / "in.png"), "a red ball", "--mask", str(tmp_path / "mask.png")]


COMMANDS = {  # argv (without --quiet), the stage names its bars show
    "generate": (lambda t: ["generate", "a red ball", *FAST, "--out", str(t / "g.png")],
                 [b"loading models", b"sampling", b"writing"]),
    "edit": (lambda t: ["edit", *_edit_files(t), *FAST, "--out", str(t / "e.png")],
             [b"loading models", b"sampling", b"writing"]),
    "batch": (lambda t: ["batch", str(_job(t)), "--out", str(t / "b")], [b"batch 0/1", b"loading models", b"sampling"]),
    "compare": (lambda t: ["compare", "a red ball", "--samplers", "poe", "--seeds", "1", *FAST, "--workers", "1",
                           "--out", str(t / "c")], [b"compare", b"writing report"]),
}


def _fresh(folder):
    folder.mkdir()
    return folder


def _job(tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"id": "one", "prompt": "a red ball", "steps": 2, "particles": 2}) + "\n")
    return path


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_bars_on_a_terminal_and_none_with_quiet_or_in_a_pipe(command, tmp_path):
    make, stages = command
    code, raw = run_in("tty", make(_fresh(tmp_path / "bars")))
    assert code == 0 and BAR in raw
    for stage in stages:
        assert stage + b":" in raw, (stage, raw[-300:])
    shown = screen(raw)
    assert not any(BAR.decode() in line and "batch" not in line and "compare" not in line for line in shown)  # cleared
    for kind, quiet in (("tty", ["--quiet"]), ("pipe", [])):
        code, raw = run_in(kind, make(_fresh(tmp_path / kind)) + quiet)
        assert code == 0 and BAR not in raw and b"\r" not in raw, (kind, raw[-300:])


ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_readme_quotes_the_figures_scripts_readme_figures_wrote():
    """README's demo time, compare table and both images are those of docs/readme_figures.json (rerun
    scripts/readme_figures.py and copy its figures when the code changes them)."""
    import hashlib
    import re

    from poegen.report import table

    figures = json.loads((ROOT / "docs" / "readme_figures.json").read_text())
    readme = (ROOT / "README.md").read_text()
    demo, compare = figures["demo"], figures["compare"]
    quoted = re.search(r"about ([\d.]+) seconds on (\d+) CPU cores \(([^,]+), ([^,]+), (\w+)\)", readme)
    assert quoted, "README's demo sentence: 'about S seconds on N CPU cores (CPU, CAPABILITY, DTYPE)'"
    m = demo["machine"]
    assert quoted.groups() == (f"{demo['seconds']:.1f}", str(m["cores"]), m["cpu"], m["capability"],
                               m["dtype_auto"].replace("torch.", ""))
    assert table(compare["summary"]) == compare["table"]  # today's report code prints the recorded summary so
    block = "\n".join("    " + line for line in compare["table"].splitlines())
    assert block + "\n" in readme, "README's compare table differs from docs/readme_figures.json"
    assert "exact" in compare["table"].splitlines()[0] and "predates" not in readme
    for part in (demo, compare):
        assert hashlib.sha256((ROOT / part["image"]).read_bytes()).hexdigest() == part["sha256"], part["image"]
        assert f"]({part['image']})" in readme
    assert compare["command"].split(" --workers")[0].replace("poegen compare ", "") in " ".join(readme.split())
    clip = figures["clip"]  # the README's clip: its file, its size, rate and length, and its time
    assert hashlib.sha256((ROOT / clip["image"]).read_bytes()).hexdigest() == clip["sha256"]
    assert f"]({clip['image']})" in readme and clip["command"] in readme
    said = re.search(r"(\d+) frames at (\d+) fps, (\d+) px, in about ([\d.]+) seconds", " ".join(readme.split()))
    assert said and said.groups() == (str(clip["frames"]), f"{clip['fps']:.0f}", str(clip["size"][0]),
                                      f"{clip['seconds']:.1f}"), said


def test_the_simulator_prints_nothing():
    """pybullet's C code prints its build time on import; a command's output and bars must not carry it."""
    import subprocess
    import sys

    code = "from poegen.experts.shapes.world import _Sim; _Sim.get(); print('done')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == "done\n" and out.stderr == "", (out.stdout, out.stderr)
