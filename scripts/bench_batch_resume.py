"""Start-up of a resumed batch: a job file of N lines whose manifest marks all but a few done (their files present),
timed from `poegen batch` being called to its first item starting, with the process's peak RSS.

    python scripts/bench_batch_resume.py                  # 1,000 and 100,000 lines, 10 left to run in each
    python scripts/bench_batch_resume.py --lines 100000 --left 10

The first item is stopped as soon as it starts (nothing is sampled), so the figures are reading the job file and the
manifest, checking every line and finding what remains. Each size runs in a fresh process (peak RSS is per process);
"imports" is the RSS after importing poegen's batch route (torch included), before the job file is opened."""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(folder: Path, lines: int, left: int, legacy: bool = False):
    """jobs.jsonl with ``lines`` jobs and out/ with a manifest marking all but the last ``left`` done, files present
    (``legacy``: records as poegen wrote them before line digests, so every line is checked and fingerprinted)."""
    from poegen.batch import fingerprint, line_digest
    from poegen.job import Job

    out = folder / "out"
    out.mkdir(parents=True)
    with open(folder / "jobs.jsonl", "w") as jobs, open(out / "manifest.0.jsonl", "w") as manifest:
        for i in range(lines):
            d = {"prompt": ["a red ball", "a blue box", "a green wedge left of a yellow ball"][i % 3], "steps": 2,
                 "particles": 2}
            text = json.dumps(d) + "\n"
            jobs.write(text)
            if i < lines - left:
                job_id = f"{i:05d}"
                record = {"id": job_id, "status": "ok", "files": [f"{job_id}.png"],
                          "fingerprint": fingerprint(Job.from_dict({**d, "seed": i}, "bench"))}
                if not legacy:
                    record["line"] = line_digest(i, text)
                manifest.write(json.dumps({**record, "seconds": 0.5}) + "\n")
                for name in (f"{job_id}.png", f"{job_id}_raw.png"):
                    open(out / name, "wb").close()


class _Started(BaseException):
    """Raised by the stand-in for pipeline.run: the first item has started."""


def child(folder: str):
    """Run `poegen batch` on the folder until its first item starts; print one JSON line of figures."""
    import poegen.batch
    from poegen.cli import main

    base = int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmRSS:")))
    started = []

    def first_item(job, out, *args, **kwargs):
        started.append((time.perf_counter(), time.process_time()))
        raise _Started()

    poegen.batch.run = first_item
    t, cpu = time.perf_counter(), time.process_time()
    try:
        main(["batch", str(Path(folder) / "jobs.jsonl"), "--out", str(Path(folder) / "out"), "-q"])
    except _Started:
        pass
    if not started:
        raise SystemExit("the batch ended without starting an item")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"startup_s": round(started[0][0] - t, 3), "cpu_s": round(started[0][1] - cpu, 3),
                      "peak_rss_mib": round(peak / 1024, 1),
                      "imports_rss_mib": round(base / 1024, 1)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, nargs="+", default=[1000, 100000])
    ap.add_argument("--left", type=int, default=10, help="items not yet done")
    ap.add_argument("--legacy", action="store_true", help="a manifest without line digests (written before them)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"CPU: {cpu}, {os.cpu_count()} cores; python {sys.version.split()[0]}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for lines in args.lines:
        with tempfile.TemporaryDirectory(prefix="poegen-bench-resume-") as tmp:
            t = time.perf_counter()
            build(Path(tmp), lines, args.left, args.legacy)
            built = time.perf_counter() - t
            r = subprocess.run([sys.executable, __file__, "--child", tmp], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"the resumed batch failed:\n{r.stderr[-2000:]}")
            fig = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{lines:>7} lines, {lines - args.left} done{' (legacy records)' if args.legacy else ''}, "
                  f"{args.left} left (built in {built:.0f} s): "
                  f"start-up {fig['startup_s']:.2f} s to the first item ({fig['cpu_s']:.2f} s CPU), "
                  f"peak RSS {fig['peak_rss_mib']:.0f} MiB "
                  f"({fig['imports_rss_mib']:.0f} MiB after imports, "
                  f"+{max(0.0, fig['peak_rss_mib'] - fig['imports_rss_mib']):.0f} MiB for the batch)")


if __name__ == "__main__":
    main()
