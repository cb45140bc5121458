"""Batch jobs: sharding gives the same bytes, a SIGKILL loses nothing, bad input is refused up front."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from poegen.batch import read_manifest, run_batch

PROMPTS = ["a red ball", "a blue box", "a green wedge", "a yellow ball", "a red ball and a blue box", "a cyan box"]


def job_file(tmp_path, n=6, steps=2):
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "steps": steps, "particles": 2}) + "\n" for p in PROMPTS[:n]))
    return path


def outputs(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.png"))}


def test_two_shards_equal_one_process(tmp_path):
    jobs = job_file(tmp_path)
    assert run_batch(jobs, tmp_path / "one", progress=False) == {"done": 6, "skipped": 0, "failed": 0}
    for rank in (0, 1):
        run_batch(jobs, tmp_path / "two", rank=rank, world=2, progress=False)
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two") and len(outputs(tmp_path / "one")) == 12
    assert len(read_manifest(tmp_path / "two")) == 6 and len(list((tmp_path / "two").glob("manifest.*.jsonl"))) == 2
    meta = json.loads(Image.open(tmp_path / "one" / "00002.png").text["poegen"])
    assert meta["job"]["prompt"] == "a green wedge" and meta["job"]["seed"] == 2
    assert "shapes[green wedge at (16.0, 27.0)]" in meta["experts"]  # one object is placed mid-floor


def test_restart_skips_finished_and_failures_are_recorded(tmp_path):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("- {prompt: a red ball, steps: 2, particles: 2}\n- {prompt: a purple ball, steps: 2}\n")
    assert run_batch(jobs, tmp_path / "out", progress=False) == {"done": 1, "skipped": 0, "failed": 1}
    rec = read_manifest(tmp_path / "out")
    assert rec["00001"]["status"] == "failed" and "purple" in rec["00001"]["error"]
    first = (tmp_path / "out" / "00000.png").stat().st_mtime_ns
    assert run_batch(jobs, tmp_path / "out", progress=False) == {"done": 0, "skipped": 1, "failed": 1}
    assert (tmp_path / "out" / "00000.png").stat().st_mtime_ns == first


def test_malformed_job_file_and_unwritable_folder_are_refused_before_work(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a red ball"}\n{"prompt": "a blue box",\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        run_batch(bad, tmp_path / "out")
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"prompt": "a red ball", "stepz": 3}\n')
    with pytest.raises(ValueError, match=r"unknown.jsonl:1: unknown field\(s\) stepz"):
        run_batch(unknown, tmp_path / "out")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not writable"):
        run_batch(job_file(tmp_path), tmp_path / "file" / "out")
    assert not (tmp_path / "out").exists()


def test_sigkill_mid_batch_then_restart_finds_every_item_once(tmp_path):
    jobs, out = job_file(tmp_path, steps=6), tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "poegen", "batch", str(jobs), "--out", str(out), "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_manifest(out) if out.exists() else {}) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(read_manifest(out))
    assert 2 <= killed_at < 6, "the kill should land mid-batch"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = [json.loads(l) for f in out.glob("manifest*.jsonl") for l in f.read_text().splitlines()]
    assert sorted(r["id"] for r in lines if r["status"] == "ok") == [f"{i:05d}" for i in range(6)]  # each exactly once
    for png in out.glob("*.png"):
        Image.open(png).verify()  # none corrupt


@pytest.mark.skipif(shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
                    reason="accelerate launcher not installed")
def test_accelerate_launch_two_processes_matches_one(tmp_path):
    jobs = job_file(tmp_path)
    run_batch(jobs, tmp_path / "one", progress=False)
    launcher = str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    # --multi_gpu is accelerate's torchrun-style launcher; with no GPU visible it starts CPU processes
    subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", "-m", "poegen", "batch", str(jobs), "--out", str(tmp_path / "two"), "-q"],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert len(list((tmp_path / "two").glob("manifest.*.jsonl"))) == 2
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two")


def test_bad_ranks_frames_without_a_scene_and_other_suffixes_are_refused(tmp_path, capsys):
    from poegen.batch import run_batch
    from poegen.cli import main

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a red ball", "steps": 1, "particles": 1}\n')
    for rank, world in ((2, 2), (0, 0), (-1, 2)):
        with pytest.raises(ValueError, match="need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE"):
            run_batch(jobs, tmp_path / "out", rank, world, progress=False)
    assert main(["generate", "a red ball", "--frames", "3", "-q"]) == 2
    assert "frames 3 needs a scene" in capsys.readouterr().err
    assert main(["generate", "a red ball", "--steps", "1", "--particles", "1", "-q", "--out", str(tmp_path / "x.jpg")]) == 2
    assert "name the file .png" in capsys.readouterr().err and not (tmp_path / "x.jpg").exists()


def test_a_torn_last_manifest_line_is_not_glued_to_the_next_record(tmp_path):
    import json

    from poegen.batch import read_manifest, run_batch

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "prompt": "a red ball", "steps": 1, "particles": 1}\n'
                    '{"id": "b", "prompt": "a blue box", "steps": 1, "particles": 1}\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.0.jsonl").write_text('{"id": "a", "status": "ok", "fi')  # a crash mid-write
    run_batch(jobs, out, progress=False)
    lines = (out / "manifest.0.jsonl").read_text().splitlines()
    assert lines[0] == '{"id": "a", "status": "ok", "fi' and all(json.loads(line)["status"] == "ok" for line in lines[1:])
    assert {k: r["status"] for k, r in read_manifest(out).items()} == {"a": "ok", "b": "ok"}


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "a red ball", "frames": "3"}', r":1: frames '3' is not a whole number"),
    ('{"prompt": "a red ball", "particles": 2.5}', r":1: particles '2.5' is not a whole number"),
    ('{"prompt": "a red ball", "seed": "abc"}', r":1: seed 'abc' is not a whole number"),
    ('{"prompt": 42}', r":1: prompt '42' is not text"),
    ('{"prompt": "a red ball", "guidance": NaN}', r":1: guidance 'nan' is not a finite number"),
    ('{"prompt": "a red ball", "seed": 18446744073709551616}', r":1: seed 18446744073709551616 is outside"),
    ('{"id": "x_raw", "prompt": "a red ball"}', r":1: id 'x_raw' contains '/' or ends like a file poegen adds"),
    ('{"id": "a", "prompt": "a"}\n{"id": "a", "prompt": "b"}', r":2: id 'a' is also the id of .*:1"),
    ('{"scene": "missing.yaml"}', r":1: scene 'missing.yaml' not found \(looked for .*missing.yaml\)"),
])
def test_job_fields_are_checked_before_any_work(tmp_path, line, message):
    from poegen.batch import read_jobs

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        read_jobs(jobs)


def test_relative_scene_paths_resolve_against_the_job_file(tmp_path):
    from poegen.batch import read_jobs

    (tmp_path / "specs").mkdir()
    shutil.copy("examples/stacking.yaml", tmp_path / "specs" / "s.yaml")
    (tmp_path / "jobs.jsonl").write_text('{"scene": "specs/s.yaml"}\n')
    (_, job), = read_jobs(tmp_path / "jobs.jsonl")
    assert job.scene == str(tmp_path / "specs" / "s.yaml")


def _two_jobs(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "prompt": "a red ball", "steps": 1, "particles": 1}\n'
                    '{"id": "b", "prompt": "a blue box", "steps": 1, "particles": 1}\n')
    return jobs


def test_a_second_batch_on_the_same_rank_is_refused_with_the_holder(tmp_path):
    from poegen.batch import _lock, run_batch

    out = tmp_path / "out"
    out.mkdir()
    held = _lock(out, 0)
    with pytest.raises(ValueError, match=rf"rank 0 is already being run by process {os.getpid()}"):
        run_batch(_two_jobs(tmp_path), out, progress=False)
    held.close()
    assert run_batch(_two_jobs(tmp_path), out, progress=False)["done"] == 2


def test_a_full_disk_records_the_item_leaves_no_temporary_file_and_stops(tmp_path, monkeypatch):
    import errno

    from PIL import Image as PILImage

    from poegen.batch import read_manifest, run_batch

    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(PILImage.Image, "save", full)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="no space left on device in .*item a is recorded as failed"):  # exit 4
        run_batch(_two_jobs(tmp_path), out, progress=False)
    records = read_manifest(out)
    assert records == {"a": {**records["a"], "status": "failed", "error": "no space left on device"}}
    assert not [p for p in out.iterdir() if p.suffix == ".tmp" or p.name.startswith(".a.png")]


def test_planted_links_in_the_output_folder_are_never_written_through(tmp_path):
    from poegen.batch import run_batch

    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in ("a.png", "a_raw.png", ".probe.0", "a_raw.png.tmp"):
        (out / name).symlink_to(victim)
    assert run_batch(_two_jobs(tmp_path), out, progress=False)["done"] == 2
    assert victim.read_text() == "keep me"
    assert not (out / "a.png").is_symlink() and Image.open(out / "a.png").size == (256, 256)


def test_a_restart_after_the_job_file_changed_reruns_what_changed(tmp_path, caplog):
    import logging

    from poegen.batch import run_batch

    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    lines = ['{"prompt": "a red ball", "steps": 1, "particles": 1}', '{"prompt": "a blue box", "steps": 1, "particles": 1}']
    jobs.write_text("\n".join(lines) + "\n")
    assert run_batch(jobs, out, progress=False) == {"done": 2, "skipped": 0, "failed": 0}
    assert run_batch(jobs, out, progress=False) == {"done": 0, "skipped": 2, "failed": 0}
    jobs.write_text("\n".join(['{"prompt": "a green wedge", "steps": 1, "particles": 1}'] + lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="poegen.batch"):
        counts = run_batch(jobs, out, progress=False)  # positions shifted: every item's job changed
    assert counts == {"done": 3, "skipped": 0, "failed": 0}
    assert "item 00000 changed since it was run" in caplog.text
    meta = json.loads(Image.open(out / "00000.png").text["poegen"])
    assert meta["job"]["prompt"] == "a green wedge"  # the new job was generated, not skipped


def test_a_resume_removes_only_its_own_items_temporary_files(tmp_path):
    from poegen.batch import _remove_stale

    names = [".x.png.ab_c12.tmp", ".x_raw.png.k9.tmp", ".x_f01.png.z.tmp", "x.gif.tmp",  # item x's leftovers
             ".x.png.y.png.abc.tmp", ".xy.png.abc.tmp", ".x.png.abc.tmpz"]  # items "x.png.y" and "xy", and no tmp
    for n in names:
        (tmp_path / n).write_bytes(b"")
    _remove_stale(tmp_path, "x", names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[4:])


def test_fingerprint_leaves_out_fields_left_none(tmp_path):
    """A field added to Job later (default None: video, first_frame, control) must not make finished items of older
    manifests run again; a field's value, default or not, is part of the hash, and so are the bytes of the files it
    names, a control video's folder of PNG frames included."""
    import dataclasses
    import hashlib

    from poegen.batch import fingerprint
    from poegen.job import Job

    job = Job(prompt="a red ball", seed=3)
    asked = {k: v for k, v in dataclasses.asdict(job).items() if v is not None}
    assert "seed" in asked and not {"video", "first_frame", "control"} & set(asked)
    assert fingerprint(job) == hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:16]
    assert fingerprint(Job(prompt="a red ball", steps=7)) != fingerprint(Job(prompt="a red ball"))
    frames = tmp_path / "control"
    frames.mkdir()
    for name in ("000.png", "001.png"):
        (frames / name).write_bytes(b"frame " + name.encode())
    clip = Job(prompt="a red ball", video="gif", control=str(frames))
    before = fingerprint(clip)
    (frames / "001.png").write_bytes(b"another frame")
    assert fingerprint(clip) != before


def test_an_empty_job_file_is_an_error_naming_it(tmp_path, capsys):
    """A file with no jobs (empty, blank lines, an empty list, an empty YAML file) is refused with exit 2 and one
    line, before any folder is made: a batch that "finished" having run nothing would hide the mistake."""
    from poegen.cli import main

    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("none.json", "[]"), ("none.yaml", "")):
        path = tmp_path / name
        path.write_text(text)
        assert main(["batch", str(path), "--out", str(tmp_path / "out"), "-q"]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"poegen: error: no jobs in {path}; write ") and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists()


def test_the_example_job_file_runs(tmp_path):
    """examples/jobs.jsonl, the job file the batch docs start from: every item runs, its scene found beside it."""
    example = Path(__file__).resolve().parent.parent / "examples" / "jobs.jsonl"
    assert run_batch(example, tmp_path / "out", progress=False) == {"done": 4, "skipped": 0, "failed": 0}
    assert sorted(read_manifest(tmp_path / "out")) == ["counted", "left-of", "pair", "stack"]
    for name in ("pair", "stack", "left-of", "counted"):
        Image.open(tmp_path / "out" / f"{name}.png").verify()
