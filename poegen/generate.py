"""One generation job of the shapes world (a prompt or a scene spec), written as PNGs with metadata."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import List, Optional

import torch

from . import __version__, samplers
from .validation import check_keys

log = logging.getLogger("poegen.generate")


@dataclass
class Job:
    """What `poegen generate` takes; batch files list these (plus an optional ``id``)."""

    prompt: Optional[str] = None
    scene: Optional[str] = None
    frames: int = 1
    sampler: str = "poe"
    particles: int = 16
    steps: int = 30
    mcmc_steps: Optional[int] = None
    seed: int = 0
    guidance: Optional[float] = None         # None: the shapes world's default, 1.0 for named models
    vlm_weight: Optional[float] = None       # None: the shapes world's default, 1.0 for named models
    select: str = "best"
    grad_guidance: float = 0.0               # gradient guidance of the stochastic proposal (SamplerConfig)
    experts: Optional[List[str]] = None      # e.g. ["sd:/models/sd15"]; default: the embedded shapes world
    potentials: Optional[List[str]] = None   # e.g. ["clip:/models/clip"]
    config: Optional[str] = None             # a YAML/JSON file of experts and potentials (registry.load_config)
    device: str = "cpu"                      # "cuda" uses cuda:LOCAL_RANK under accelerate/torchrun

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Job":
        job = cls(**check_keys(d, where, [f.name for f in fields(cls)]))
        if (job.prompt is not None or job.config is not None) == (job.scene is not None):
            raise ValueError(f"{where}: give exactly one of prompt or scene (with --config, the prompt may be in it)")
        if job.sampler not in samplers.available():
            raise ValueError(f"{where}: unknown sampler {job.sampler!r}; available: {', '.join(samplers.available())}")
        try:
            torch.device(job.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"{where}: device {job.device!r} is not a torch device; use cpu, cuda or cuda:N") from None
        if job.frames < 1 or job.particles < 1 or job.steps < 1:
            raise ValueError(f"{where}: frames, particles and steps must be >= 1")
        return job


def products(job: Job):
    """(file label, Product) pairs: one for a prompt, one per frame for a scene spec."""
    from .experts.shapes.prompt import build_product, build_scene_product

    if job.experts or job.config:
        from .experts.registry import build, load_config
        if job.scene is not None:
            raise ValueError("scenes use the shapes world; drop --expert/--config or --scene")
        cfg = load_config(job.config) if job.config else {"prompt": None, "experts": [], "potentials": []}
        return [("", build(job.prompt or cfg["prompt"], (job.experts or []) + cfg["experts"],
                           (job.potentials or []) + cfg["potentials"], 1.0 if job.guidance is None else job.guidance,
                           1.0 if job.vlm_weight is None else job.vlm_weight))]
    if job.scene is None:
        return [("", build_product(job.prompt, guidance=job.guidance, vlm_weight=job.vlm_weight))]
    from .experts.physics import PhysicsExpert
    from .experts.shapes.model import load_prior
    from .scene import load_scene

    spec, prior = load_scene(job.scene), load_prior()
    n = job.frames
    times = [spec.physics.duration * i / (n - 1) for i in range(n)] if n > 1 else [None]
    return [(f"_f{i:02d}" if n > 1 else "", build_scene_product(PhysicsExpert(spec, until=t), prior, job.guidance))
            for i, t in enumerate(times)]


def job_device(name: str) -> torch.device:
    """The torch device of a job; plain "cuda" means this process's GPU (LOCAL_RANK) when launched by accelerate."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA device here; use --device cpu")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def save_png(image, path: Path, metadata: dict, scale: int = 1):
    """Write a PIL image atomically (temporary file, then rename) with poegen metadata as a text chunk."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("poegen", json.dumps(metadata, sort_keys=True))
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)


def to_pil(x: torch.Tensor):
    """A (3, H, W) image in [-1, 1] as a PIL image."""
    from PIL import Image

    from .experts.shapes.render import to_uint8
    return Image.fromarray(to_uint8(x))


def run(job: Job, out: Path, progress: bool = False, scale: int = 8) -> List[Path]:
    """Sample the job and write out (upscaled) and out_raw (native) per frame, plus a GIF for several
    frames; every frame uses the same seed, so shared noise keeps the appearance consistent."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    options = dict(progress=progress, select=job.select, grad_guidance=job.grad_guidance)
    if job.mcmc_steps is not None:
        options["mcmc_steps"] = job.mcmc_steps
    written, device = [], job_device(job.device)
    for label, product in products(job):
        product.to(device)
        result = samplers.sample(product, sampler=job.sampler, num_particles=job.particles, num_steps=job.steps,
                                 generator=torch.Generator(device).manual_seed(job.seed), **options)
        meta = {"poegen": __version__, "job": asdict(job), "frame": label,
                "experts": dict(zip(product.names, product.weights)),
                "potentials": dict(zip(product.potential_names, product.lambdas)),
                "sampler_options": {k: v for k, v in asdict(samplers.config(job.sampler, **options)).items()
                                    if k != "progress"},
                "log_Z": result.log_Z, "nfe": result.nfe}
        path = out.with_name(out.stem + label + out.suffix)
        img = to_pil((product.decode(result.x[:1])[0] if product.decode is not None else result.x[0]).cpu())
        save_png(img, path.with_name(path.stem + "_raw" + path.suffix), meta)
        save_png(img, path, meta, scale)
        written.append(path)
        log.info("%s: NFE %s, log Z %.3f", path, result.nfe, result.log_Z)
    if len(written) > 1:
        from PIL import Image
        frames = [Image.open(p) for p in written]
        gif = out.with_suffix(".gif")
        tmp = gif.with_name(gif.name + ".tmp")
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=250, loop=0)
        os.replace(tmp, gif)
        written.append(gif)
    return written
