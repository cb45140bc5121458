"""Experts by name, for configs and the command line: ``--expert sd:/models/sd15 --potential clip:/models/clip``,
or ``--config experts.yaml`` naming several with their options (see ``load_config``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple, Union

from ..product import Product
from ..validation import check_keys

# kind -> (what it is, builder(path, prompt, guidance, **options) -> (experts, weights, decode or None))
GENERATIVE: Dict[str, Tuple[str, Callable]] = {}
# kind -> (what it is, builder(path, prompt, **options) -> potential)
POTENTIALS: Dict[str, Tuple[str, Callable]] = {}
# kind -> the options a config entry may give it (keyword arguments of its loader)
OPTIONS: Dict[str, Tuple[str, ...]] = {}


def _dtype(options: dict) -> dict:
    """A config's ``torch_dtype: bfloat16`` as the torch dtype."""
    if "torch_dtype" in options:
        import torch
        name = options["torch_dtype"]
        if name not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"torch_dtype {name!r} is not one of float32, float16, bfloat16")
        options = dict(options, torch_dtype=getattr(torch, name))
    return options


def _sd(path: str, prompt: str, guidance: float, **options):
    from .diffusers import TextConditionedUNetExpert, vae_decoder
    experts = TextConditionedUNetExpert.load_prompts(path, [prompt, ""], **options)  # one UNet, one call per step
    return experts, [guidance, 1.0 - guidance], vae_decoder(path)


def _sdxl(path: str, prompt: str, guidance: float, **options):
    from .diffusers import SDXLExpert, vae_decoder
    experts = SDXLExpert.load_prompts(path, [prompt, ""], **_dtype(options))  # one UNet, one call per step
    return experts, [guidance, 1.0 - guidance], vae_decoder(path)


def _flux(path: str, prompt: str, guidance: float, **options):
    from .diffusers import FluxExpert, vae_decoder
    return FluxExpert.load_prompts(path, [prompt], guidance=guidance, **_dtype(options)), [1.0], vae_decoder(path)


def _unet(path: str, prompt: str, guidance: float, **options):
    from .diffusers import VPUNetExpert
    return [VPUNetExpert.from_pretrained(path, **options)], [1.0], None


def _clip(path: str, prompt: str, **options):
    from .vlm import ClipScore
    return ClipScore.from_pretrained(path, prompt, **options)


def _pickscore(path: str, prompt: str, **options):
    from .vlm import PickScore
    return PickScore.from_pretrained(path, prompt, **options)


def _vqa(path: str, prompt: str, **options):
    from .vlm import VQAScore
    return VQAScore.from_pretrained(path, prompt, **_dtype(options))


GENERATIVE["sd"] = ("Stable Diffusion 1.x/2.x folder or cached id: the prompt's expert times the empty prompt's "
                    "(classifier-free guidance as a product, --guidance), decoded by its VAE", _sd)
GENERATIVE["sdxl"] = ("Stable Diffusion XL folder or cached id (two text encoders, added time ids); guidance as "
                      "for sd", _sdxl)
GENERATIVE["flux"] = ("FLUX.1 folder or cached id (transformer, CLIP + T5 text encoders, VAE); --guidance is the "
                      "embedded guidance of FLUX.1-dev (3.5 is typical; schnell has none)", _flux)
GENERATIVE["unet"] = ("pixel-space UNet2DModel folder with unet/ and scheduler/ (unconditional)", _unet)
POTENTIALS["clip"] = ("CLIP score (transformers CLIPModel folder or cached id) of the image against the prompt", _clip)
POTENTIALS["pickscore"] = ("PickScore preference (a CLIPModel such as yuvalkirstain/PickScore_v1; tokenizer from "
                           "laion/CLIP-ViT-H-14-laion2B-s32B-b79K unless given)", _pickscore)
POTENTIALS["vqa"] = ("VQAScore: log P(Yes) of an image-text-to-text VLM (Llava family) asked whether the image shows "
                     "the prompt", _vqa)
OPTIONS.update(sd=("micro_batch",), unet=("micro_batch",),
               sdxl=("micro_batch", "original_size", "crop_top_left", "target_size", "torch_dtype"),
               flux=("micro_batch", "resolution", "max_sequence_length", "torch_dtype"),
               clip=("tokenizer",), pickscore=("tokenizer",),
               vqa=("question", "answer", "versus", "template", "micro_batch", "torch_dtype"))

Spec = Union[str, dict]
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
        return {"kind": kind, "path": path}
    check_keys(spec, where, fields, required=("kind", "path"))
    if spec["kind"] not in table:
        raise ValueError(f"{where}: kind {spec['kind']!r} is not one of {', '.join(table)} (see `poegen experts`)")
    options = check_keys(spec.get("options", {}), f"{where}.options", OPTIONS.get(spec["kind"], ()))
    for field in ("guidance", "weight"):
        if field in spec and not isinstance(spec[field], (int, float)):
            raise ValueError(f"{where}.{field}: expected a number, got {spec[field]!r}")
    return dict(spec, options=options)


def build(prompt: str, experts: Sequence[Spec], potentials: Sequence[Spec] = (), guidance: float = 1.0,
          lambdas: float = 1.0) -> Product:
    """The Product of named generative experts and potentials for one prompt. Each is 'kind:path' or a config
    entry (``kind``, ``path``, optional ``prompt``, ``guidance``, ``weight`` (a factor on its weights, or its
    lambda for a potential) and ``options``)."""
    gen, weights, decode = [], [], None
    for i, spec in enumerate(experts):
        e = _entry(spec, GENERATIVE, GENERATIVE_FIELDS, "--expert" if isinstance(spec, str) else f"experts[{i}]")
        text = e.get("prompt", prompt)
        if text is None:
            raise ValueError(f"experts[{i}]: no prompt; give one on the command line or as prompt: in the config")
        made, w, d = GENERATIVE[e["kind"]][1](e["path"], text, e.get("guidance", guidance), **e.get("options", {}))
        gen += made
        weights += [e.get("weight", 1.0) * x for x in w]
        decode = decode or d
    pots: List = []
    lams: List[float] = []
    for j, spec in enumerate(potentials):
        e = _entry(spec, POTENTIALS, POTENTIAL_FIELDS, "--potential" if isinstance(spec, str) else f"potentials[{j}]")
        text = e.get("prompt", prompt)
        if text is None:
            raise ValueError(f"potentials[{j}]: no prompt; give one on the command line or as prompt: in the config")
        pots.append(POTENTIALS[e["kind"]][1](e["path"], text, **e.get("options", {})))
        lams.append(float(e.get("weight", lambdas)))
    return Product(gen, weights=weights, potentials=pots, lambdas=lams, decode=decode)


def load_config(path: Union[str, Path]) -> dict:
    """A YAML or JSON file naming experts and potentials, checked field by field::

        prompt: a red ball on a blue box          # optional default for every entry
        experts:
          - {kind: sd, path: /models/sd15, guidance: 7.5, options: {micro_batch: 16}}
        potentials:
          - {kind: clip, path: /models/clip-vit-b32, weight: 2.0}
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
        else:
            import yaml
            data = yaml.safe_load(path.read_text())
    except Exception as e:  # json and yaml errors carry the line number
        raise ValueError(f"{path}: cannot parse: {e}") from None
    check_keys(data, str(path), ("prompt", "experts", "potentials"), required=("experts",))
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
    return {"prompt": data.get("prompt"), "experts": data["experts"], "potentials": data.get("potentials", [])}
