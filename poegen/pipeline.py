"""The one route of a job (``poegen.job.Job``), for `generate`, `edit` and each item of `batch`: its spec read into
Layouts (``specs``), each turned into a Product (``families``), sampled, decoded and written as PNGs with metadata
(one per frame of a scene, and a GIF)."""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from . import __version__, anytime, samplers
from .certificate import NotCertified
from .defaults import DISPLAY_PX
from .edit import replaces_known
from .job import READS, Job

log = logging.getLogger("poegen.pipeline")


def job_config(job: Job) -> dict:
    """The job's --config file, read and checked (``registry.load_config``), or its defaults when it names none."""
    if not job.config:
        return {"prompt": None, "experts": [], "potentials": [], "compose": False, "parts": None, "questions": None,
                "max_memory": None, "dtype": "auto"}
    from .experts.registry import load_config
    return load_config(job.config)


def products(job: Job, cfg: Optional[dict] = None):
    """(file label, Product) pairs: one for a prompt or a layout spec, one per frame for a scene spec; each
    through its Layout (``specs.read_job``; an edit's: ``_edit_product``), in the shapes world or on the named
    models of --expert/--config (``cfg``: the config already read by ``job_config``)."""
    from .specs import read_job

    cfg = cfg or job_config(job)
    if job.image is not None:
        return [("", _edit_product(job, cfg))]
    return [(label, build(layout, job, cfg)) for label, layout in read_job(job, cfg)]


def build(layout, job: Job, cfg: dict, **shapes_options):
    """The Product of one of a job's Layouts (``families.build_product``): the job's and its config's models
    (``cfg``: ``job_config``'s), weights, dtype and video options. ``shapes_options`` (the shapes world's: a loaded
    prior and scorer, ablations) pass on as they are. `poegen compare` builds each target's Product here too."""
    from .families import build_product

    video = job.video is not None
    return build_product(layout, (job.experts or []) + cfg["experts"], (job.potentials or []) + cfg["potentials"],
                         guidance=job.guidance, potential_weight=job.potential_weight, dtype=job_dtype(job, cfg),
                         video=video, frames=job.frames if video else None, fps=job.fps if video else None,
                         video_inputs={k: getattr(job, k) for k in ("first_frame", "control")
                                       if getattr(job, k) is not None}, **shapes_options)


def job_dtype(job: Job, cfg: dict) -> str:
    """The job's dtype name: its own, else its config's, else auto."""
    return job.dtype or cfg.get("dtype") or "auto"


def _edit_product(job: Job, cfg: dict):
    """The Product of an edit job, its image (and mask) checked against, or resized to, the family's size; the
    edit rides along as ``product.edit``."""
    from .edit import load_image, load_mask
    from .specs import edit_layout
    from .experts.scene import load_scene

    image = load_image(job.image)
    mask = load_mask(job.mask, tuple(image.shape[-2:])) if job.mask is not None else None
    scene = load_scene(job.scene) if job.scene is not None else None
    prompt = job.prompt if job.prompt is not None else (cfg["prompt"] or "")
    if scene is not None and job.resize:
        size = scene.camera.resolution
        image = torch.nn.functional.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    layout = edit_layout(image, prompt, mask, scene, job.margin)
    product = build(layout, job, cfg)
    with torch.no_grad():
        made = tuple((product.decode(torch.zeros(1, *product.shape)) if product.decode is not None
                      else torch.zeros(1, *product.shape)).shape[-2:])
    have = tuple(image.shape[-2:])
    if made != have:
        if not job.resize or scene is not None:
            raise ValueError(f"the image is {have[1]}x{have[0]}; this family makes {made[1]}x{made[0]} images: "
                             "resize it, or pass --resize")
        edit = layout.edit.resized(*made)
        layout = edit_layout(edit.image, prompt, edit.mask, None, job.margin)
        product = build(layout, job, cfg)
    return product


def _check_particle_memory(product, particles: int, device):
    """Refuse a particle count whose own tensors alone would not fit in the memory available, before allocating."""
    import math

    from .memory import STATE_COPIES, available
    need = STATE_COPIES * particles * math.prod(product.shape or (1,)) * 4
    free, limit = (torch.cuda.mem_get_info(device)[0], "") if device.type == "cuda" else available()
    if need > free:
        raise ValueError(f"--particles {particles}: the particles alone need about {need / 2 ** 30:.1f} GB and "
                         f"{free / 2 ** 30:.1f} GB is available{limit}; use fewer particles")


def check_writable(folder: Path):
    """Create ``folder`` if needed and write and remove a fresh file in it (O_EXCL: never through a planted
    link); an OSError says why it cannot take the outputs."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".poegen-probe-")
    os.close(fd)
    os.unlink(probe)


def job_device(name: str) -> torch.device:
    """The torch device of a job; plain "cuda" means this process's GPU (LOCAL_RANK) when launched by accelerate."""
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if device.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s); use --device cpu"
                             + (f" or cuda:0 .. cuda:{count - 1}" if count else ""))
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: no MPS device here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r}: poegen runs on cpu, cuda or mps")
    return device


def save_png(image, path: Path, metadata: dict, scale: int = 1):
    """Write a PIL image atomically (temporary file, then rename) with poegen metadata as a text chunk."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("poegen", json.dumps(metadata, sort_keys=True))
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    write_atomic(path, lambda f: image.save(f, format="PNG", pnginfo=info))


FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, over quota, over the file-size limit (ulimit -f)
_UMASK = os.umask(0o022)  # read once (reading it means setting it), at import, before any thread runs
os.umask(_UMASK)


class DiskFull(OSError):
    """An output that did not fit (an errno of ``FULL``); the message names the folder and says to free space."""

    def __str__(self):
        return self.strerror


def write_atomic(path: Path, write):
    """``write(file)`` into a fresh temporary file beside ``path``, fsynced, then renamed over ``path``: an
    interrupt, a kill or a full disk leaves the old file or the whole new one, never a part (the temporary file
    is removed, or left for a resumed batch to clear after a kill); a full disk raises DiskFull."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # O_EXCL: never a link
        os.fchmod(fd, 0o666 & ~_UMASK)  # the mode of a file written plainly, not mkstemp's owner-only 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a planted link itself, never what it points to
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)  # no 0-byte or torn temporary file stays behind (a full disk, an interrupt)
        if isinstance(e, OSError) and e.errno in FULL and not isinstance(e, DiskFull):
            raise DiskFull(e.errno, f"{os.strerror(e.errno).lower()} in {path.parent}, writing {path.name}; free "
                                    "space there and run again") from None
        raise


VIDEO_FPS = 16  # Wan 2.1's frame rate


def display_scale(width: int) -> int:
    """The whole factor that brings an image or clip ``width`` pixels wide to at least ``DISPLAY_PX`` (1 when it is
    already that wide): the shapes world's 32 px are written 8x, a named model's 512 px as they are."""
    return max(1, math.ceil(DISPLAY_PX / width))


def write_video(clip: torch.Tensor, path: Path, metadata: dict, fps: float, scale: int = 1):
    """Write a (3, F, H, W) clip in [-1, 1] atomically as a GIF (PIL; the metadata in its comment) or an MP4
    (imageio with ffmpeg, the ``video`` extra; the metadata as its comment tag), by ``path``'s suffix; with
    ``scale`` > 1 its frames are enlarged that many times (nearest pixel) and the native clip written beside it as
    PATH_raw.gif / .mp4, as images are."""
    from .experts.shapes.render import to_uint8
    from .images import mp4_writer

    if clip.dim() != 4 or clip.shape[0] != 3:
        raise ValueError(f"{path}: expected a clip (3, frames, H, W), got shape {tuple(clip.shape)}")
    native = [to_uint8(clip[:, f]) for f in range(clip.shape[1])]
    text = json.dumps(metadata, sort_keys=True)
    for where, k in ([(path.with_name(path.stem + "_raw" + path.suffix), 1)] if scale > 1 else []) + [(path, scale)]:
        frames = [f.repeat(k, 0).repeat(k, 1) for f in native]
        if path.suffix.lower() == ".gif":
            from PIL import Image
            images = [Image.fromarray(f) for f in frames]
            write_atomic(where, lambda f: images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                                                         duration=round(1000 / fps), loop=0, comment=text))
        else:
            data = mp4_writer()(frames, fps, text)
            write_atomic(where, lambda f: f.write(data))


def stage_bar(progress: bool, desc: str, total: int):
    """A progress bar on stderr for one stage of a job (loading models, decoding, writing), shown when ``progress``
    is asked and stderr is a terminal (tqdm's ``disable=None``); it is cleared when the stage ends or fails."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=None if progress else True, leave=False)


def to_pil(x: torch.Tensor):
    """A (3, H, W) image in [-1, 1] as a PIL image."""
    from PIL import Image

    from .experts.shapes.render import to_uint8
    return Image.fromarray(to_uint8(x))


class Written(list):
    """The paths ``run`` wrote (a list, as before), with ``certified``: per image or clip path, (True, False, or
    None when no potential of its product certifies; the names of the unmet potentials)."""

    def __init__(self, paths=(), certified=None):
        super().__init__(paths)
        self.certified = dict(certified or {})

    def uncertified(self):
        """(path, unmet names) of every written image or clip its potentials do not certify."""
        return [(p, unmet) for p, (ok, unmet) in self.certified.items() if ok is False]


def run(job: Job, out: Path, progress: bool = False, scale: Optional[int] = None) -> Written:
    """Sample the job and write out (upscaled ``scale`` times, default ``display_scale``) and out_raw (native) per
    frame, plus a GIF for several
    frames; every frame uses the same seed, so shared noise keeps the appearance consistent. A video job
    (``job.video``) writes its clip to out (.gif or .mp4, ``write_video``). Each image (a clip: as a whole) is
    certified by its product's potentials (``certificate.certify``), in its metadata (``certified``, ``unmet``)
    and the returned ``Written``; with ``job.require_certified`` one that is not raises ``NotCertified`` after
    sampling every frame and before writing any file."""
    out = Path(out)
    if out.is_dir():  # first: `--out folder/` is a folder, whatever its name
        raise ValueError(f"--out {out} is a folder; name a .png file")
    if job.video is not None:
        if out.suffix.lower() != "." + job.video:
            raise ValueError(f"--video {out}: a {job.video} video is written to a .{job.video} file")
        if job.video == "mp4":
            from .images import mp4_writer
            mp4_writer()  # a missing extra fails before any sampling
    elif out.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: poegen writes PNG (with its metadata); name the file .png")
    for key in READS:  # never write over what the job reads
        given = getattr(job, key)
        if given and Path(given).exists() and any(
                p.exists() and p.resolve() == Path(given).resolve()
                for p in (out, out.with_name(out.stem + "_raw" + out.suffix))):
            raise ValueError(f"--out {out} would overwrite the {key} file {given}; write the result elsewhere")
    try:  # before any sampling: the folder must take a file
        check_writable(out.parent)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write in {out.parent} ({e.strerror})") from None
    options = dict(progress=progress, select=job.select, grad_guidance=job.grad_guidance, reward_every=job.reward_every)
    if job.mcmc_steps is not None:
        options["mcmc_steps"] = job.mcmc_steps
    written, device = Written(), job_device(job.device)
    pending, certified = [], written.certified  # (path, image, metadata, fps) to write once every frame is sampled
    cfg = job_config(job)
    max_memory = job.max_memory if job.max_memory is not None else cfg["max_memory"]
    with stage_bar(progress, "loading models", 1) as bar:
        built = products(job, cfg)
        bar.update()
    for label, product in built:
        _check_particle_memory(product, job.particles, device)
        product.to(device)
        options["replace_known"] = replaces_known(product) if job.replace_known is None else job.replace_known
        if max_memory is not None:
            from .memory import fit
            if not fit(product, max_memory, job.particles, device):
                log.warning("--max-memory %g GB: this product has no model that micro-batches (the shapes world "
                            "runs whole), so the cap is not enforced", max_memory)
        outcome = anytime.sample(product, job.sampler, job.particles, job.steps,
                                 torch.Generator(device).manual_seed(job.seed), budget=job.budget,
                                 max_nfe=job.max_nfe, images=job.images, **options)
        meta = {"poegen": __version__, "job": asdict(job), "frame": label,
                "experts": dict(zip(product.names, product.weights)),
                "potentials": dict(zip(product.potential_names, product.lambdas)),
                "sampler_options": {k: v for k, v in asdict(samplers.config(job.sampler, **options)).items()
                                    if k != "progress"},
                "log_Z": outcome.log_Z, "nfe": outcome.nfe, "rounds": outcome.rounds}
        for k, (image, ok, unmet) in enumerate(zip(outcome.images, outcome.certified, outcome.unmet)):
            path = out.with_name(out.stem + label + (f"_{k}" if k else "") + out.suffix)
            x = image.float().cpu()
            one = dict(meta, certified=ok, **({"unmet": unmet} if ok is False else {}))
            if product.edit is not None:
                from .edit import background_mse
                one["background_mse"] = background_mse(x, product.edit)
                log.info("%s: background MSE outside the mask %.2e", path, one["background_mse"])
            certified[path] = (ok, unmet)
            log.info("%s: %s", path, {True: "certified", None: "not checked (no potential of its product certifies)"}
                     .get(ok, f"not certified: {', '.join(unmet)}"))
            pending.append((path, x, one, product.fps))
        log.info("%s: NFE %s in %d round(s) of %s particles, log Z %.3f", out.stem + label, outcome.nfe,
                 len(outcome.rounds), outcome.rounds, outcome.log_Z)
    if job.require_certified:  # every frame sampled, nothing written yet
        missing = [f"{p} is not certified: {', '.join(u) if ok is False else 'no potential of its product certifies'}"
                   for p, (ok, u) in certified.items() if not ok]
        if missing:
            raise NotCertified(f"{'; '.join(missing)}; nothing written (require_certified)")
    for path, x, meta, fps in pending:
        with stage_bar(progress, "writing", 2) as bar:
            if job.video is not None:  # a clip (3, F, H, W): one file, its metadata inside
                write_video(x, path, meta, job.fps or fps or VIDEO_FPS, scale or display_scale(x.shape[-1]))
            else:
                img = to_pil(x)
                save_png(img, path.with_name(path.stem + "_raw" + path.suffix), meta)
                bar.update()
                save_png(img, path, meta, scale or display_scale(x.shape[-1]))
            bar.update()
        written.append(path)
    if len(built) > 1:  # a scene's frames (the first image of each) as one GIF
        from PIL import Image
        frames = [Image.open(out.with_name(out.stem + label + out.suffix)) for label, _ in built]
        gif = out.with_suffix(".gif")
        write_atomic(gif, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                   duration=round(1000 / (job.fps or 4)), loop=0))
        written.append(gif)
    return written
