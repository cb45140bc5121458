"""Experts by name, for configs and the command line: ``--expert sd:/models/sd15 --potential clip:/models/clip``."""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

from ..product import Product

# kind -> (what it is, builder(path, prompt, guidance) -> (experts, weights, decode or None))
GENERATIVE: Dict[str, Tuple[str, Callable]] = {}
# kind -> (what it is, builder(path, prompt) -> potential)
POTENTIALS: Dict[str, Tuple[str, Callable]] = {}


def _sd(path: str, prompt: str, guidance: float):
    from .diffusers import TextConditionedUNetExpert, vae_decoder
    cond = TextConditionedUNetExpert.from_pretrained(path, prompt)
    null = TextConditionedUNetExpert(cond.unet, cond.alphas_cumprod, cond.prediction_type,
                                     TextConditionedUNetExpert.from_pretrained(path, "").text_embeddings, name="sd[]")
    return [cond, null], [guidance, 1.0 - guidance], vae_decoder(path)


def _unet(path: str, prompt: str, guidance: float):
    from .diffusers import VPUNetExpert
    return [VPUNetExpert.from_pretrained(path)], [1.0], None


def _clip(path: str, prompt: str):
    from .vlm import ClipScore
    return ClipScore.from_pretrained(path, prompt)


GENERATIVE["sd"] = ("Stable Diffusion 1.x/2.x folder or cached id: the prompt's expert times the empty prompt's "
                    "(classifier-free guidance as a product, --guidance), decoded by its VAE", _sd)
GENERATIVE["unet"] = ("pixel-space UNet2DModel folder with unet/ and scheduler/ (unconditional)", _unet)
POTENTIALS["clip"] = ("CLIP score (transformers CLIPModel folder or cached id) of the image against the prompt", _clip)


def split(spec: str, table: Dict, flag: str) -> Tuple[str, str]:
    """(kind, path) of 'kind:path'; an unknown kind lists the known ones."""
    kind, sep, path = spec.partition(":")
    if kind not in table or not sep or not path:
        raise ValueError(f"{flag} {spec!r}: expected KIND:PATH with KIND one of {', '.join(table)}")
    return kind, path


def build(prompt: str, experts: Sequence[str], potentials: Sequence[str] = (), guidance: float = 1.0,
          lambdas: float = 1.0) -> Product:
    """The Product of named generative experts and potentials for one prompt."""
    gen, weights, decode = [], [], None
    for spec in experts:
        kind, path = split(spec, GENERATIVE, "--expert")
        e, w, d = GENERATIVE[kind][1](path, prompt, guidance)
        gen += e
        weights += w
        decode = decode or d
    pots: List = [POTENTIALS[k][1](p, prompt) for k, p in (split(s, POTENTIALS, "--potential") for s in potentials)]
    return Product(gen, weights=weights, potentials=pots, lambdas=[lambdas] * len(pots), decode=decode)
