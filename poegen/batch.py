"""Batch jobs that lose nothing: a manifest per process, restarts skip finished items, failures are
recorded and do not stop the batch, outputs are written atomically, and items are sharded over
processes (``accelerate launch -m poegen batch ...`` sets RANK and WORLD_SIZE) by index, so an item's
output never depends on sharding or order (its seed is in the job, default: its index).

A job file and the manifests are streamed: a resume of 100,000 lines keeps neither file nor its jobs in memory,
only each item's id and each finished one's fingerprint; a line that ran and has not changed is not parsed again."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import time
import traceback
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from tqdm.auto import tqdm

from .job import READS, Job
from .pipeline import FULL, DiskFull, check_writable, run
from .validation import read_file, unique_keys

log = logging.getLogger("poegen.batch")
RESERVED = re.compile(r"(_raw|_f\d+)$")  # suffixes of the files an item writes besides ID.png
# every line digest starts from Job's defaults: a changed default makes every line new again (those left None are
# left out, as in ``fingerprint``: a field added later with default None keeps finished lines known by their digest)
_DEFAULTS = hashlib.blake2b(json.dumps({k: v for k, v in vars(Job()).items() if v is not None},
                                       sort_keys=True).encode(), digest_size=8)


def read_jobs(path: str | Path) -> List[Tuple[str, Job]]:
    """(id, Job) pairs of a job file, every one checked; errors name the line or item (``run_batch`` streams)."""
    with JobFile(path) as jobs:
        return [(job_id, job) for _, job_id, job in jobs.jobs()]


class JobFile:
    """A job file read one item at a time: a .jsonl file line by line through one open handle (never held whole;
    an editor saving a new file in its place does not change what a running batch reads), a YAML or JSON list
    (small by nature) parsed once. Errors name the line (.jsonl) or the item."""

    def __init__(self, path: str | Path):
        self.path = path = Path(path)
        if not path.exists():
            raise ValueError(f"job file {path} does not exist")
        if path.is_dir():
            raise ValueError(f"job file {path} is a folder; give a .jsonl, .yaml or .json file of jobs")
        self.handle = self.data = None
        self.ids = set()  # for the one-id-one-job check
        if path.suffix.lower() == ".jsonl":
            self.handle = open(path, encoding="utf-8-sig")  # a BOM is not content
        else:
            self.data = _read_list(path)
        if next(self.lines(), None) is None:  # an empty file would "finish" having run nothing
            self.__exit__()
            example = ('one job a line, e.g. {"prompt": "a red ball"}' if self.data is None else
                       'a list of jobs, e.g. [{"prompt": "a red ball"}]' if path.suffix.lower() == ".json" else
                       "a list of jobs, e.g. - {prompt: a red ball}")
            raise ValueError(f"no jobs in {path}; write {example} (see examples/jobs.jsonl)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()

    def where(self, n: int) -> str:
        return f"{self.path}:{n}" if self.data is None else f"{self.path}: item {n}"

    def lines(self, only=None) -> Iterator[Tuple[int, int, object]]:
        """(index, line or item number, the line's text or the parsed item) of every job whose index ``only``
        accepts (default: all); blank lines hold no job, and lines not asked for are not parsed."""
        if self.data is not None:
            yield from ((i, i, d) for i, d in enumerate(self.data) if only is None or only(i))
            return
        self.handle.seek(0)
        i = -1
        for n, text in enumerate(self.handle, 1):
            if text.strip():
                i += 1
                if only is None or only(i):
                    yield i, n, text

    def jobs(self, only=None) -> Iterator[Tuple[int, str, Job]]:
        """(index, id, Job) of every job (``only``: of those it accepts), checked as read; a full pass also checks
        that no id is given twice."""
        for i, n, item in self.lines(only):
            job_id, job = self.job(i, n, item)
            if only is None:
                self.claim(job_id, n)
            yield i, job_id, job

    def claim(self, job_id: str, n: int):
        """Note that line ``n`` holds job ``job_id``; refuse an id given twice (naming the first line with it)."""
        if job_id in self.ids:
            raise ValueError(f"{self.where(n)}: id {job_id[:40]!r} is also the id of {self.find(job_id)}; "
                             "give each job its own")
        self.ids.add(job_id)

    def job(self, i: int, n: int, item) -> Tuple[str, Job]:
        """(id, Job) of the job at index ``i``, line (or item) ``n``, checked field by field."""
        where = self.where(n)
        d = _parse(item, where) if self.data is None else item
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
            other = self.find(stem)
            clash = f", so its files would overwrite those of id {stem[:40]!r} ({other})" if other else ""
            raise ValueError(f"{where}: id {job_id[:40]!r} contains '/' or ends like a file poegen adds (_raw, _f00)"
                             f"{clash}; rename it")
        for key in READS:  # relative to the job file's folder
            if isinstance(d.get(key), str) and not Path(d[key]).is_absolute():
                resolved = self.path.parent / d[key]
                if not resolved.exists():
                    raise ValueError(f"{where}: {key} {d[key]!r} not found (looked for {resolved})")
                d[key] = str(resolved)
        d.setdefault("seed", i)
        return job_id, Job.from_dict(d, where)

    def find(self, job_id: str) -> Optional[str]:
        """Where the job of id ``job_id`` (given, or positional) is, for an error message; reads the file again."""
        for i, n, item in self.lines():
            d = _loose(item) if self.data is None else item
            given = d.get("id", f"{i:05d}") if isinstance(d, dict) else None
            if isinstance(given, (str, int)) and not isinstance(given, bool) and str(given) == job_id:
                return self.where(n)
        return None


def _read_list(path: Path) -> list:
    """The jobs of a YAML or JSON file (a list)."""
    try:
        data = read_file(path, "job")
    except ValueError:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        if len(lines) > 1 and all(ln.lstrip().startswith("{") for ln in lines):
            raise ValueError(f"{path}: this looks like one JSON job a line; name the file .jsonl") from None
        raise
    if data is None:  # an empty YAML file: no jobs, said as such by JobFile
        return []
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of jobs")
    return data


def _parse(text: str, where: str):
    """One JSONL line, a key given twice refused."""
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:  # a key given twice
        raise ValueError(f"{where}: {e}") from None


def _loose(text: str):
    """A JSONL line parsed without checks (None if it is not JSON)."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def line_digest(i: int, text: str) -> str:
    """What a job line at index ``i`` says, with Job's defaults: equal digests, equal jobs (for a job that reads
    no file; one that does is fingerprinted with the file's bytes)."""
    h = _DEFAULTS.copy()
    h.update(f"\n{i}\n{text.strip()}".encode())
    return h.hexdigest()


def _records(f: Path) -> Iterator[dict]:
    """The records of one manifest, line by line; a torn last line and a hand-edited or foreign line are ignored."""
    with open(f, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not (isinstance(r, dict) and isinstance(r.get("id"), str) and "status" in r):
                log.warning("%s: a line that is not a record of poegen's is ignored: %s", f.name, line[:60])
                continue  # a hand-edited or foreign line: ignored like a torn one, never a crash
            yield r


def read_manifest(out: Path) -> Dict[str, dict]:
    """The last record of every item over all processes' manifests (a torn last line is ignored)."""
    return {r["id"]: r for f in sorted(Path(out).glob("manifest*.jsonl")) for r in _records(f)}


def _scan(out: Path) -> Tuple[List[Path], List[str]]:
    """The folder's manifests (every process's) and temporary files (of a killed run), in one pass over it."""
    manifests, leftovers = [], []
    with os.scandir(out) as entries:
        for e in entries:
            if e.name.endswith(".tmp"):
                leftovers.append(e.name)
            elif e.name.startswith("manifest") and e.name.endswith(".jsonl"):
                manifests.append(out / e.name)
    return sorted(manifests), leftovers


def _finished(manifests: List[Path]) -> Dict[str, object]:
    """Every item whose last record is ok: "fingerprint line-digest", or that and its files where they are not the
    usual ID.png (kept small: a resume of 100,000 items holds 100,000 of these)."""
    done = {}
    for f in manifests:
        for r in _records(f):
            files = r.get("files")
            if r["status"] != "ok" or not (isinstance(files, list) and all(isinstance(s, str) for s in files)):
                done.pop(r["id"], None)
                continue
            key = f"{r.get('fingerprint')} {r.get('line')}"
            done[r["id"]] = key if files == [r["id"] + ".png"] else (key, tuple(files))
    return done


def _unpack(old) -> Tuple[str, str, Optional[tuple]]:
    """(fingerprint, line digest, files or None) of a ``_finished`` entry."""
    key, files = (old, None) if isinstance(old, str) else old
    fp, line = key.split(" ")
    return fp, line, files


def _plan(jobs: JobFile, out: Path, done: Dict[str, object], rank: int, world: int):
    """Check every job and find this process's unfinished ones: (their indices, warnings and old files of those
    that ran before, how many are finished). A line the manifest says ran, unchanged, is not checked again."""
    pending, stale, skipped, cache = [], {}, 0, {}
    jobs.ids.clear()
    for i, n, item in jobs.lines():
        job = None
        job_id, old = _quick(done, i, item) if done and jobs.data is None else (None, None)
        if job_id is None:
            job_id, job = jobs.job(i, n, item)
            old = done.get(job_id)
        jobs.claim(job_id, n)
        if i % world != rank:
            continue
        if old is not None:
            fp, _, files = _unpack(old)
            if not _present(out, job_id, files):
                stale[job_id] = ("item %s: a file it wrote is missing; running it again", files)
            elif job is None or fp == fingerprint(job, cache):
                skipped += 1
                continue
            else:
                stale[job_id] = ("item %s changed since it was run (its job or a file it reads); running it again",
                                 files)
        pending.append(i)
    return pending, stale, skipped


_ID = re.compile(r'"id"\s*:\s*(?:"([^"\\]*)"|(-?\d+)\b)')


def _quick(done: Dict[str, object], i: int, text: str):
    """(id, manifest entry) of a line that ran unchanged, else (None, None): found without parsing the line. The id
    is a guess (the index, or what follows "id"), sound because only a record of this very line (index and text)
    carries its digest, and that record's id is the line's."""
    if '"id"' in text:
        m = _ID.search(text)
        if m is None:
            return None, None
        job_id = m.group(1) if m.group(1) is not None else m.group(2)
    else:
        job_id = f"{i:05d}"
    old = done.get(job_id)
    if old is None or _unpack(old)[1] != line_digest(i, text):
        return None, None
    return job_id, old


def run_batch(job_file: str | Path, out: str | Path, rank: int = 0, world: int = 1, progress: bool = True) -> Dict[str, int]:
    """Run this process's share of the jobs; returns counts of done, skipped and failed items."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world}: need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    out, lock = Path(out), None
    with JobFile(job_file) as jobs:
        try:
            manifests, leftovers = [], []
            if out.is_dir():  # a resume: lock first, so that the manifests read are not being written on this rank
                lock = _lock(_writable(out), rank)
                manifests, leftovers = _scan(out)
            # a malformed file is refused before any work (and before a new folder is made)
            pending, stale, skipped = _plan(jobs, out, _finished(manifests), rank, world)
            if lock is None:
                lock = _lock(_writable(out), rank)
                manifests, leftovers = _scan(out)
                if manifests:  # another run made the folder meanwhile
                    pending, stale, skipped = _plan(jobs, out, _finished(manifests), rank, world)
            counts = {"done": 0, "skipped": skipped, "failed": 0}
            _run(jobs, out, rank, world, set(pending), stale, leftovers, counts, progress)
        except OSError as e:
            if e.errno not in FULL or isinstance(e, DiskFull):
                raise
            raise DiskFull(e.errno, f"{os.strerror(e.errno).lower()} in {out}; free space there and run it again "
                                    "(finished items are kept)") from None
        finally:
            if lock is not None:
                lock.close()
    return counts


def _writable(out: Path) -> Path:
    try:
        check_writable(out)
    except OSError as e:
        if e.errno in FULL:  # said as a full disk by run_batch
            raise
        raise ValueError(f"output folder {out} is not writable: {e}") from None
    return out


def _run(jobs: JobFile, out: Path, rank: int, world: int, pending: set, stale: dict, leftovers: List[str],
         counts: dict, progress: bool):
    """Run the pending items in order, each recorded in this rank's manifest as it ends."""
    fd = os.open(out / f"manifest.{rank}.jsonl", os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)  # less the umask
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        if end and os.pread(fd, 1, end - 1) != b"\n":  # a crash left the last record unterminated: never glue
            os.write(fd, b"\n")  # the next one onto it
        items = jobs.lines(pending.__contains__) if pending else iter(())
        for i, n, item in tqdm(items, total=len(pending), desc=f"batch {rank}/{world}",
                               disable=None if progress else True):
            job_id, job = jobs.job(i, n, item)
            fp = fingerprint(job)
            message, old_files = stale.get(job_id, (None, None))
            if message:
                log.warning(message, job_id)
            _remove_stale(out, job_id, leftovers)
            t = time.perf_counter()
            try:
                written = run(job, out / f"{job_id}.{job.video or 'png'}", progress=progress)
                files = [p.name for p in written]
                record = {"id": job_id, "status": "ok", "files": files, "fingerprint": fp}
                verdicts = [ok for ok, _ in written.certified.values()]  # poegen.certify: None where not checked
                record["certified"] = (False if False in verdicts else None if None in verdicts or not verdicts
                                       else True)
                if record["certified"] is False:
                    record["unmet"] = {p.name: unmet for p, unmet in written.uncertified()}
                    for p, unmet in written.uncertified():
                        log.warning("item %s: %s is not certified: %s", job_id, p.name, ", ".join(unmet))
                if jobs.data is None and not any(getattr(job, k) for k in READS):
                    record["line"] = line_digest(i, item)
                counts["done"] += 1
                if message:
                    _remove_replaced(out, job_id, old_files, files)
            except Exception as e:  # one item's failure is recorded, the batch goes on
                full = isinstance(e, OSError) and e.errno in FULL
                if not full:  # a full disk stops the batch with its own message
                    log.warning("item %s failed: %s", job_id, e)
                reason = os.strerror(e.errno).lower() if full else f"{type(e).__name__}: {e}"
                record = {"id": job_id, "status": "failed", "trace": traceback.format_exc(limit=3), "error": reason}
                counts["failed"] += 1
                if full:  # later items would fail the same way: record this one if there is room, then stop
                    said = "recorded as failed" if _append(fd, record, t) else "not recorded"
                    raise DiskFull(e.errno, f"{reason} in {out}; item {job_id} is {said} and the batch stops (free "
                                            "space there and run it again: finished items are kept)") from None
            if not _append(fd, record, t):
                raise DiskFull(errno.ENOSPC, f"no space left on device in {out}; item {job_id} is not recorded and the "
                                             "batch stops (free space there and run it again: finished items are kept)")
    finally:
        os.close(fd)


def fingerprint(job: Job, cache: Optional[dict] = None) -> str:
    """A hash of everything an item's output depends on: the job's fields (those left None are not asked for and
    left out, so a field added to Job later with default None leaves finished items finished; a changed default
    changes the hash) and the bytes of the files it reads (``cache``: path -> bytes of the small ones, for a pass
    over many jobs reading the same spec)."""
    asked = {k: v for k, v in vars(job).items() if v is not None}  # vars: asdict's fields, 4x faster
    h = hashlib.sha256(json.dumps(asked, sort_keys=True).encode())
    for key in READS:
        value = getattr(job, key)
        if not value:
            continue
        folder = Path(value).is_dir()  # a control video's PNG frames: their names and bytes
        for f in sorted(p for p in Path(value).iterdir() if p.suffix.lower() == ".png") if folder else [Path(value)]:
            if not f.is_file():
                continue
            data = cache.get(str(f)) if cache is not None else None
            if data is None:
                data = f.read_bytes()
                if cache is not None and len(data) <= 1 << 16:
                    cache[str(f)] = data
            h.update(f.name.encode() + data if folder else data)
    return h.hexdigest()[:16]


def _outputs(files) -> set:
    """Every file an item's record stands for: its listed PNGs with their _raw twins, and its GIF."""
    names = set()
    for name in files or ():
        names.add(name)
        if name.endswith(".png"):
            names.add(name[:-4] + "_raw.png")
    return names


def _present(out: Path, job_id: str, files: Optional[tuple]) -> bool:
    """Whether every file of an ok record (``files`` None: the usual ID.png) is still in the folder."""
    base = f"{out}{os.sep}"
    if files is None:  # the usual case, fast: a resume checks every finished item
        return os.path.isfile(f"{base}{job_id}.png") and os.path.isfile(f"{base}{job_id}_raw.png")
    return all(os.path.isfile(base + name) for name in _outputs(files))


def _remove_replaced(out: Path, job_id: str, old: Optional[tuple], files: List[str]):
    """After an item ran again, remove the files its previous ok run wrote (``old``; None: the usual ID.png)
    that this run did not (frames 3 -> 1 leaves no x_f00.png or x.gif of the old job beside the new x.png)."""
    for name in _outputs(old or [f"{job_id}.png"]) - _outputs(files):
        if "/" not in name and (out / name).is_file():
            (out / name).unlink()
            log.warning("removed %s, written by this item's previous run", name)


def _remove_stale(out: Path, job_id: str, leftovers: List[str]):
    """Remove the temporary files (of ``leftovers``) a killed run left for this item: ``write_atomic``'s
    ``.ID[_fNN][_raw].png.*.tmp`` and ``.ID.gif.*.tmp`` (and ``ID.gif.tmp`` of older versions); only this rank runs
    the item, so none is being written."""
    own = re.escape(job_id)
    stale = re.compile(rf"\.{own}((_f\d+)?(_raw)?\.png|\.gif|\.mp4)\.[^./]*\.tmp|{own}\.gif\.tmp", re.S)
    for name in leftovers:
        if stale.fullmatch(name) and not (out / name).is_dir():
            (out / name).unlink(missing_ok=True)


def _append(fd: int, record: dict, started: float) -> bool:
    """Append one record whole, with the item's seconds, in one write, fsynced; False when the disk had no room
    for it (then nothing of it stays: a manifest never holds a torn record)."""
    record["seconds"] = round(time.perf_counter() - started, 2)
    data = (json.dumps(record) + "\n").encode()
    end = os.lseek(fd, 0, os.SEEK_END)
    try:
        if os.write(fd, data) != len(data):  # a short write: the disk (or the file-size limit) is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as e:
        os.ftruncate(fd, end)
        if e.errno in FULL:
            return False
        raise
    os.fsync(fd)
    return True


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
