"""Batch jobs that lose nothing: a manifest per process, restarts skip finished items, failures are
recorded and do not stop the batch, outputs are written atomically, and items are sharded over
processes (``accelerate launch -m poegen batch ...`` sets RANK and WORLD_SIZE) by index, so an item's
output never depends on sharding or order (its seed is in the job, default: its index)."""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import time
import traceback
from pathlib import Path
from typing import Dict, List, Tuple

from tqdm.auto import tqdm

from .job import Job
from .pipeline import check_writable, run
from .validation import read_file, unique_keys

log = logging.getLogger("poegen.batch")
RESERVED = re.compile(r"(_raw|_f\d+)$")  # suffixes of the files an item writes besides ID.png


def read_jobs(path: str | Path) -> List[Tuple[str, Job]]:
    """(id, Job) pairs from a JSONL file (one object a line) or a YAML/JSON list; errors name the line or item."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"job file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"job file {path} is a folder; give a .jsonl, .yaml or .json file of jobs")
    items = []
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):  # a BOM is not content
            if line.strip():
                try:
                    items.append((f"{path}:{n}", json.loads(line, object_pairs_hook=unique_keys)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
                except ValueError as e:  # a key given twice
                    raise ValueError(f"{path}:{n}: {e}") from None
    else:
        try:
            data = read_file(path, "job")
        except ValueError:
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
            if len(lines) > 1 and all(ln.lstrip().startswith("{") for ln in lines):
                raise ValueError(f"{path}: this looks like one JSON job a line; name the file .jsonl") from None
            raise
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of jobs")
        items = [(f"{path}: item {i}", d) for i, d in enumerate(data)]
    jobs, ids = [], {}
    every = {}  # every job's id (given or positional), to name the job whose files a suffixed id would overwrite
    for i, (where, d) in enumerate(items):
        if isinstance(d, dict) and isinstance(d.get("id", ""), (str, int)) and not isinstance(d.get("id"), bool):
            every.setdefault(str(d.get("id", f"{i:05d}")), where)
    for i, (where, d) in enumerate(items):
        if not isinstance(d, dict):
            raise ValueError(f"{where}: a job is a mapping like {{\"prompt\": \"a red ball\"}}")
        d = dict(d)
        job_id = d.pop("id", f"{i:05d}")
        if isinstance(job_id, bool) or not isinstance(job_id, (str, int)):
            raise ValueError(f"{where}: id must be text or a whole number, got {type(job_id).__name__}")
        job_id = str(job_id)
        if not job_id.strip():
            raise ValueError(f"{where}: id is empty; give it a name (it names the item's files) or leave id out")
        if "/" in job_id or RESERVED.search(job_id):
            stem = RESERVED.sub("", job_id)
            clash = f", so its files would overwrite those of id {stem[:40]!r} ({every[stem]})" if stem in every else ""
            raise ValueError(f"{where}: id {job_id[:40]!r} contains '/' or ends like a file poegen adds (_raw, _f00)"
                             f"{clash}; rename it")
        if job_id in ids:
            raise ValueError(f"{where}: id {job_id[:40]!r} is also the id of {ids[job_id]}; give each job its own")
        ids[job_id] = where
        for key in ("scene", "layout", "config", "image", "mask"):  # relative to the job file's folder
            if isinstance(d.get(key), str) and not Path(d[key]).is_absolute():
                resolved = path.parent / d[key]
                if not resolved.exists():
                    raise ValueError(f"{where}: {key} {d[key]!r} not found (looked for {resolved})")
                d[key] = str(resolved)
        d.setdefault("seed", i)
        jobs.append((job_id, Job.from_dict(d, where)))
    return jobs


def read_manifest(out: Path) -> Dict[str, dict]:
    """The last record of every item over all processes' manifests (a torn last line is ignored)."""
    records = {}
    for f in sorted(out.glob("manifest*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not (isinstance(r, dict) and isinstance(r.get("id"), str) and "status" in r):
                log.warning("%s: a line that is not a record of poegen's is ignored: %s", f.name, line[:60])
                continue  # a hand-edited or foreign line: ignored like a torn one, never a crash
            records[r["id"]] = r
    return records


def run_batch(job_file: str | Path, out: str | Path, rank: int = 0, world: int = 1, progress: bool = True) -> Dict[str, int]:
    """Run this process's share of the jobs; returns counts of done, skipped and failed items."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world}: need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    jobs = read_jobs(job_file)  # a malformed file is refused before any work
    out = Path(out)
    try:
        check_writable(out)
    except OSError as e:
        raise ValueError(f"output folder {out} is not writable: {e}") from None
    lock = _lock(out, rank)  # held while this batch runs: a second one on this rank is refused
    records = read_manifest(out)
    # an item is finished when its record is ok and its files are still there (a deleted image is made again)
    finished = {k: r.get("fingerprint") for k, r in records.items() if r["status"] == "ok" and _present(out, r)}
    mine = [(k, j) for i, (k, j) in enumerate(jobs) if i % world == rank]
    leftovers = [n for n in os.listdir(out) if n.endswith(".tmp")]  # temporary files of a killed run
    counts = {"done": 0, "skipped": 0, "failed": 0}
    try:
        path = out / f"manifest.{rank}.jsonl"
        torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        with open(path, "a") as manifest:
            if torn:  # a crash left the last record unterminated: never glue the next one onto it
                manifest.write("\n")
            for job_id, job in tqdm(mine, desc=f"batch {rank}/{world}", disable=None if progress else True):
                fp = fingerprint(job)
                if finished.get(job_id, "") == fp:
                    counts["skipped"] += 1
                    continue
                if job_id in finished:
                    log.warning("item %s changed since it was run (its job or a file it reads); running it again",
                                job_id)
                elif records.get(job_id, {}).get("status") == "ok":
                    log.warning("item %s: a file it wrote is missing; running it again", job_id)
                _remove_stale(out, job_id, leftovers)
                t = time.perf_counter()
                try:
                    files = [p.name for p in run(job, out / f"{job_id}.png", progress=progress)]
                    record = {"id": job_id, "status": "ok", "files": files, "fingerprint": fp}
                    counts["done"] += 1
                    _remove_replaced(out, records.get(job_id), files)
                except Exception as e:  # one item's failure is recorded, the batch goes on
                    full = isinstance(e, OSError) and e.errno == errno.ENOSPC
                    log.warning("item %s failed: %s", job_id, e)
                    record = {"id": job_id, "status": "failed", "trace": traceback.format_exc(limit=3),
                              "error": "no space left on device" if full else f"{type(e).__name__}: {e}"}
                    counts["failed"] += 1
                    if full:  # later items would fail the same way: record this one, then stop
                        _append(manifest, record, t)
                        raise ValueError(f"no space left on device in {out}; item {job_id} is recorded as failed and "
                                         "the batch stops (free space and run it again: finished items are kept)") from None
                _append(manifest, record, t)
    finally:
        lock.close()
    return counts


def fingerprint(job: Job) -> str:
    """A hash of everything an item's output depends on: every job field and the bytes of the files it reads."""
    import hashlib
    from dataclasses import asdict

    h = hashlib.sha256(json.dumps(asdict(job), sort_keys=True).encode())
    for key in ("scene", "layout", "config", "image", "mask"):
        value = getattr(job, key)
        if value and Path(value).is_file():
            h.update(Path(value).read_bytes())
    return h.hexdigest()[:16]


def _outputs(files) -> set:
    """Every file an item's record stands for: its listed PNGs with their _raw twins, and its GIF."""
    names = set()
    for name in files or ():
        names.add(name)
        if name.endswith(".png"):
            names.add(name[:-4] + "_raw.png")
    return names


def _present(out: Path, record: dict) -> bool:
    """Whether every file of an ok record is still in the folder."""
    return all((out / name).is_file() for name in _outputs(record.get("files")))


def _remove_replaced(out: Path, old: dict | None, files: List[str]):
    """After an item ran again, remove the files its previous ok run wrote that this run did not (frames 3 -> 1
    leaves no x_f00.png or x.gif of the old job beside the new x.png)."""
    if not old or old.get("status") != "ok":
        return
    for name in _outputs(old.get("files")) - _outputs(files):
        if "/" not in name and (out / name).is_file():
            (out / name).unlink()
            log.warning("removed %s, written by this item's previous run", name)


def _remove_stale(out: Path, job_id: str, leftovers: List[str]):
    """Remove the temporary files (of ``leftovers``) a killed run left for this item: ``save_png``'s
    ``.ID[_fNN][_raw].png.*.tmp`` and the GIF's ``ID.gif.tmp``; only this rank runs the item, so none is being written."""
    stale = re.compile(rf"\.{re.escape(job_id)}(_f\d+)?(_raw)?\.png\.[^./]*\.tmp|{re.escape(job_id)}\.gif\.tmp", re.S)
    for name in leftovers:
        if stale.fullmatch(name) and not (out / name).is_dir():
            (out / name).unlink(missing_ok=True)


def _append(manifest, record: dict, started: float):
    """One record, fsynced, with the item's seconds."""
    record["seconds"] = round(time.perf_counter() - started, 2)
    manifest.write(json.dumps(record) + "\n")
    manifest.flush()
    os.fsync(manifest.fileno())


def _lock(out: Path, rank: int):
    """An exclusive lock on this rank's manifest (fcntl; the holder's pid in the lock file), or a refusal."""
    import fcntl

    handle = open(out / f"manifest.{rank}.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(f"{out}: rank {rank} is already being run by process {holder}; wait for it, or give this "
                         "batch another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
