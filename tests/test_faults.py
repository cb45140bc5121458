"""Faults from the battery: one-line CLI errors with distinct exit codes, outputs checked before sampling, YAML
that cannot blow up, numbers YAML 1.1 misreads, and error messages that quote little of what they parsed."""
import time

import pytest

from poegen import memory
from poegen.cli import main
from poegen.samplers import AllParticlesDead
from poegen.validation import load_yaml, read_file


@pytest.mark.parametrize("error,code,text", [
    (AllParticlesDead("all particles died at sigma=0.002, killed by potential physics-hard."), 3, "raise --particles"),
    (ValueError("bad input"), 2, "bad input"),
    (PermissionError(13, "Permission denied"), 4, "Permission denied"),
    (RuntimeError("CUDA error: out of memory"), 5, "RuntimeError; run with -v for the traceback"),
])
def test_every_error_is_one_line_with_its_own_exit_code(monkeypatch, capsys, error, code, text):
    import poegen.pipeline

    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(poegen.pipeline, "run", fail)
    assert main(["generate", "a red ball", "-q"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("poegen: error: ") and text in err
    assert main(["-v", "generate", "a red ball", "-q"]) == code
    assert "Traceback" in capsys.readouterr().err  # -v shows where


def test_out_is_checked_before_any_sampling(monkeypatch, tmp_path, capsys):
    import tempfile

    import poegen.samplers

    monkeypatch.setattr(poegen.samplers, "sample", lambda *a, **k: pytest.fail("sampled before checking --out"))
    (tmp_path / "d.png").mkdir()
    assert main(["generate", "a red ball", "-q", "--out", str(tmp_path / "d.png")]) == 2
    assert "is a folder" in capsys.readouterr().err

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert main(["generate", "a red ball", "-q", "--out", str(tmp_path / "x.png")]) == 2
    assert "cannot write in" in capsys.readouterr().err and [p.name for p in tmp_path.iterdir()] == ["d.png"]


def test_a_yaml_alias_bomb_is_refused_fast_and_small(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    spec = tmp_path / "bomb.yaml"
    spec.write_text("\n".join(lines + ["objects: *a8"]))
    t = time.perf_counter()
    used = memory.measure(lambda: pytest.raises(ValueError, read_file, spec, "scene").match("aliases"), "cpu")
    assert time.perf_counter() - t < 1 and used < 200e6


def test_yaml_reads_numbers_as_yaml_1_2_does():
    assert load_yaml("a: 1e308\nb: 1.0e6\nc: -2.5E-3\nd: 7\ne: abc") == {"a": 1e308, "b": 1e6, "c": -2.5e-3, "d": 7,
                                                                          "e": "abc"}


def test_errors_quote_little_of_a_file_they_parsed(tmp_path, capsys):
    secret = tmp_path / "secret.yaml"
    secret.write_text("\n".join(f"user{i}:x:{i}:{i}:Someone Secret {i}:/home/user{i}:/bin/sh: 1" for i in range(50)))
    assert main(["generate", "--scene", str(secret), "-q"]) == 2
    err = capsys.readouterr().err
    assert "and 45 more" in err and "Someone Secret 7" not in err and len(err) < 600


@pytest.mark.parametrize("argv,text", [
    (["compare", "a red ball", "--seeds", "0"], "--seeds 0: must be >= 1"),
    (["compare", "a red ball", "--workers", "-1"], "--workers -1: must be >= 0"),
    (["generate", "a red ball", "--device", "cuda:7"], "CUDA device(s); use --device cpu"),
    (["generate", "a red ball", "--device", "mps"], "no MPS device here"),
    (["generate", "a red ball", "--guidance", "nan"], "guidance 'nan' is not a finite number"),
    (["generate", "a red ball", "--seed", str(2 ** 64)], "is outside 0 .. 2**63 - 1"),
    (["generate", "a red ball", "--particles", "10000000000"], "the particles alone need about"),
])
def test_resource_limits_are_refused_up_front_in_one_line(capsys, argv, text):
    assert main(argv + ["-q"]) == 2
    err = capsys.readouterr().err
    assert text in err and err.count("\n") == 1


def test_yaml_reads_integers_and_booleans_as_yaml_1_2_does():
    # YAML 1.1 (PyYAML's) reads 010 as 8, 1:30 as 90 and on/yes as True
    assert load_yaml("a: 010\nb: 0o10\nc: 0x1F\nd: -5\ne: 1_000\nf: 1:30\ng: on\nh: true\ni: 1.5") == \
        {"a": 10, "b": 8, "c": 31, "d": -5, "e": 1000, "f": "1:30", "g": "on", "h": True, "i": 1.5}
