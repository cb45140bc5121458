"""Experts by name, for configs and the command line: ``--expert sd:/models/sd15 --potential clip:/models/clip``,
or ``--config experts.yaml`` naming several with their options (see ``load_config``)."""
from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..validation import check_keys, read_file
from . import detector as _detector_module, flux_fill as _flux_fill_module, inpaint as _inpaint_module
from . import sd3 as _sd3_module, wan as _wan_module  # their option names (importing them loads no model library)

# kind -> (what it is, loader(path, guidance, **options) -> Backbone)
GENERATIVE: Dict[str, Tuple[str, Callable]] = {}
# kind -> (what it is, loader(path, texts, layout, **options) -> one potential per text or object)
POTENTIALS: Dict[str, Tuple[str, Callable]] = {}
# kind -> the options a config entry may give it (keyword arguments of its loader)
OPTIONS: Dict[str, Tuple[str, ...]] = {}


def _dtype(options: dict) -> dict:
    """A config's ``torch_dtype: bfloat16`` as the torch dtype."""
    from .cache import torch_dtype
    return dict(options, torch_dtype=torch_dtype(options["torch_dtype"])) if "torch_dtype" in options else options


@dataclass
class Backbone:
    """A loaded generative entry: ``make(texts, layout)`` gives one prompt expert per text, all on one model.
    ``cfg``: classifier-free guidance is a product with the empty prompt's expert (False for guidance-distilled
    FLUX, whose guidance is embedded); ``text``: False for an unconditional model."""

    make: Callable
    decode: Optional[Callable] = None
    cfg: bool = True
    text: bool = True
    channels_last: bool = False        # convolutions in NHWC memory layout
    compile: bool = False              # torch.compile the backbone in place (first calls compile)
    _made: Dict = field(default_factory=dict)

    def experts(self, texts: Sequence[str], layout=None) -> List:
        """Prompt experts for ``texts``; the same text gives the same expert object (merged by the product)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._made]
        if todo:
            made = self.make(todo, layout)
            for m in {id(m): m for e in made for m in getattr(e, "offload_modules", lambda: [])()}.values():
                if self.channels_last:
                    m.to(memory_format=torch.channels_last)
                if self.compile and not getattr(m, "_poegen_compiled", False):
                    m.compile()
                    m._poegen_compiled = True
            self._made.update(zip(todo, made))
        return [self._made[t] for t in texts]


def _sd(path: str, guidance: float, **options):
    from .diffusers import TextConditionedUNetExpert, vae_decoder
    options = _dtype(options)
    return Backbone(lambda texts, layout: TextConditionedUNetExpert.load_prompts(path, texts, **options),
                    vae_decoder(path))


def _sdxl(path: str, guidance: float, **options):
    from .diffusers import SDXLExpert, vae_decoder
    options = _dtype(options)
    return Backbone(lambda texts, layout: SDXLExpert.load_prompts(path, texts, **options), vae_decoder(path))


def _sd3(path: str, guidance: float, **options):
    from .diffusers import vae_decoder
    from .sd3 import SD3Expert
    options = _dtype(options)
    return Backbone(lambda texts, layout: SD3Expert.load_prompts(path, texts, **options), vae_decoder(path))


def _flux(path: str, guidance: float, **options):
    from .diffusers import FluxExpert, vae_decoder
    options = _dtype(options)
    return Backbone(lambda texts, layout: FluxExpert.load_prompts(path, texts, guidance=guidance, **options),
                    vae_decoder(path), cfg=False)


def _controlnet(path: str, guidance: float, base: Optional[str] = None, image: Optional[str] = None,
                conditioning_scale: float = 1.0, **options):
    from ..images import resize
    from .diffusers import unet_config, _vae_scale, load_controlnet_prompts, resolve, vae_decoder
    if not base:
        raise ValueError(f"controlnet {path}: options.base is missing; name the SD 1.x or SDXL folder it steers, "
                         "e.g. options: {base: /models/sd15}")
    options = _dtype(options)

    def make(texts, layout):
        side = unet_config(base).get("sample_size", 64) * _vae_scale(resolve(base))
        control = resize(_control_image(image, layout, path), side, side)[None, None].expand(1, 3, -1, -1)
        return load_controlnet_prompts(base, path, texts, control.contiguous(), conditioning_scale, **options)
    return Backbone(make, vae_decoder(base))


def _control_image(image: Optional[str], layout, path: str):
    """(H, W) control map in [0, 1]: the file ``image`` (grey levels), else the layout's depth map."""
    if image:
        import numpy as np
        from PIL import Image
        if not Path(image).exists():
            raise FileNotFoundError(f"controlnet {path}: options.image {image} does not exist")
        return torch.from_numpy(np.asarray(Image.open(image).convert("L"), dtype=np.float32) / 255.0)
    if layout is None or layout.depth is None:
        raise ValueError(f"controlnet {path}: no control image; use --scene SPEC (physics gives a depth map) or "
                         "options: {image: depth.png}")
    return layout.depth.float()


def _edited(layout, kind: str):
    """(image (1, 3, H, W), mask (1, 1, H, W)) of an edit layout; an inpainting kind needs one."""
    edit = layout.edit if layout is not None else None
    if edit is None:
        raise ValueError(f"kind {kind} inpaints a given image: use `poegen edit IMAGE ...` (or an edit target)")
    return edit.image[None], edit.mask[None, None]


def _sd_inpaint(path: str, guidance: float, **options):
    from .diffusers import vae_decoder
    from .inpaint import load_sd_inpaint
    options = _dtype(options)
    return Backbone(lambda texts, layout: load_sd_inpaint(path, texts, *_edited(layout, "sd-inpaint"), **options),
                    vae_decoder(path))


def _flux_fill(path: str, guidance: float, **options):
    from .diffusers import vae_decoder
    from .flux_fill import load_flux_fill
    options = _dtype(options)
    return Backbone(lambda texts, layout: load_flux_fill(path, texts, *_edited(layout, "flux-fill"), guidance,
                                                         **options), vae_decoder(path), cfg=False)


def _wan(path: str, guidance: float, first_frame: Optional[str] = None, control: Optional[str] = None, **options):
    from .wan import load_wan, wan_decoder
    options = _dtype(options)
    return Backbone(lambda texts, layout: load_wan(path, texts, image=first_frame, video=control, **options),
                    wan_decoder(path))


def _unet(path: str, guidance: float, **options):
    from .diffusers import VPUNetExpert
    expert = VPUNetExpert.from_pretrained(path, **_dtype(options))
    return Backbone(lambda texts, layout: [expert] * len(texts), None, cfg=False, text=False)


def _questions(cls_name: str):
    def load(path: str, texts: Sequence[str], layout=None, **options):
        from . import vlm
        cls = getattr(vlm, cls_name)
        return [cls.from_pretrained(path, t, **_dtype(options)) for t in texts]
    return load


def _detector(path: str, texts: Sequence[str], layout=None, **options):
    from .detector import load_detector
    objects = [(o.phrase, o.bounding_box()) for o in layout.objects] if layout is not None and layout.objects else texts
    return load_detector(path, objects, **_dtype(options))


GENERATIVE["sd"] = ("Stable Diffusion 1.x/2.x folder or cached id: each prompt's expert times the empty prompt's "
                    "(classifier-free guidance as a product, --guidance), decoded by its VAE", _sd)
GENERATIVE["sdxl"] = ("Stable Diffusion XL folder or cached id (two text encoders, added time ids); guidance as "
                      "for sd", _sdxl)
GENERATIVE["sd3"] = ("Stable Diffusion 3 folder or cached id (MMDiT transformer, two CLIP and a T5 text encoder); "
                     "guidance as for sd", _sd3)
GENERATIVE["flux"] = ("FLUX.1 folder or cached id (transformer, CLIP + T5 text encoders, VAE); --guidance is the "
                      "embedded guidance of FLUX.1-dev (3.5 is typical; schnell has none)", _flux)
GENERATIVE["controlnet"] = ("ControlNet folder or cached id (e.g. a depth ControlNet) on its base SD 1.x or SDXL "
                            "model (options.base); the control image is the scene's depth map or options.image",
                            _controlnet)
GENERATIVE["sd-inpaint"] = ("Stable Diffusion inpainting folder (9-channel UNet: latents, mask, masked-image latents) "
                            "for `poegen edit`; guidance as for sd", _sd_inpaint)
GENERATIVE["flux-fill"] = ("FLUX.1 Fill folder for `poegen edit` (the masked image and mask packed beside the "
                           "latents); --guidance is its embedded guidance (30 is typical)", _flux_fill)
GENERATIVE["wan"] = ("Wan 2.1 video folder or cached id: text-to-video, image-to-video from --first-frame FILE, or "
                     "VACE steered by --control VIDEO (a .gif, .mp4 or folder of PNG frames); clips of --frames "
                     "frames (4k + 1) written with --video; guidance as for sd", _wan)
VIDEO = ("wan",)  # kinds whose samples are clips (N, C, F, h, w): they take --frames as num_frames
GENERATIVE["unet"] = ("pixel-space UNet2DModel folder with unet/ and scheduler/ (unconditional)", _unet)
POTENTIALS["clip"] = ("CLIP score (transformers CLIPModel folder or cached id) of the image against each question",
                      _questions("ClipScore"))
POTENTIALS["pickscore"] = ("PickScore preference (a CLIPModel such as yuvalkirstain/PickScore_v1; tokenizer from "
                           "laion/CLIP-ViT-H-14-laion2B-s32B-b79K unless given)", _questions("PickScore"))
POTENTIALS["vqa"] = ("VQAScore: log P(Yes) of an image-text-to-text VLM (Llava family) asked whether the image shows "
                     "each question's text", _questions("VQAScore"))
POTENTIALS["detector"] = ("open-vocabulary detector (OWLv2 folder or cached id): per object, log of its best "
                          "detection score times the overlap with its box", _detector)
TUNING = ("channels_last", "compile")  # every generative kind: applied to its backbone (see README: speed)
OPTIONS.update(sd=("micro_batch", "torch_dtype") + TUNING, unet=("micro_batch", "torch_dtype") + TUNING,
               sdxl=("micro_batch", "original_size", "crop_top_left", "target_size", "torch_dtype") + TUNING,
               sd3=_sd3_module.OPTIONS + TUNING, flux=_flux_fill_module.OPTIONS + TUNING,
               controlnet=("base", "image", "conditioning_scale", "micro_batch", "torch_dtype") + TUNING,
               **{"sd-inpaint": _inpaint_module.OPTIONS + TUNING, "flux-fill": _flux_fill_module.OPTIONS + TUNING},
               clip=("tokenizer", "micro_batch", "torch_dtype", "certify"),
               pickscore=("tokenizer", "micro_batch", "torch_dtype", "certify"),
               vqa=("question", "answer", "versus", "template", "micro_batch", "torch_dtype", "certify"),
               detector=_detector_module.OPTIONS + ("certify",),
               # the files a job may also give (--first-frame, --control); no channels_last: Wan's convolutions are 3-D
               wan=_wan_module.OPTIONS + ("first_frame", "control", "compile"))

Spec = Union[str, dict]
CONFIG_FIELDS = ("prompt", "compose", "parts", "questions", "max_memory", "experts", "potentials", "dtype")
GENERATIVE_FIELDS = ("kind", "path", "prompt", "guidance", "weight", "options")
POTENTIAL_FIELDS = ("kind", "path", "prompt", "weight", "options")


def split(spec: str, table: Dict, flag: str) -> Tuple[str, str]:
    """(kind, path) of 'kind:path'; an unknown kind lists the known ones."""
    kind, sep, path = spec.partition(":")
    if kind not in table or not sep or not path:
        raise ValueError(f"{flag} {spec!r}: expected KIND:PATH with KIND one of {', '.join(table)}")
    return kind, path


def _entry(spec: Spec, table: Dict, fields: Sequence[str], where: str) -> dict:
    """A command-line 'kind:path' or a config mapping as a checked mapping."""
    if isinstance(spec, str):
        kind, path = split(spec, table, where)
        return {"kind": kind, "path": path, "options": {}}
    check_keys(spec, where, fields, required=("kind", "path"))
    if spec["kind"] not in table:
        raise ValueError(f"{where}: kind {spec['kind']!r} is not one of {', '.join(table)} (see `poegen experts`)")
    if not isinstance(spec["path"], str) or not spec["path"]:
        raise ValueError(f"{where}.path: expected a folder or model id as text, got {str(spec['path'])[:40]!r}")
    options = check_keys(spec.get("options", {}), f"{where}.options", OPTIONS.get(spec["kind"], ()))
    if "torch_dtype" in options:
        from .cache import torch_dtype
        try:
            torch_dtype(options["torch_dtype"])
        except ValueError as e:
            raise ValueError(f"{where}.options: {e}") from None
    for name in ("guidance", "weight"):
        if name in spec and (isinstance(spec[name], bool) or not isinstance(spec[name], (int, float))):
            raise ValueError(f"{where}.{name}: expected a number, got {spec[name]!r}")
        if name in spec and not math.isfinite(spec[name]):
            raise ValueError(f"{where}.{name}: {spec[name]!r} is not a finite number")
    if "prompt" in spec and not isinstance(spec["prompt"], str):
        raise ValueError(f"{where}.prompt: expected text, got {spec['prompt']!r}")
    return dict(spec, options=options)


def load_config(path: Union[str, Path]) -> dict:
    """A YAML or JSON file naming experts and potentials, checked field by field::

        prompt: a red ball on a blue box          # optional default for every entry
        dtype: bfloat16                           # optional: torch_dtype of entries naming none (auto, float32)
        compose: true                             # optional: split the prompt into objects (or list parts:)
        questions: [a red ball, a blue box]       # optional: what every potential asks
        experts:
          - {kind: sd, path: /models/sd15, guidance: 7.5, options: {micro_batch: 16}}
        potentials:
          - {kind: clip, path: /models/clip-vit-b32, weight: 2.0}
    """
    path = Path(path)
    data = read_file(path, "config")
    check_keys(data, str(path), CONFIG_FIELDS, required=("experts",))
    for field, table, fields in (("experts", GENERATIVE, GENERATIVE_FIELDS), ("potentials", POTENTIALS, POTENTIAL_FIELDS)):
        entries = data.get(field, [])
        if not isinstance(entries, list) or (field == "experts" and not entries):
            raise ValueError(f"{path}: {field} must be a list of mappings with kind and path"
                             + (" (at least one)" if field == "experts" else ""))
        try:
            for i, spec in enumerate(entries):
                if not isinstance(spec, dict):
                    raise ValueError(f"{field}[{i}]: expected a mapping with kind and path, got {spec!r}")
                _entry(spec, table, fields, f"{field}[{i}]")
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    if "prompt" in data and not isinstance(data["prompt"], str):
        raise ValueError(f"{path}: prompt must be a string")
    if not isinstance(data.get("compose", False), bool):
        raise ValueError(f"{path}: compose must be true or false")
    for name in ("parts", "questions"):
        if name in data and not (isinstance(data[name], list) and all(isinstance(t, str) and t for t in data[name])):
            raise ValueError(f"{path}: {name} must be a list of non-empty texts")
    cap = data.get("max_memory")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap <= 0):
        raise ValueError(f"{path}: max_memory must be a positive number of GB")
    from ..hardware import check_dtype
    try:
        dtype = check_dtype(data.get("dtype", "auto"), "dtype")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return {"prompt": data.get("prompt"), "experts": data["experts"], "potentials": data.get("potentials", []),
            "compose": data.get("compose", False), "parts": data.get("parts"), "questions": data.get("questions"),
            "max_memory": cap, "dtype": dtype}
