"""A generation job: what `poegen generate` and `edit` take and each item of a batch file lists, checked field by
field. Importing it loads no torch, so `poegen --help` can show its defaults at once."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import List, Optional

from . import defaults
from .hardware import check_dtype
from .samplers import available
from .validation import check_keys


@dataclass
class Job:
    """What `poegen generate` takes; batch files list these (plus an optional ``id``)."""

    prompt: Optional[str] = None
    scene: Optional[str] = None              # a scene spec: physics places the objects
    layout: Optional[str] = None             # a layout spec: phrases with boxes
    image: Optional[str] = None              # editing: the image to add objects to (with mask or scene)
    mask: Optional[str] = None               # editing: white where the image may change
    margin: int = defaults.MARGIN            # editing with a scene: pixels around the new objects' footprint
    resize: bool = False                     # editing: resize the image (and mask) to the family's size
    replace_known: Optional[bool] = None     # editing: replace the kept pixels at every level (default: for edits
    #                                          of pixel-space families; false: the KnownPixels weights alone)
    compose: bool = False                    # named models: split the prompt into objects ("and", commas)
    parts: Optional[List[str]] = None        # object phrases, listed instead of split from the prompt
    questions: Optional[List[str]] = None    # what every potential asks (default: each object and relation)
    frames: Optional[int] = None             # a scene: time points, one image each (default 1); a video: frames
    #                                          per clip (default: the model's, 81 for Wan)
    video: Optional[str] = None              # "gif" or "mp4": write a clip of a video model (registry.VIDEO)
    fps: Optional[float] = None              # frames per second of a video (default 16) or a scene's GIF (4)
    first_frame: Optional[str] = None        # a video's first frame (an image file): Wan image-to-video folders
    control: Optional[str] = None            # a control video (.gif, .mp4, folder of PNG frames): Wan VACE folders
    sampler: str = defaults.SAMPLER          # every default is poegen.defaults'
    particles: int = defaults.PARTICLES
    steps: int = defaults.STEPS              # noise levels
    mcmc_steps: Optional[int] = None         # None: the sampler's preset
    seed: int = defaults.SEED
    guidance: Optional[float] = None         # None: defaults.SHAPES_GUIDANCE, or MODEL_GUIDANCE for named models
    potential_weight: Optional[float] = None  # None: defaults.SHAPES_POTENTIAL_WEIGHT, or MODEL_POTENTIAL_WEIGHT
    #                                           for named models
    select: str = defaults.SELECT
    grad_guidance: float = defaults.GRAD_GUIDANCE  # gradient guidance of the stochastic proposal (SamplerConfig)
    reward_every: int = defaults.REWARD_EVERY      # score the potentials every k levels (SamplerConfig)
    experts: Optional[List[str]] = None      # e.g. ["sd:/models/sd15"]; default: the embedded shapes world
    potentials: Optional[List[str]] = None   # e.g. ["clip:/models/clip"]
    config: Optional[str] = None             # a YAML/JSON file of experts and potentials (registry.load_config)
    device: str = defaults.DEVICE            # "cuda" uses cuda:LOCAL_RANK under accelerate/torchrun
    max_memory: Optional[float] = None       # GB: micro-batches (and, on a GPU, offloading) keep a run under it
    dtype: Optional[str] = None              # auto, float32, bfloat16 (None: the config's, else auto: bf16 only
    #                                          where the hardware has it natively; hardware.pick_dtype)
    budget: str = defaults.BUDGET            # "anytime": rounds until an image is certified (poegen.anytime);
    #                                          "fixed": one run of particles; "auto": anytime, a clip fixed
    max_nfe: Optional[int] = None            # anytime: evaluations per expert at most (default: defaults.MAX_NFE_FACTOR
    #                                          fixed runs)
    images: int = 1                          # distinct images to return (OUT, OUT_1, ...), each certified if found
    require_certified: Optional[bool] = None  # true: an image its potentials do not certify is an error (nothing
    #                                           written; poegen.certify); None and false: written with a warning

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Job":
        job = cls(**check_keys(_renamed(d, where), where, [f.name for f in fields(cls)]))
        _check_types(job, where)
        if job.image is not None:
            if (job.mask is None) == (job.scene is None) or job.layout is not None:
                raise ValueError(f"{where}: an edit (image) takes exactly one of mask or scene, and no layout")
            if job.mask is not None and job.prompt is None and job.config is None:
                raise ValueError(f"{where}: an edit with a mask needs a prompt naming what to add")
        else:
            if job.mask is not None or job.replace_known:  # None and False are both fine without an image
                raise ValueError(f"{where}: mask and replace_known belong to an edit; give the image to edit")
            given = [k for k in ("prompt", "scene", "layout") if getattr(job, k) is not None]
            if len(given) > 1 or (not given and job.config is None):
                raise ValueError(f"{where}: give exactly one of prompt, scene or layout (with --config, the prompt may "
                                 f"be in it); got {', '.join(given) or 'none'}")
        if job.sampler not in available():
            raise ValueError(f"{where}: unknown sampler {job.sampler!r}; available: {', '.join(available())}")
        import torch  # not at the top: `poegen --help` reads the defaults without loading torch

        try:
            torch.device(job.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"{where}: device {job.device!r} is not a torch device; use cpu, cuda or cuda:N") from None
        for name in ("frames", "particles", "steps", "images", "max_nfe"):
            if getattr(job, name) is not None and getattr(job, name) < 1:
                raise ValueError(f"{where}: {name} {getattr(job, name)} must be >= 1")
        if job.budget not in defaults.BUDGETS:
            raise ValueError(f"{where}: budget {job.budget!r}: expected auto (anytime for an image, fixed for a clip), "
                             "anytime (rounds until certified) or fixed")
        _check_video(job, where)
        if job.margin < 0:
            raise ValueError(f"{where}: margin {job.margin}: expected pixels >= 0 around the new objects")
        if job.dtype is not None:
            check_dtype(job.dtype, f"{where}: dtype")
        if job.max_memory is not None and job.max_memory <= 0:  # its type is checked with the others
            raise ValueError(f"{where}: max_memory {job.max_memory!r}: expected a positive number of GB")
        return job


def _check_video(job: Job, where: str):
    """A video's format, what it may be made from, and the frames and fps of videos and scenes."""
    if job.video is not None:
        if job.video not in ("gif", "mp4"):
            raise ValueError(f"{where}: video {job.video!r}: expected gif or mp4")
        if job.image is not None:
            raise ValueError(f"{where}: a video is made from a prompt, a layout or a scene; edits are not wired to "
                             "video models yet")
    elif (job.frames or 1) > 1 and (job.scene is None or job.image is not None):
        raise ValueError(f"{where}: frames {job.frames} needs a scene to simulate (--scene, not an edit) or a video "
                         "model (--video)")
    for name, folder in (("first_frame", "an image-to-video"), ("control", "a VACE")):
        value, flag = getattr(job, name), "--" + name.replace("_", "-")
        if value is None:
            continue
        if job.video is None or not (job.experts or job.config):
            raise ValueError(f"{where}: {name} ({flag}) is for a video model: {folder} Wan folder (--expert wan:PATH) "
                             "with --video OUT.gif")
        if not Path(value).exists():
            raise FileNotFoundError(f"{where}: {name} {value} ({flag}): no such file (looked for "
                                    f"{Path(value).absolute()})")
    if job.first_frame is not None and job.control is not None:
        raise ValueError(f"{where}: give first_frame (an image-to-video folder) or control (a VACE folder), not both")
    if job.fps is not None and job.fps <= 0:
        raise ValueError(f"{where}: fps {job.fps!r}: expected a positive number of frames per second")
    if job.fps is not None and job.video is None and (job.frames or 1) == 1:
        raise ValueError(f"{where}: fps is for a video (--video) or a scene's frames (--frames N)")


RENAMED = {"vlm_weight": "potential_weight"}  # a field's old name -> its name now: job files may still use the old


def _renamed(d, where: str):
    """``d`` with every field given by its old name (``RENAMED``) under its name now; both names at once: an error."""
    if not isinstance(d, dict):
        return d
    for old, new in RENAMED.items():
        if old in d:
            if new in d:
                raise ValueError(f"{where}: {old} is the old name of {new}; give only {new}")
            d = {(new if k == old else k): v for k, v in d.items()}
    return d


# the fields naming files a job reads, in the order batch fingerprints them (control may be a folder of PNG frames)
READS = ("scene", "layout", "config", "image", "mask", "first_frame", "control")
_TEXT = ("prompt", "scene", "layout", "image", "mask", "config", "sampler", "select", "device", "dtype", "video",
         "budget", "first_frame", "control")
_WHOLE = ("frames", "particles", "steps", "mcmc_steps", "seed", "reward_every", "margin", "max_nfe", "images")
_REAL = ("guidance", "potential_weight", "grad_guidance", "max_memory", "fps")
_FLAG = ("compose", "resize", "replace_known", "require_certified")
_TEXTS = ("parts", "questions", "experts", "potentials")


def _check_types(job: Job, where: str):
    """Every field's type (and a seed's range) before any work, naming the field."""
    for name in _TEXT + _WHOLE + _REAL + _FLAG + _TEXTS:
        v = getattr(job, name)
        if v is None:
            continue
        ok = (isinstance(v, str) if name in _TEXT else
              isinstance(v, int) and not isinstance(v, bool) if name in _WHOLE else
              isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) if name in _REAL else
              isinstance(v, bool) if name in _FLAG else
              isinstance(v, list) and all(isinstance(t, str) for t in v))
        if not ok:
            kind = ("text" if name in _TEXT else "a whole number" if name in _WHOLE else "a finite number"
                    if name in _REAL else "true or false" if name in _FLAG else "a list of texts")
            raise ValueError(f"{where}: {name} {str(v)[:40]!r} is not {kind}")
    if not 0 <= job.seed < 2 ** 63:
        raise ValueError(f"{where}: seed {job.seed} is outside 0 .. 2**63 - 1")
