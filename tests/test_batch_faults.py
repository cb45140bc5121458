"""Faults provoked for real on `poegen batch` and `generate`: SIGINT and SIGTERM at random moments, two
processes on one folder, accelerate launch, a full disk (the file-size limit, and a tiny tmpfs where mounting is
allowed), and a 20,000-line job file resumed. Each asserts what a user finds in the folder afterwards."""
import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
POEGEN = [sys.executable, "-m", "poegen"]
PROMPTS = ["a red ball", "a blue box", "a green wedge", "a yellow ball", "a cyan box", "a red box"]


def write_jobs(path: Path, n: int, steps: int = 3, scene: bool = False) -> Path:
    lines = [{"prompt": PROMPTS[i % len(PROMPTS)], "steps": steps, "particles": 2} for i in range(n)]
    if scene:  # two frames and a GIF: more files per item, so more writes to land in
        shutil.copy("examples/stacking.yaml", path.parent / "s.yaml")
        lines[1] = {"scene": "s.yaml", "frames": 2, "steps": steps, "particles": 2}
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))
    return path


def lines_of(out: Path):
    """Every manifest line, each checked whole (JSON, newline-terminated)."""
    records = []
    for f in sorted(out.glob("manifest*.jsonl")):
        data = f.read_bytes()
        assert not data or data.endswith(b"\n"), f"{f.name} ends on a torn record"
        records += [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    return records


def check_folder(out: Path):
    """No temporary file; every PNG and GIF whole; returns {id: {file: (mtime_ns, bytes)}} of the ok items."""
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")], "a temporary file was left"
    for p in out.iterdir():
        if p.suffix in (".png", ".gif"):
            with Image.open(p) as im:
                im.load()  # a truncated file raises here
    ok = {}
    for r in lines_of(out):
        if r["status"] == "ok":
            names = r["files"] + [f[:-4] + "_raw.png" for f in r["files"] if f.endswith(".png")]
            ok[r["id"]] = {n: ((out / n).stat().st_mtime_ns, (out / n).read_bytes()) for n in names}
    return ok


def _ok(out: Path) -> int:
    """How many ok records the manifests hold now (a line being written is not counted)."""
    n = 0
    for f in out.glob("manifest*.jsonl"):
        for line in f.read_text().splitlines():
            try:
                n += json.loads(line)["status"] == "ok"
            except ValueError:
                pass
    return n


def wait_for_lock(proc, out: Path, rank: int = 0, timeout: float = 120):
    """Until the batch holds its rank's lock (it is then inside run_batch, with its signal handlers set)."""
    lock, deadline = out / f"manifest.{rank}.lock", time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if lock.exists() and lock.read_text().strip() == str(proc.pid):
            return True
        time.sleep(0.02)
    return False


def test_sigint_and_sigterm_at_random_moments_leave_whole_files_and_the_resume_does_only_the_rest(tmp_path):
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", 6, scene=True), tmp_path / "out"
    cmd = POEGEN + ["batch", str(jobs), "--out", str(out), "-q"]
    rng, before = random.Random(24), {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert wait_for_lock(proc, out), proc.communicate()
        deadline = time.time() + 120  # once this run has finished an item, at a random moment of the next ones:
        while time.time() < deadline and proc.poll() is None and _ok(out) <= len(before):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.8))  # sampling, writing a PNG or the GIF, or the manifest
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
        now = check_folder(out)
        assert all(now[k] == files for k, files in before.items()), "a finished item was written again"
        before = now
        if "batch 0/1:" in stdout:  # it finished its work first (the signal came as it exited, or not at all)
            break
        assert proc.returncode == 128 + sig, (proc.returncode, stderr)
        said = "poegen: interrupted" if sig == signal.SIGINT else "poegen: terminated"
        assert stderr.strip().splitlines()[-1] == said
        assert "Traceback" not in stderr  # (pybullet's import may print a line of its own before)
    finished = len(before)
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{6 - finished} done, {finished} skipped, 0 failed" in r.stdout
    after = check_folder(out)
    assert all(after[k] == files for k, files in before.items())  # none redone
    ok = [rec["id"] for rec in lines_of(out) if rec["status"] == "ok"]
    assert sorted(ok) == [f"{i:05d}" for i in range(6)]  # every item exactly once, none lost
    assert (out / "00001.gif").exists() and (out / "00001_f01.png").exists()


def _started(proc, marker: str, lines: list):
    """Read the child's stderr until ``marker``; then keep draining it in a thread (collected in ``lines``)."""
    for line in proc.stderr:
        lines.append(line)
        if marker in line:
            threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
            return True
    return False


@pytest.mark.parametrize("sig,delay", [(signal.SIGINT, 0.5), (signal.SIGTERM, 2.0)])
def test_a_signal_during_generate_leaves_no_half_written_file_and_one_line(tmp_path, sig, delay):
    out = tmp_path / "o" / "x.png"
    proc = subprocess.Popen(POEGEN + ["-v", "generate", "--scene", "examples/stacking.yaml", "--frames", "3",
                                      "--steps", "6", "--particles", "2", "--out", str(out), "-q"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    assert _started(proc, "intra-op threads", lines), "".join(lines)  # main() has set its handlers
    time.sleep(random.Random(delay).uniform(0, delay))  # loading, sampling a frame, or writing one
    proc.send_signal(sig)
    proc.wait(timeout=120)
    time.sleep(0.2)
    if "wrote" in proc.stdout.read():  # the signal came as it exited, or not at all
        pytest.skip("generate finished before the signal")
    assert proc.returncode == 128 + sig, "".join(lines[-5:])
    assert lines[-1].strip() == ("poegen: interrupted" if sig == signal.SIGINT else "poegen: terminated")
    assert not any("Traceback" in line for line in lines)
    left = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []  # none yet, or some frames
    assert not [n for n in left if n.endswith(".tmp")], left
    for name in left:  # the frames written before the signal are whole
        with Image.open(out.parent / name) as im:
            im.load()
        assert (out.parent / name).stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_two_ranks_at_once_on_one_folder_do_every_item_exactly_once(tmp_path):
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", 6, steps=2), tmp_path / "out"
    procs = [subprocess.Popen(POEGEN + ["batch", str(jobs), "--out", str(out), "-q"],
                              env={**ENV, "RANK": str(r), "WORLD_SIZE": "2"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert [r[2] for r in results] == [0, 0], results
    assert "batch 0/2: 3 done" in results[0][0] and "batch 1/2: 3 done" in results[1][0]
    for rank in (0, 1):  # each rank wrote only its own items, in its own manifest
        ids = [json.loads(line)["id"] for line in (out / f"manifest.{rank}.jsonl").read_text().splitlines()]
        assert ids == [f"{i:05d}" for i in range(rank, 6, 2)]
    check_folder(out)
    r = subprocess.run(POEGEN + ["batch", str(jobs), "--out", str(out), "-q"], env=ENV, capture_output=True, text=True)
    assert "0 done, 6 skipped" in r.stdout  # one process over the two ranks' work: nothing left


@pytest.mark.skipif(not (Path(sys.executable).parent / "accelerate").exists(), reason="accelerate not installed")
def test_accelerate_launch_terminated_then_relaunched_does_every_item_once(tmp_path):
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", 8, steps=2), tmp_path / "out"
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "poegen", "batch", str(jobs), "--out", str(out), "-q"]
    proc = subprocess.Popen(launch, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and (not out.exists() or _ok(out) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # as a scheduler stops a job: the launcher passes SIGTERM on to its workers
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and stderr.count("poegen: terminated") == 2, stderr[-2000:]
    first = check_folder(out)
    assert 2 <= len(first) < 8, "the interrupt should land mid-batch"
    r = subprocess.run(launch, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    after = check_folder(out)
    assert all(after[k] == files for k, files in first.items())
    ok = [rec["id"] for rec in lines_of(out) if rec["status"] == "ok"]
    assert sorted(ok) == [f"{i:05d}" for i in range(8)]


def _file_size_limit(limit):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes fail with EFBIG
    return set_limit


def test_a_full_disk_stops_with_exit_4_naming_the_folder_keeps_earlier_outputs_and_resumes(tmp_path):
    out = tmp_path / "out"
    two = write_jobs(tmp_path / "two.jsonl", 2, steps=2)
    subprocess.run(POEGEN + ["batch", str(two), "--out", str(out), "-q"], env=ENV, check=True, capture_output=True)
    earlier = check_folder(out)
    four = write_jobs(tmp_path / "four.jsonl", 4, steps=2)  # the same two first lines, then two more
    r = subprocess.run(POEGEN + ["batch", str(four), "--out", str(out), "-q"], env=ENV, capture_output=True, text=True,
                       preexec_fn=_file_size_limit(1024), timeout=300)  # no PNG fits in 1 KiB
    assert r.returncode == 4, r.stderr
    assert r.stderr.count("\n") == 1 and f"in {out}" in r.stderr and "free space there" in r.stderr, r.stderr
    assert check_folder(out) == earlier  # earlier outputs intact, no temporary file, no torn manifest line
    assert not list(out.glob("00002*"))
    r = subprocess.run(POEGEN + ["batch", str(four), "--out", str(out), "-q"], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0 and "2 done, 2 skipped, 0 failed" in r.stdout, r.stderr
    assert check_folder(out).keys() == {"00000", "00001", "00002", "00003"}


def test_a_full_tmpfs_gives_enospc_the_same_way(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        out, jobs = mnt / "out", write_jobs(tmp_path / "jobs.jsonl", 3, steps=2)
        filler = mnt / "filler"
        fd = os.open(filler, os.O_CREAT | os.O_WRONLY)
        try:  # fill the disk to the last block
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        r = subprocess.run(POEGEN + ["batch", str(jobs), "--out", str(out), "-q"], env=ENV, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 4 and "no space left on device in" in r.stderr and "free space" in r.stderr, r.stderr
        assert not list(out.glob("*.png")) and not list(out.glob("*.tmp")) if out.exists() else True
        filler.unlink()
        r = subprocess.run(POEGEN + ["batch", str(jobs), "--out", str(out), "-q"], env=ENV, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0 and "3 done" in r.stdout, r.stderr
        check_folder(out)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


class _Started(BaseException):
    pass


def test_a_resume_of_20000_lines_streams_both_files_and_starts_fast(tmp_path, monkeypatch):
    import poegen.batch
    from poegen.batch import line_digest, run_batch

    n, out = 20000, tmp_path / "out"
    out.mkdir()
    with open(tmp_path / "jobs.jsonl", "w") as jobs, open(out / "manifest.0.jsonl", "w") as manifest:
        for i in range(n):
            d = {"prompt": PROMPTS[i % 3], "steps": 2, "particles": 2, **({"id": f"j{i}"} if i % 2 else {})}
            text = json.dumps(d) + "\n"
            jobs.write(text)
            if i < n - 2:
                job_id = d.get("id", f"{i:05d}")
                # no fingerprint: an unchanged line that ran is known by its digest, never checked or hashed again
                manifest.write(json.dumps({"id": job_id, "status": "ok", "files": [job_id + ".png"],
                                           "fingerprint": "-", "line": line_digest(i, text)}) + "\n")
                for name in (f"{job_id}.png", f"{job_id}_raw.png"):  # present (their bytes are not read)
                    os.close(os.open(out / name, os.O_CREAT | os.O_WRONLY, 0o644))
    started = []

    def first(job, path, **kwargs):
        started.append((time.perf_counter(), path.name, job.seed))
        raise _Started

    monkeypatch.setattr(poegen.batch, "run", first)
    for traced in (False, True):
        tracemalloc.start() if traced else None
        t = time.perf_counter()
        with pytest.raises(_Started):
            run_batch(tmp_path / "jobs.jsonl", out, progress=False)
        assert started[-1][1:] == ("19998.png", 19998)  # the first unfinished item, found without running another
        if traced:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < 600 * n, f"{peak / n:.0f} bytes a line: the job file or its jobs were held whole"
        else:
            assert started[-1][0] - t < 3, f"start-up of a resume of {n} lines: {started[-1][0] - t:.1f} s"
    with open(tmp_path / "jobs.jsonl", "a") as jobs:
        jobs.write('{"prompt": "a red ball", "stepz": 2}\n')
    with pytest.raises(ValueError, match=rf"jobs.jsonl:{n + 1}: unknown field\(s\) stepz"):
        run_batch(tmp_path / "jobs.jsonl", out, progress=False)  # refused before any work, naming the line
    assert len(started) == 2
