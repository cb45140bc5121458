"""The fault battery, groups 4 batch, 5 API and 6 security: one row per case, each asserting what must happen
(docs/reliability.md lists what a batch survives). CLI rows go through ``Case`` (tests/helpers.py); rows that need
a fault simulated (a kill, a full disk, a read-only folder, no network) patch it in and then run Cases; API rows
call the library."""
import errno
import json
import logging
import math
import os
import re
import socket
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import poegen
from poegen.experts.analytic import Gaussian, GaussianLikelihood

from helpers import Case

BATCH = ["batch", "{tmp}/j.jsonl", "--out", "{tmp}/o", "-q"]
BATCH_YAML = ["batch", "{tmp}/j.yaml", "--out", "{tmp}/o", "-q"]


def job(prompt="a red ball", **fields):
    return {"prompt": prompt, "particles": 2, "steps": 3, **fields}


def jsonl(*jobs):
    return "".join((j if isinstance(j, str) else json.dumps(j)) + "\n" for j in jobs)


def records(folder):
    """Every manifest line that parses, over all ranks, in file order."""
    out = []
    for f in sorted(Path(folder).glob("manifest*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def last(folder):
    return {r["id"]: r for r in records(folder)}


def meta(png):
    return json.loads(Image.open(png).text["poegen"])


def temporaries(folder):
    return [p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp")]


def nothing_written(tmp):
    assert not (tmp / "o").exists(), "work began before the input was checked"


# ---- group 4: batch ------------------------------------------------------------------------------

def _row_ids_dot_dot(tmp):
    assert (tmp / "o" / "...png").is_file() and (tmp / "o" / ".._raw.png").is_file()
    assert not list(tmp.glob("*.png")), "wrote outside --out"


def _row_backslashes(tmp):
    assert (tmp / "o" / "..\\..\\evil.png").is_file()
    assert all(p.parent == tmp / "o" for p in tmp.rglob("*evil*"))


def _row_nul_and_long_ids(tmp):
    r = last(tmp / "o")
    assert r["a\x00b"]["status"] == "failed" and "null byte" in r["a\x00b"]["error"]
    assert r["z" * 300]["status"] == "failed" and "File name too long" in r["z" * 300]["error"]
    assert r["good"]["status"] == "ok" and (tmp / "o" / "good.png").is_file()


def _row_failing_in_the_middle(tmp):
    r = last(tmp / "o")
    assert [k for k in r] == ["first", "purple", "noscene", "last"]  # run in order, the batch went on
    assert r["first"]["status"] == r["last"]["status"] == "ok"
    assert r["purple"]["status"] == "failed" and "purple" in r["purple"]["error"] and r["purple"]["trace"]
    assert r["noscene"]["status"] == "failed" and "does not exist" in r["noscene"]["error"] and r["noscene"]["trace"]


def _row_prepended(tmp, capsys, monkeypatch):
    red, blue, green = job("a red ball"), job("a blue box"), job("a green wedge")
    Case(BATCH, 0, "2 done, 0 skipped", files={"j.jsonl": jsonl(red, blue)}).run(tmp, capsys, monkeypatch)
    before = {r["id"]: r["fingerprint"] for r in records(tmp / "o")}
    Case(BATCH, 0, "3 done, 0 skipped, 0 failed", files={"j.jsonl": jsonl(green, red, blue)}).run(tmp, capsys, monkeypatch)
    prompts = {i: meta(tmp / "o" / f"{i}.png")["job"]["prompt"] for i in ("00000", "00001", "00002")}
    assert prompts == {"00000": "a green wedge", "00001": "a red ball", "00002": "a blue box"}
    assert prompts == {i: meta(tmp / "o" / f"{i}_raw.png")["job"]["prompt"] for i in prompts}
    after = last(tmp / "o")
    assert all(after[i]["status"] == "ok" and after[i]["fingerprint"] != before[i] for i in ("00000", "00001"))
    Case(BATCH, 0, "0 done, 3 skipped").run(tmp, capsys, monkeypatch)  # and now it is all recorded as done


class _Killed(BaseException):
    """Stands for SIGKILL: nothing in poegen catches it."""


def _row_kill_and_resume(tmp, capsys, monkeypatch):
    import poegen.pipeline
    from poegen.cli import main

    jobs = jsonl(*[job(p, id=f"r{i}") for i, p in enumerate(["a red ball", "a blue box", "a green wedge", "a cyan box"])])
    Case(["batch", "{tmp}/j.jsonl", "--out", "{tmp}/clean", "-q"], 0, "4 done", files={"j.jsonl": jobs}).run(
        tmp, capsys, monkeypatch)
    real, calls = poegen.pipeline.save_png, []

    def killed_mid_write(image, path, metadata, scale=1):
        calls.append(path.name)
        if len(calls) == 5:  # r2's raw image: its temporary file exists, then the process dies
            (path.parent / f".{path.name}.k1ll3d.tmp").write_bytes(b"\x89PNG half")
            raise _Killed()
        return real(image, path, metadata, scale)

    monkeypatch.setattr(poegen.pipeline, "save_png", killed_mid_write)
    with pytest.raises(_Killed):
        main([a.replace("{tmp}", str(tmp)) for a in BATCH])
    monkeypatch.setattr(poegen.pipeline, "save_png", real)
    assert [r["id"] for r in records(tmp / "o")] == ["r0", "r1"] and temporaries(tmp / "o")
    Case(BATCH, 0, "2 done, 2 skipped, 0 failed").run(tmp, capsys, monkeypatch)
    ok = [r["id"] for r in records(tmp / "o") if r["status"] == "ok"]
    assert sorted(ok) == ["r0", "r1", "r2", "r3"] and len(ok) == 4  # each item exactly once
    assert not temporaries(tmp / "o")  # the killed run's temporary file was cleared on resume
    for png in (tmp / "clean").glob("*.png"):
        Image.open(tmp / "o" / png.name).load()
        assert (tmp / "o" / png.name).read_bytes() == png.read_bytes()  # identical to an uninterrupted run


def _row_sigint(tmp, capsys, monkeypatch):
    from PIL import Image as PILImage

    from poegen.cli import main

    real, calls = PILImage.Image.save, []

    def interrupted(self, fp, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # while writing the second item's first image
            raise KeyboardInterrupt
        return real(self, fp, *args, **kwargs)

    (tmp / "j.jsonl").write_text(jsonl(job(id="a"), job("a blue box", id="b"), job("a green wedge", id="c")))
    monkeypatch.setattr(PILImage.Image, "save", interrupted)
    capsys.readouterr()
    assert main([a.replace("{tmp}", str(tmp)) for a in BATCH]) == 130
    assert capsys.readouterr().err.strip() == "poegen: interrupted"  # one line, no traceback
    assert [r["id"] for r in records(tmp / "o")] == ["a"] and not temporaries(tmp / "o")  # consistent
    monkeypatch.setattr(PILImage.Image, "save", real)
    Case(BATCH, 0, "2 done, 1 skipped").run(tmp, capsys, monkeypatch)


def _row_concurrent(tmp, capsys, monkeypatch):
    from poegen.batch import _lock

    (tmp / "o").mkdir()
    held = _lock(tmp / "o", 0)  # the first process, still running
    try:
        Case(BATCH, 2, f"rank 0 is already being run by process {os.getpid()}",
             files={"j.jsonl": jsonl(job(), job("a blue box"))}).run(tmp, capsys, monkeypatch)
        assert records(tmp / "o") == []
    finally:
        held.close()
    Case(BATCH, 0, "2 done").run(tmp, capsys, monkeypatch)


def _row_read_only_after_first(tmp, capsys, monkeypatch):
    import tempfile

    import poegen.batch
    import poegen.samplers

    state, sampled = {"ro": False}, []
    real_mkstemp, real_run, real_sample = tempfile.mkstemp, poegen.batch.run, poegen.samplers.sample

    def mkstemp(*args, **kwargs):
        if state["ro"]:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(*args, **kwargs)

    def run(*args, **kwargs):
        try:
            return real_run(*args, **kwargs)
        finally:
            state["ro"] = True  # remounted read-only once the first item is written

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(poegen.batch, "run", run)
    monkeypatch.setattr(poegen.samplers, "sample", lambda *a, **k: sampled.append(1) or real_sample(*a, **k))
    Case(BATCH, 1, "1 done, 0 skipped, 2 failed",
         files={"j.jsonl": jsonl(job(id="a"), job("a blue box", id="b"), job("a cyan box", id="c"))}).run(
        tmp, capsys, monkeypatch)
    r = last(tmp / "o")
    assert r["a"]["status"] == "ok" and all(r[i]["status"] == "failed" and "Read-only file system" in r[i]["error"]
                                            for i in "bc")
    assert len(sampled) == 1, "items sampled in full before finding the folder read-only"
    state["ro"] = False  # remounted read-write: the resume finishes the rest
    monkeypatch.setattr(poegen.batch, "run", real_run)
    Case(BATCH, 0, "2 done, 1 skipped, 0 failed").run(tmp, capsys, monkeypatch)


def _row_disk_full(tmp, capsys, monkeypatch):
    from PIL import Image as PILImage

    real, calls = PILImage.Image.save, []

    def full(self, fp, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # the first item fits, the second does not
            fp.write(b"\x89PNG")  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "save", full)
    Case(BATCH, 4, "no space left on device in {tmp}/o; item b is recorded as failed and the batch stops",
         files={"j.jsonl": jsonl(job(id="a"), job("a blue box", id="b"), job("a cyan box", id="c"))}).run(
        tmp, capsys, monkeypatch)
    r = last(tmp / "o")
    assert r["a"]["status"] == "ok" and r["b"]["status"] == "failed" and r["b"]["error"] == "no space left on device"
    assert "c" not in r and len(calls) == 3  # it stopped at the full disk
    assert not temporaries(tmp / "o") and not (tmp / "o" / "b_raw.png").exists()


def _row_resume_after_torn_line(tmp, capsys, monkeypatch):
    two = jsonl(job(id="r0"), job("a blue box", id="r1"))
    Case(BATCH, 0, "2 done", files={"j.jsonl": two}).run(tmp, capsys, monkeypatch)
    manifest = tmp / "o" / "manifest.0.jsonl"
    with open(manifest, "a") as f:
        f.write('{"id": "r2", "status": "failed", "err')  # the disk filled up mid-record
    Case(BATCH, 0, "1 done, 2 skipped, 0 failed",
         files={"j.jsonl": two + jsonl(job("a cyan box", id="r2"))}).run(tmp, capsys, monkeypatch)
    lines = manifest.read_text().splitlines()
    assert lines[2] == '{"id": "r2", "status": "failed", "err' and json.loads(lines[3])["id"] == "r2"
    assert {k: r["status"] for k, r in last(tmp / "o").items()} == {"r0": "ok", "r1": "ok", "r2": "ok"}
    Case(BATCH, 0, "0 done, 3 skipped").run(tmp, capsys, monkeypatch)  # nothing finished is run again


def _row_relative_scene(tmp, capsys, monkeypatch):
    (tmp / "elsewhere").mkdir()
    monkeypatch.chdir(tmp / "elsewhere")
    spec = Path(__file__).resolve().parents[1] / "examples" / "stacking.yaml"

    def check(tmp):
        assert meta(tmp / "o" / "00000.png")["job"]["scene"] == str(tmp / "jobs" / "scene_rel.yaml")
    Case(["batch", "{tmp}/jobs/j.jsonl", "--out", "{tmp}/o", "-q"], 0, "1 done, 0 skipped, 0 failed",
         files={"jobs/j.jsonl": jsonl({"scene": "scene_rel.yaml", "particles": 2, "steps": 3}),
                "jobs/scene_rel.yaml": spec.read_text()}, check=check).run(tmp, capsys, monkeypatch)
    Case(["batch", "{tmp}/jobs/k.jsonl", "--out", "{tmp}/o", "-q"], 2,
         "scene 'gone.yaml' not found (looked for {tmp}/jobs/gone.yaml)",  # says where it looked
         files={"jobs/k.jsonl": jsonl({"scene": "gone.yaml"})}).run(tmp, capsys, monkeypatch)


def _row_yaml_bomb_id(tmp, capsys, monkeypatch):
    lines = ["- &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"- &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    t = time.perf_counter()
    Case(BATCH_YAML, 2, "aliases (*name) are not allowed",
         files={"j.yaml": "\n".join(lines + ["- {id: *a8, prompt: a red ball}"]) + "\n"}, check=nothing_written).run(
        tmp, capsys, monkeypatch)
    assert time.perf_counter() - t < 2


def _row_python_tag(tmp, capsys, monkeypatch):
    marker = tmp / "marker"
    Case(BATCH_YAML, 2, "could not determine a constructor for the tag",
         files={"j.yaml": f"- !!python/object/apply:os.system ['touch {marker}']\n"}).run(tmp, capsys, monkeypatch)
    assert not marker.exists()


CLI = {
    "4 batch: JSONL with a malformed line 2": Case(
        BATCH, 2, "j.jsonl:2: not valid JSON (Expecting", check=nothing_written,
        files={"j.jsonl": jsonl(job(), '{"prompt": "a blue box", "particles": 2 "steps": 3}')}),
    "4 batch: duplicate ids": Case(
        BATCH, 2, "j.jsonl:2: id 'x' is also the id of {tmp}/j.jsonl:1", check=nothing_written,
        files={"j.jsonl": jsonl(job(id="x"), job("a blue box", id="x"))}),
    "4 batch: id ../escape": Case(
        BATCH, 2, "j.jsonl:1: id '../escape' contains '/'", files={"j.jsonl": jsonl(job(id="../escape"))},
        check=nothing_written),
    "4 batch: id ..": Case(BATCH, 0, "1 done", files={"j.jsonl": jsonl(job(id=".."))}, check=_row_ids_dot_dot),
    "4 batch: id with backslashes": Case(
        BATCH, 0, "1 done", files={"j.jsonl": jsonl(job(id="..\\..\\evil"))}, check=_row_backslashes),
    "4 batch: ids with NUL byte / 300 chars, then a good item": Case(
        BATCH, 1, "1 done, 0 skipped, 2 failed", check=_row_nul_and_long_ids,
        files={"j.jsonl": jsonl(job(id="a\x00b", steps=1), job(id="z" * 300, steps=1), job(id="good"))}),
    "4 batch: items failing in the middle (unknown word; missing scene)": Case(
        BATCH, 1, "2 done, 0 skipped, 2 failed", check=_row_failing_in_the_middle,
        files={"j.jsonl": jsonl(job(id="first"), job("a purple ball", id="purple"),
                                {"id": "noscene", "scene": "{tmp}/nope.yaml"}, job("a blue box", id="last"))}),
    "4 batch: frames string": Case(
        BATCH, 2, "j.jsonl:2: frames '3' is not a whole number", check=nothing_written,
        files={"j.jsonl": jsonl(job(), {"scene": "{tmp}/s.yaml", "frames": "3"}), "s.yaml": "objects: []\n"}),
    "4 batch: particles 2.5": Case(
        BATCH, 2, "j.jsonl:2: particles '2.5' is not a whole number", check=nothing_written,
        files={"j.jsonl": jsonl(job(), job(particles=2.5))}),
    "4 batch: seed abc": Case(
        BATCH, 2, "j.jsonl:2: seed 'abc' is not a whole number", check=nothing_written,
        files={"j.jsonl": jsonl(job(), job(seed="abc"))}),
    "4 batch: prompt 42": Case(
        BATCH, 2, "j.jsonl:2: prompt '42' is not text", check=nothing_written,
        files={"j.jsonl": jsonl(job(), job(42))}),
    "4 batch: YAML job file that is a mapping": Case(
        BATCH_YAML, 2, "j.yaml: expected a list of jobs", files={"j.yaml": "prompt: a red ball\nsteps: 3\n"},
        check=nothing_written),
    "4 batch: unknown key colour in a job": Case(
        BATCH, 2, "j.jsonl:1: unknown field(s) colour; allowed: prompt", check=nothing_written,
        files={"j.jsonl": jsonl(job(colour="red"))}),
    "4 batch: null / [1,2] lines": [
        Case(BATCH, 2, "j.jsonl:2: a job is a mapping like {\"prompt\": \"a red ball\"}",
             files={"j.jsonl": jsonl(job(), "null")}, check=nothing_written),
        Case(["batch", "{tmp}/k.jsonl", "--out", "{tmp}/o", "-q"], 2, "k.jsonl:1: a job is a mapping like",
             files={"k.jsonl": jsonl("[1, 2]")}, check=nothing_written)],
    "4 batch: empty job file": Case(BATCH, 2, "no jobs in", files={"j.jsonl": ""}),
    "4 batch: jobs with ids x and x_raw": [
        Case(BATCH, 2, "j.jsonl:2: id 'x_raw' contains '/' or ends like a file poegen adds (_raw, _f00), so its "
                       "files would overwrite those of id 'x' ({tmp}/j.jsonl:1); rename it",
             files={"j.jsonl": jsonl(job(id="x"), job("a blue box", id="x_raw"))}, check=nothing_written),
        Case(BATCH, 2, "j.jsonl:1: id 'a_f00' contains '/' or ends like a file poegen adds (_raw, _f00), so its "
                       "files would overwrite those of id 'a' ({tmp}/j.jsonl:2)",
             files={"j.jsonl": jsonl(job(id="a_f00"), job("a blue box", id="a"))}, check=nothing_written)],
    "4 batch: job file edited between runs (one job prepended), then restart": _row_prepended,
    "4 batch: kill -9 mid-batch, then resume": _row_kill_and_resume,
    "4 batch: SIGINT during batch": _row_sigint,
    "4 batch: two concurrent batch processes, same --out": _row_concurrent,
    "4 batch: --out read-only after the first item": _row_read_only_after_first,
    "4 batch: disk full": _row_disk_full,
    "4 batch: resume after that disk-full run (torn manifest line)": _row_resume_after_torn_line,
    "4 batch: RANK=3 WORLD_SIZE=2": Case(
        BATCH, 2, "RANK=3 and WORLD_SIZE=2: need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE",
        env={"RANK": "3", "WORLD_SIZE": "2"}, files={"j.jsonl": jsonl(job())}, check=nothing_written),
    "4 batch: WORLD_SIZE=0": Case(
        BATCH, 2, "RANK=0 and WORLD_SIZE=0: need WORLD_SIZE >= 1", env={"RANK": "0", "WORLD_SIZE": "0"},
        files={"j.jsonl": jsonl(job())}, check=nothing_written),
    "4 batch: WORLD_SIZE=two": Case(
        BATCH, 2, "environment variable WORLD_SIZE='two' is not a whole number", env={"WORLD_SIZE": "two"},
        files={"j.jsonl": jsonl(job())}, check=nothing_written),
    "4 batch: job file is a directory": Case(
        ["batch", "{tmp}/jobs.jsonl", "--out", "{tmp}/o", "-q"], 2, "job file {tmp}/jobs.jsonl is a folder",
        files={"jobs.jsonl/inside.txt": ""}, check=nothing_written),
    "4 batch: job file missing": Case(
        ["batch", "{tmp}/nope.jsonl", "--out", "{tmp}/o", "-q"], 2, "job file {tmp}/nope.jsonl does not exist",
        check=nothing_written),
    "4 batch: --out is an existing file": Case(
        BATCH, 2, "output folder {tmp}/o is not writable: [Errno 17] File exists",
        files={"j.jsonl": jsonl(job()), "o": "a file"}, check=lambda tmp: (tmp / "o").read_text() == "a file" or
        pytest.fail("the file was touched")),
    "4 batch: relative scene next to the job file, run from elsewhere": _row_relative_scene,
    "4 batch: YAML bomb as a job's id": _row_yaml_bomb_id,
    "4 batch: !!python/object/apply in a YAML job file": _row_python_tag,
}


# ---- group 6: security (CLI) ---------------------------------------------------------------------

def no_network(monkeypatch):
    """HF_HUB_OFFLINE unset and every socket connect refused (as under `unshare -n`); returns the attempts."""
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError(errno.ENETUNREACH, "Network is unreachable")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, address: refuse(self, address))
    return attempts


def _offline(case):
    def row(tmp, capsys, monkeypatch):
        attempts = no_network(monkeypatch)
        case(tmp).run(tmp, capsys, monkeypatch)
        assert not [a for a in attempts if isinstance(a, tuple)], f"connected to {attempts}"  # no inet connect()
    return row


def _tiny_sd_and_clip(tmp):
    from helpers import tiny_clip_folder, tiny_sd_folder

    sd, clip = tiny_sd_folder(tmp / "sd"), tiny_clip_folder(tmp / "clip")
    return Case(["generate", "a red ball", "--expert", f"sd:{sd}", "--potential", f"clip:{clip}", "--particles", "2",
                 "--steps", "2", "--out", "{tmp}/x.png", "-q"], 0, "wrote {tmp}/x.png",
                check=lambda tmp: Image.open(tmp / "x_raw.png").size == (16, 16) or pytest.fail("size"))


def _planted_probe(tmp, capsys, monkeypatch):
    (tmp / "o").mkdir()
    (tmp / "victim").write_text("keep me")
    (tmp / "o" / ".probe.0").symlink_to(tmp / "victim")
    Case(BATCH, 0, "1 done", files={"j.jsonl": jsonl(job(id="r0"))}).run(tmp, capsys, monkeypatch)
    assert (tmp / "victim").read_text() == "keep me"


def _planted_tmp(tmp, capsys, monkeypatch):
    (tmp / "o").mkdir()
    (tmp / "victim").write_text("keep me")
    for name in ("r0_raw.png.tmp", ".r0_raw.png.tmp", "r0_raw.png"):
        (tmp / "o" / name).symlink_to(tmp / "victim")
    Case(BATCH, 0, "1 done", files={"j.jsonl": jsonl(job(id="r0"))}).run(tmp, capsys, monkeypatch)
    assert (tmp / "victim").read_text() == "keep me"  # nothing written outside --out
    raw = tmp / "o" / "r0_raw.png"
    assert not raw.is_symlink() and Image.open(raw).size == (32, 32) and meta(raw)["job"]["prompt"] == "a red ball"


SECRETS = ("hUNTER2", "TOPSECRET", "$6$", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU", "PRIVATE KEY")


def _system_file(tmp, capsys, monkeypatch):
    # a non-mapping file (a private key: YAML reads one string) and a shadow-like one (trailing ':' make mappings)
    files = {"id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
                       "-----END OPENSSH PRIVATE KEY-----\n",
             "shadow": "root:$6$Zq9dK1sQ$hUNTER2hUNTER2secretHASH:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
                       "alice:$6$aB3$TOPSECRETalicehash:19001:0:99999:7:::\n",
             "j.jsonl": jsonl({"id": "key", "scene": "{tmp}/id_rsa"}, {"id": "shadow", "scene": "{tmp}/shadow"})}

    def check(tmp):
        r = last(tmp / "o")
        assert "expected a mapping" in r["key"]["error"] and "unknown field(s)" in r["shadow"]["error"]
        text = (tmp / "o" / "manifest.0.jsonl").read_text()
        assert not [s for s in SECRETS if s in text], text
    Case(BATCH, 1, "0 done, 0 skipped, 2 failed", files=files, check=check).run(tmp, capsys, monkeypatch)
    from poegen.cli import main
    for name in ("id_rsa", "shadow"):  # and generate --scene's one-line error quotes none of it either
        capsys.readouterr()
        assert main(["generate", "--scene", str(tmp / name), "-q", "--out", str(tmp / "g.png")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(tmp / name) in err and not [s for s in SECRETS if s in err], err


CLI.update({
    "6 security: shapes world offline, HF_HUB_OFFLINE unset": _offline(lambda tmp: Case(
        ["generate", "a red ball", "--particles", "2", "--steps", "3", "--out", "{tmp}/x.png", "-q"], 0,
        "wrote {tmp}/x.png")),
    "6 security: tiny local SD + CLIP offline, no inet connect()": _offline(_tiny_sd_and_clip),
    "6 security: uncached hub id offline": _offline(lambda tmp: Case(
        ["generate", "a red ball", "--expert", "sd:stabilityai/not-cached-model", "--out", "{tmp}/x.png", "-q"], 2,
        "model 'stabilityai/not-cached-model' not found")),
    "6 security: batch offline": _offline(lambda tmp: Case(BATCH, 0, "2 done", files={"j.jsonl": jsonl(
        job(), job("a blue box"))})),
    "6 security: symlink <out>/.probe.0 -> victim planted before batch": _planted_probe,
    "6 security: symlink <out>/r0_raw.png.tmp -> victim planted before batch": _planted_tmp,
    "6 security: job scene naming a system-like file": _system_file,
})


@pytest.mark.parametrize("row", list(CLI))
def test_cli_row(row, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = CLI[row]
    if isinstance(entry, Case):
        entry.run(tmp_path, capsys, monkeypatch)
    elif isinstance(entry, list):
        for case in entry:
            case.run(tmp_path, capsys, monkeypatch)
    else:
        entry(tmp_path, capsys, monkeypatch)


def test_6_security_grep_no_unsafe_loaders_pickle_or_eval():
    """poegen/ parses YAML with SafeLoader only and has no pickle, torch.load, eval or exec."""
    root = Path(poegen.__file__).parent
    unsafe = {
        r"yaml\.(unsafe_load|full_load|load_all)\(|Loader=yaml\.(Loader|UnsafeLoader|FullLoader)": "unsafe YAML loader",
        r"\bimport pickle\b|\bpickle\.|\bimport dill\b|\bcloudpickle\b|\bmarshal\.loads?\(": "pickle",
        r"(?<![\w.])(eval|exec)\(": "eval/exec",
    }
    found = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        for pattern, what in unsafe.items():
            found += [f"{path.name}: {what}: {m.group()}" for m in re.finditer(pattern, text)]
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                found.append(f"{path.name}: torch.load without weights_only=True")
        for m in re.finditer(r"yaml\.load\(([^)]*)\)", text):  # only through a SafeLoader subclass
            loader = re.search(r"Loader=(\w+)", m.group(1))
            if not loader or not re.search(rf"class {loader.group(1)}\(yaml\.SafeLoader\)", text):
                found.append(f"{path.name}: yaml.load without a SafeLoader")
    assert not found, found


# ---- group 5: Python API -------------------------------------------------------------------------

def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class Toy:
    """x0_hat = x / (1 + sigma^2) (a N(0, I) prior in 2-D), with faults switched on by arguments."""

    shape = (2,)

    def __init__(self, name, nan_rows=None, first_level_only=True, out=None):
        self.name, self.nan_rows, self.first, self.out = name, nan_rows, first_level_only, out

    def denoise(self, x, sigma):
        x0 = x / (1 + sigma ** 2)
        if self.out is not None:
            return self.out(x0)
        if self.nan_rows is not None and (not self.first or float(sigma) > 79):
            x0 = x0.clone()
            x0[self.nan_rows(x.shape[0])] = math.nan
        return x0


class Pot:
    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def log_potential(self, x0):
        return self.fn(x0)


def half(n):
    return slice(0, n // 2)


def prior(name="prior"):
    return Gaussian(torch.zeros(2), torch.eye(2), name=name)


def run(product, sampler="poe", n=8, steps=3, **kw):
    return poegen.sample(product, sampler=sampler, num_particles=n, num_steps=steps, generator=gen(), **kw)


def _warned(caplog, *words):
    return [r for r in caplog.records if r.levelno == logging.WARNING and all(w in r.getMessage() for w in words)]


def _expert_nan_half(caplog):
    r = run(poegen.Product([Toy("nan-some", half)]))
    assert _warned(caplog, "expert nan-some", "4 particle(s)", "dropped")
    alive = torch.isfinite(r.log_w)
    assert alive.any() and torch.isfinite(r.x[alive]).all()
    assert bool(torch.isneginf(r.log_w[~torch.isfinite(r.x).all(1)]).all())  # a NaN row is always marked dead


def _expert_nan_half_ancestral(caplog):
    r = run(poegen.Product([Toy("nan-some", half)]), sampler="ancestral")
    bad_rows = ~torch.isfinite(r.x).all(1)
    assert bad_rows.any() and bool(torch.isneginf(r.log_w[bad_rows]).all())  # every NaN row is marked dead
    assert torch.isfinite(r.x[torch.isfinite(r.log_w)]).all()
    assert _warned(caplog, "expert nan-some")
    best = run(poegen.Product([Toy("nan-some", half)]), sampler="ancestral", select="best")
    assert best.x.shape == (1, 2) and torch.isfinite(best.x).all()


def _expert_nan_half_best_of_n(caplog):
    r = run(poegen.Product([Toy("nan-some", half)]), sampler="best-of-n")
    assert r.x.shape == (1, 2) and torch.isfinite(r.x).all() and torch.isfinite(r.log_w).all()


def _expert_nan_all(caplog):
    with pytest.raises(poegen.AllParticlesDead, match="killed by expert nan-all"):
        run(poegen.Product([Toy("nan-all", lambda n: slice(None))]))


def _expert_wrong_shape(caplog):
    with pytest.raises(ValueError, match=r"expert wrong-shape returned shape \(8, 1\) for input \(8, 2\)"):
        run(poegen.Product([Toy("wrong-shape", out=lambda x0: x0[:, :1])]))


def _expert_batch_one(caplog):
    with pytest.raises(ValueError, match=r"expert batch-one returned shape \(1, 2\) for input \(8, 2\)"):
        run(poegen.Product([Toy("batch-one", out=lambda x0: x0[:1])]))


def _expert_float64(caplog):
    r = run(poegen.Product([Toy("f64", out=lambda x0: x0.double())]))
    assert r.x.shape == (8, 2) and torch.isfinite(r.x).all() and torch.isfinite(r.log_w).any()


def _weights_sum_zero(caplog):
    with pytest.raises(ValueError, match="must sum to a positive value at every position"):
        run(poegen.Product([prior("a"), prior("b")], weights=[1, -1]))


def _weights_negative(caplog):
    with pytest.raises(ValueError, match="must sum to a positive value at every position"):
        run(poegen.Product([prior("a"), prior("b")], weights=[-1, -1]))


def _weights_nan(caplog):
    with pytest.raises(ValueError, match="weights of a is nan, not a finite number"):
        poegen.Product([prior("a"), prior("b")], weights=[math.nan, 1])


def _lambdas_nan(caplog):
    with pytest.raises(ValueError, match=r"lambdas of GaussianLikelihood\[0\] is nan, not a finite number"):
        poegen.Product([prior()], potentials=[GaussianLikelihood(torch.zeros(2), torch.eye(2))], lambdas=[math.nan])


def _weights_short(caplog):
    with pytest.raises(ValueError, match="Product: weights has 1 entries for 2 experts"):
        poegen.Product([prior("a"), prior("b")], weights=[1.0])


def _dead_everywhere(sampler):
    def row(caplog):
        with pytest.raises(poegen.AllParticlesDead, match="all particles died at sigma=80, killed by potential dead"):
            run(poegen.Product([prior()], potentials=[Pot("dead", lambda x0: torch.full(x0.shape[:1], -math.inf))]),
                sampler=sampler)
    return row


def _dead_everywhere_ancestral(caplog):
    r = run(poegen.Product([prior()], potentials=[Pot("dead", lambda x0: torch.full(x0.shape[:1], -math.inf))]),
            sampler="ancestral")
    assert r.x.shape == (8, 2) and torch.isfinite(r.x).all()  # potentials are off in this preset


def _potential_nan_half(caplog):
    def nan_half(x0):
        v = torch.zeros(x0.shape[0], dtype=x0.dtype)
        v[: x0.shape[0] // 2] = math.nan
        return v
    run(poegen.Product([prior()], potentials=[Pot("halfnan", nan_half)]), sampler="smc")
    assert _warned(caplog, "potential halfnan", "NaN")  # a WARNING naming it, not only INFO


def _potential_bad_shape(caplog):
    with pytest.raises(ValueError, match=r"potential badshape returned shape \(8, 1\); expected \(8,\)"):
        run(poegen.Product([prior()], potentials=[Pot("badshape", lambda x0: x0[:, :1])]))
    with pytest.raises(ValueError, match=r"potential scalar returned shape \(\); expected \(8,\)"):
        run(poegen.Product([prior()], potentials=[Pot("scalar", lambda x0: x0.sum())]))


def _one_particle(caplog):
    for sampler in ("poe", "best-of-n"):
        r = run(poegen.Product([prior()], potentials=[Pot("lin", lambda x0: x0[:, 0])]), sampler=sampler, n=1)
        assert r.x.shape == (1, 2) and torch.isfinite(r.x).all()


def _zero_sizes(caplog):
    with pytest.raises(ValueError, match="num_particles and num_steps must be >= 1, got 0 and 5"):
        run(poegen.Product([prior()]), n=0, steps=5)
    with pytest.raises(ValueError, match="num_particles and num_steps must be >= 1, got 8 and 0"):
        run(poegen.Product([prior()]), steps=0)


def _fractional_particles(caplog):
    with pytest.raises(ValueError, match=r"num_particles=2.5: expected a whole number >= 1"):
        run(poegen.Product([prior()]), n=2.5)


def _no_shape(caplog):
    class Shapeless:
        def denoise(self, x, sigma):
            return x
    with pytest.raises(ValueError, match=r"no expert declares a sample shape: pass shape=\(...\)"):
        run(poegen.Product([Shapeless()]))


def _expert_raises(caplog):
    class Boom(Exception):
        pass

    error = Boom("the model broke")

    def explode(x0):
        raise error
    with pytest.raises(Boom) as caught:
        run(poegen.Product([Toy("boom", out=explode)]))
    assert caught.value is error  # the original exception, unchanged


def _bad_options(caplog):
    p = poegen.Product([prior()])
    for options, message in ((dict(mcmc_stepz=3), r"unknown field\(s\) mcmc_stepz; allowed: "),
                             (dict(resample="nope"), "multinomial"),
                             (dict(sigma_min=-1.0), "need 0 < sigma_min < sigma_max"),
                             (dict(sigmas=[3.0, 2.0, 1.0]), r"sigmas must be 4 positive decreasing values"),
                             (dict(rho=0.0), r"rho=0.0: the Karras schedule's exponent")):
        with pytest.raises(ValueError, match=message):
            run(p, **options)
    with pytest.raises(ValueError, match="unknown sampler 'nope'; available: ancestral, best-of-n"):
        run(p, sampler="nope")
    with pytest.raises(ValueError, match="constant, linear, exponential"):
        poegen.Product([prior()], schedule="cubic")


def _empty_product(caplog):
    with pytest.raises(ValueError, match="Product needs at least one generative expert"):
        poegen.Product([])

    class NoDenoise:
        name = "mute"
    with pytest.raises(TypeError, match=r"generative expert mute has no denoise\(x, sigma\) method"):
        poegen.Product([NoDenoise()])


def _shapes_product():
    from poegen.job import Job
    from poegen.pipeline import products
    return products(Job(prompt="a red ball and a blue box", particles=2, steps=3))[0][1]


def _determinism_same_seed(caplog):
    make = lambda: poegen.Product([Gaussian(torch.zeros(2), torch.eye(2)), Gaussian(torch.ones(2), 2 * torch.eye(2))])  # noqa
    a, b = run(make(), n=2000, steps=5), run(make(), n=2000, steps=5)
    assert torch.equal(a.x, b.x) and torch.equal(a.log_w, b.log_w) and a.log_Z == b.log_Z
    a, b = run(_shapes_product(), n=2, steps=3), run(_shapes_product(), n=2, steps=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.log_w, b.log_w) and a.log_Z == b.log_Z


def _determinism_threads(caplog):
    make = lambda: poegen.Product([Gaussian(torch.zeros(2), torch.eye(2)), Gaussian(torch.ones(2), 2 * torch.eye(2))])  # noqa
    results = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results[threads] = (run(make(), n=2000, steps=5), run(_shapes_product(), n=2, steps=1))  # 2 threads on a
            # busy small machine can be many times slower, so the shapes world runs one level
    finally:
        torch.set_num_threads(1)
    (g1, s1), (g2, s2) = results[1], results[2]
    assert torch.equal(g1.x, g2.x) and torch.equal(g1.log_w, g2.log_w)  # Gaussian: bitwise
    # the shapes world's convolutions may reduce in another order: equal up to the last bits, not guaranteed bitwise
    assert torch.allclose(s1.x, s2.x, atol=1e-4) and abs(s1.log_Z - s2.log_Z) < 1e-3


API = {
    "5 API: expert returns NaN for half the particles (poe)": _expert_nan_half,
    "5 API: same, sampler='ancestral'": _expert_nan_half_ancestral,
    "5 API: same, best-of-n": _expert_nan_half_best_of_n,
    "5 API: expert returns NaN for all particles": _expert_nan_all,
    "5 API: expert returns shape (N, 1)": _expert_wrong_shape,
    "5 API: expert returns batch 1 instead of N": _expert_batch_one,
    "5 API: expert returns float64": _expert_float64,
    "5 API: weights [1, -1] (sum 0)": _weights_sum_zero,
    "5 API: weights [-1, -1] (sum < 0)": _weights_negative,
    "5 API: weights [nan, 1]": _weights_nan,
    "5 API: lambdas [nan]": _lambdas_nan,
    "5 API: weights list shorter than experts": _weights_short,
    "5 API: potential -inf everywhere (poe)": _dead_everywhere("poe"),
    "5 API: potential -inf everywhere (best-of-n)": _dead_everywhere("best-of-n"),
    "5 API: potential -inf everywhere (ancestral)": _dead_everywhere_ancestral,
    "5 API: potential NaN for half the particles": _potential_nan_half,
    "5 API: potential returns (N, 1) / a scalar": _potential_bad_shape,
    "5 API: num_particles=1 (poe, best-of-n)": _one_particle,
    "5 API: num_particles=0 / num_steps=0": _zero_sizes,
    "5 API: num_particles=2.5": _fractional_particles,
    "5 API: expert without shape, no shape=": _no_shape,
    "5 API: expert raising inside denoise": _expert_raises,
    "5 API: unknown sampler option / resample scheme / schedule; bad sigma_min, sigmas": _bad_options,
    "5 API: Product([]), expert without denoise": _empty_product,
    "5 API: determinism: same seed twice, same thread count": _determinism_same_seed,
    "5 API: determinism: 1 vs 2 torch threads": _determinism_threads,
}


@pytest.mark.parametrize("row", list(API))
def test_api_row(row, caplog):
    with caplog.at_level(logging.INFO, logger="poegen"):
        API[row](caplog)


def test_the_table_has_one_row_per_battery_case():
    groups = [r.split(":")[0] for r in list(CLI) + list(API)] + ["6 security"]  # + the grep test
    assert {g: groups.count(g) for g in set(groups)} == {"4 batch": 32, "5 API": 26, "6 security": 8}
