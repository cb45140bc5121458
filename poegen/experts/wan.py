"""Wan 2.1 video (Wan Team 2025, arXiv 2503.20314): text-to-video, image-to-video from a first frame, and VACE control
(a depth or pose video, a masked video), with the transformer inputs diffusers' ``WanPipeline``,
``WanImageToVideoPipeline`` and ``WanVACEPipeline`` build.

Particles are whole clips: latents (N, C, F, h, w) with F = (frames - 1) / 4 + 1 and h, w = pixels / 8, normalised
per channel by the VAE's ``latents_mean`` / ``latents_std``. The flow -> VE conversion (t = sigma / (1 + sigma), input
x / (1 + sigma), x0_hat = x_t - t v) and the micro-batched call are ``FlowTransformerExpert``'s. The conditioning
(UMT5 prompt embeddings, first-frame latents and mask, CLIP image tokens, VACE control latents) is computed once and
repeated per row, so particles run batched where a reference pipeline runs at batch 1 (VACE).
"""
from __future__ import annotations

import html
import json
import logging
import re
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .cache import cached, digest
from .cache import torch_dtype as _torch_dtype
from .diffusers import FlowTransformerExpert, _Decode, _encoded, resolve
from .diffusers.common import load_pretrained

log = logging.getLogger("poegen.experts.wan")

# the keyword options a config entry of kind "wan" may give ``load_wan``
OPTIONS = ("num_frames", "height", "width", "max_sequence_length", "conditioning_scale", "micro_batch", "torch_dtype")


def _clean(prompt: str) -> str:
    """The prompt as Wan's pipelines clean it: mojibake fixed (where ftfy is installed), HTML entities unescaped
    (twice), whitespace runs collapsed."""
    try:
        import ftfy
        prompt = ftfy.fix_text(prompt)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(prompt)).strip()).strip()


def _config(root: str, sub: str) -> dict:
    path = Path(root) / sub / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{root}: {sub}/config.json is missing; a Wan folder has transformer/, vae/, "
                                "text_encoder/, tokenizer/ and scheduler/ (as WanPipeline.save_pretrained writes)")
    return json.loads(path.read_text())


def _wan_parts(path_or_id: str, torch_dtype=None) -> dict:
    """Transformer (plain or VACE, as its config names it), UMT5 encoder and tokenizer of a Wan folder, loaded once."""
    def load():
        import diffusers
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = resolve(path_or_id)
        index = Path(root) / "model_index.json"
        if index.exists() and (json.loads(index.read_text()).get("transformer_2") or [None])[-1] is not None:
            raise ValueError(f"{path_or_id}: a Wan 2.2 folder with two transformers (high and low noise) is not "
                             "supported yet; use a Wan 2.1 folder")
        kind = _config(root, "transformer").get("_class_name", "WanTransformer3DModel")
        if kind not in ("WanTransformer3DModel", "WanVACETransformer3DModel"):
            raise ValueError(f"{path_or_id}: transformer/ is a {kind}, not a Wan 2.1 transformer "
                             "(WanTransformer3DModel or WanVACETransformer3DModel)")
        return {"root": root, "embeddings": {},
                "transformer": load_pretrained(getattr(diffusers, kind), root, "transformer",
                                               torch_dtype=torch_dtype).eval(),
                "tokenizer": load_pretrained(AutoTokenizer, root, "tokenizer"),
                "text_encoder": load_pretrained(UMT5EncoderModel, root, "text_encoder", torch_dtype=torch_dtype).eval()}
    return cached("wan", path_or_id, torch_dtype, None, load)


@torch.no_grad()
def encode_wan_prompt(parts: dict, prompt: str, max_sequence_length: int = 512) -> Tensor:
    """(1, max_sequence_length, text_dim) UMT5 hidden states of ``prompt``, zero past its last token (as the
    pipelines' ``encode_prompt``)."""
    ids = parts["tokenizer"]([_clean(prompt)], padding="max_length", max_length=max_sequence_length, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    encoder = parts["text_encoder"]
    hidden = encoder(ids.input_ids.to(encoder.device), ids.attention_mask.to(encoder.device)).last_hidden_state
    keep = int(ids.attention_mask.gt(0).sum())
    return torch.cat([hidden[:, :keep], hidden.new_zeros(1, max_sequence_length - keep, hidden.shape[-1])], dim=1)


# ---- the VAE: per-channel normalised latents ------------------------------------------------------------------

def load_wan_vae(root: str, device=None):
    """The folder's ``AutoencoderKLWan``, loaded once per device."""
    from diffusers import AutoencoderKLWan

    return cached("wan-vae", root, None, device,
                  lambda: load_pretrained(AutoencoderKLWan, root, "vae").eval().to(device))


def _stats(vae, like: Tensor) -> Tuple[Tensor, Tensor]:
    """(latents_mean, 1 / latents_std) as (1, C, 1, 1, 1) tensors, as the pipelines build them."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(like.device, like.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(like.device, like.dtype)
    return mean, inv_std


@torch.no_grad()
def encode_video(vae, video: Tensor) -> Tensor:
    """Normalised latents (VAE mode) of a (1, 3, frames, H, W) video in [-1, 1]."""
    p = next(vae.parameters())
    z = vae.encode(video.to(p.device, p.dtype)).latent_dist.mode().float()
    mean, inv_std = _stats(vae, z)
    return (z - mean) * inv_std


def wan_decoder(path_or_id: str, device=None):
    """A decode(latents (N, C, F, h, w)) -> videos (N, 3, frames, H, W) in [-1, 1] callable for ``Product(decode=)``;
    ``decode.micro_batch`` clips per VAE call (all when None)."""
    vae = load_wan_vae(resolve(path_or_id), device)
    module = _Decode(vae)

    def decode(latents: Tensor) -> Tensor:  # differentiable where the caller enables grad
        p = next(module.parameters())
        mean, inv_std = _stats(vae, latents.to(p.device, p.dtype))
        z = latents.to(p.device, p.dtype) / inv_std + mean
        out = torch.cat([module(chunk) for chunk in z.split(decode.micro_batch or len(z))])
        return out.clamp(-1, 1).to(latents.device, latents.dtype)
    decode.vae, decode.module, decode.micro_batch = vae, module, None  # Product.to moves the VAE
    decode.offload_modules = lambda: [module]
    return decode


def nearest_frames(n: int, step: int = 4) -> Tuple[int, ...]:
    """The valid clip lengths (step k + 1, at least 1) nearest to n: one if n is valid, else the two around it."""
    below = max(1, (n - 1) // step * step + 1)
    return (below,) if below == n or n < 1 else (below, below + step)


def latent_shape(root: str, num_frames: int, height: int, width: int) -> Tuple[int, int, int, int]:
    """(C, F, h, w) of a clip of ``num_frames`` frames of height x width pixels; short errors for sizes the
    pipelines would round."""
    vae, tr = _config(root, "vae"), _config(root, "transformer")
    ft, fs = vae.get("scale_factor_temporal", 4), vae.get("scale_factor_spatial", 8)
    step = fs * tr.get("patch_size", (1, 2, 2))[1]
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % ft:
        near = (f"; nearest: {' or '.join(map(str, nearest_frames(num_frames, ft)))} (set by --frames, or by "
                "options.num_frames of a wan entry)"
                if isinstance(num_frames, int) and not isinstance(num_frames, bool) else "")
        raise ValueError(f"num_frames {num_frames!r} must be {ft}k + 1 (1, {ft + 1}, {2 * ft + 1}, ..., 81){near}")
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % step:
            raise ValueError(f"{name} {v!r} must be a positive multiple of {step} (VAE factor {fs} times patch size)")
    return (vae.get("z_dim", 16), (num_frames - 1) // ft + 1, height // fs, width // fs)


def _check_video(video: Tensor, name: str, channels: int, lo: float) -> Tensor:
    """``video`` as (1, channels, frames, H, W) after checking its rank and range."""
    video = video[None] if video.dim() == 4 else video
    if video.dim() != 5 or video.shape[:2] != (1, channels):
        raise ValueError(f"{name} has shape {tuple(video.shape)}; expected (1, {channels}, frames, H, W)")
    if video.min() < lo or video.max() > 1:
        raise ValueError(f"{name} values span [{float(video.min()):.3g}, {float(video.max()):.3g}]; expected "
                         f"[{lo:g}, 1]" + (" (for a video in [0, 1] pass 2 * video - 1)" if lo < 0 else ""))
    return video.float()


# ---- experts ---------------------------------------------------------------------------------------------------

class WanExpert(FlowTransformerExpert):
    """Wan 2.1 text-to-video (``WanTransformer3DModel``) for one prompt's UMT5 embeddings; clips (C, F, h, w).

    Classifier-free guidance is a product with the empty prompt's expert on the same transformer
    (``Product([cond, uncond], weights=[w, 1 - w])``), one batched call per evaluation."""

    def __init__(self, transformer, prompt_embeds: Tensor, shape, micro_batch: Optional[int] = None,
                 name: Optional[str] = None):
        self.transformer = transformer.eval()
        self.prompt_embeds, self.shape = prompt_embeds, tuple(shape)
        self.sigma_min, self.sigma_max = 1e-3, 1e3  # t in [0.001, 0.999]
        self.micro_batch, self.name = micro_batch, name or "wan"

    @classmethod
    def from_pretrained(cls, path_or_id: str, prompt: str = "", **kwargs) -> "WanExpert":
        return cls.load_prompts(path_or_id, [prompt], **kwargs)[0]

    @classmethod
    def _load(cls, path_or_id: str, prompts: Sequence[str], max_sequence_length: int, torch_dtype, make) -> list:
        """One expert per prompt on one transformer; ``make(parts, embeddings, prompt)`` builds each."""
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a list of prompts, got one string; use from_pretrained for one")
        if not 1 <= int(max_sequence_length) <= 512:
            raise ValueError(f"max_sequence_length {max_sequence_length} must be between 1 and 512 (as WanPipeline)")
        parts = _wan_parts(path_or_id, _torch_dtype(torch_dtype))
        return [make(parts, _encoded(parts, (p, int(max_sequence_length)),
                                     lambda key: encode_wan_prompt(parts, *key)), p) for p in prompts]

    @classmethod
    def load_prompts(cls, path_or_id: str, prompts: Sequence[str], num_frames: int = 81, height: int = 480,
                     width: int = 832, max_sequence_length: int = 512, torch_dtype=None,
                     micro_batch: Optional[int] = None, name: Optional[str] = None) -> list:
        """Text-to-video experts, one per prompt (the pipeline's defaults: 81 frames of 480 x 832, 512 tokens)."""
        root = resolve(path_or_id)
        shape = latent_shape(root, num_frames, height, width)
        if _config(root, "transformer").get("vace_layers"):
            raise ValueError(f"{path_or_id}: this is a VACE folder; pass a control video (WanVACEExpert)")
        if _config(root, "transformer").get("in_channels") != shape[0]:
            raise ValueError(f"{path_or_id}: transformer in_channels is not the VAE's {shape[0]} latent channels: "
                             "this is an image-to-video folder; pass image=... (WanImageToVideoExpert)")

        def make(parts, emb, prompt):
            return cls(parts["transformer"], emb, shape, micro_batch=micro_batch, name=name or f"wan[{prompt}]")
        return cls._load(path_or_id, prompts, max_sequence_length, torch_dtype, make)

    @property
    def batch_key(self):
        return (type(self), id(self.transformer), self.shape)

    def _conditioning(self, n: int) -> dict:
        return {"encoder_hidden_states": self.prompt_embeds.expand(n, -1, -1)}

    def _forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        return self.transformer(hidden_states=x_t, timestep=(1000 * t).to(x_t.dtype), return_dict=False, **cond)[0]


@torch.no_grad()
def first_frame_condition(vae, image: Tensor, num_frames: int) -> Tensor:
    """(1, 4 + C, F, h, w): the mask of known frames (the first frame, four times over as the VAE's first latent
    frame holds it) then the normalised latents of the first frame followed by black frames, as
    ``WanImageToVideoPipeline.prepare_latents``."""
    _, _, H, W = image.shape
    video = torch.cat([image[:, :, None], image.new_zeros(1, 3, num_frames - 1, H, W)], dim=2)
    z = encode_video(vae, video)
    _, _, F, h, w = z.shape
    mask = z.new_zeros(1, 1, 4 * F, h, w)
    mask[:, :, :4] = 1
    return torch.cat([mask.view(1, F, 4, h, w).transpose(1, 2), z], dim=1)


def _clip_image_tokens(root: str, image: Tensor, torch_dtype) -> Tensor:
    """(1, tokens, image_dim): the CLIP vision encoder's penultimate hidden states of the image (as a uint8 picture
    through the folder's image_processor, as the pipeline feeds it)."""
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModel

    enc = cached("wan-image-encoder", root, torch_dtype, None, lambda: (
        load_pretrained(CLIPImageProcessor, root, "image_processor"),
        load_pretrained(CLIPVisionModel, root, "image_encoder", torch_dtype=torch_dtype).eval()))
    pixels = ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    inputs = enc[0](images=Image.fromarray(pixels), return_tensors="pt").to(enc[1].device)
    with torch.no_grad():
        return enc[1](**inputs, output_hidden_states=True).hidden_states[-2]


class WanImageToVideoExpert(WanExpert):
    """Wan 2.1 image-to-video: the transformer reads the noisy latents concatenated on the channel axis with the
    first-frame ``condition`` (mask and latents), and, where its config has ``image_dim``, the CLIP tokens of the
    image (``image_embeds``)."""

    def __init__(self, transformer, prompt_embeds: Tensor, shape, condition: Tensor,
                 image_embeds: Optional[Tensor] = None, **kwargs):
        super().__init__(transformer, prompt_embeds, shape, **kwargs)
        if transformer.config.in_channels != shape[0] + condition.shape[1]:
            raise ValueError(f"transformer in_channels {transformer.config.in_channels} != {shape[0]} latent + "
                             f"{condition.shape[1]} condition channels")
        self.condition, self.image_embeds = condition, image_embeds

    @classmethod
    def load_prompts(cls, path_or_id: str, prompts: Sequence[str], image: Tensor = None, num_frames: int = 81,
                     max_sequence_length: int = 512, torch_dtype=None, micro_batch: Optional[int] = None,
                     name: Optional[str] = None) -> list:
        """One expert per prompt continuing ``image`` (1, 3, H, W) in [-1, 1], the first of ``num_frames`` frames of
        H x W pixels; the image is encoded once per folder (VAE and, for Wan 2.1, CLIP)."""
        if image is None:
            raise ValueError("image-to-video needs the first frame: image (1, 3, H, W) in [-1, 1]")
        image = _check_video(image[:, :, None] if image.dim() == 4 else image, "image", 3, -1.0)[:, :, 0]
        root = resolve(path_or_id)
        shape = latent_shape(root, num_frames, image.shape[-2], image.shape[-1])
        dtype = _torch_dtype(torch_dtype)
        store = cached("wan-first-frame", root, dtype, None, dict)
        key = (digest(image), num_frames)
        if key not in store:
            with_clip = _config(root, "transformer").get("image_dim") is not None
            store[key] = (first_frame_condition(load_wan_vae(root), image, num_frames),
                          _clip_image_tokens(root, image, dtype) if with_clip else None)
        condition, image_embeds = store[key]

        def make(parts, emb, prompt):
            return cls(parts["transformer"], emb, shape, condition, image_embeds, micro_batch=micro_batch,
                       name=name or f"wan-i2v[{prompt}]")
        return cls._load(path_or_id, prompts, max_sequence_length, torch_dtype, make)

    def _conditioning(self, n: int) -> dict:
        cond = {**super()._conditioning(n), "condition": self.condition.expand(n, -1, -1, -1, -1)}
        if self.image_embeds is not None:
            cond["encoder_hidden_states_image"] = self.image_embeds.expand(n, -1, -1)
        return cond

    def _forward(self, x_t: Tensor, t: Tensor, condition: Tensor = None, **cond) -> Tensor:
        return super()._forward(torch.cat([x_t, condition], dim=1), t, **cond)


@torch.no_grad()
def vace_control(vae, video: Tensor, mask: Tensor, latent_frames: int) -> Tensor:
    """(1, 2C + f^2, F, h, w) VACE control latents, as ``WanVACEPipeline``: the latents of the video outside the mask
    (kept) and inside it (reactive: regenerated following the video), then the mask with each f x f pixel block
    unshuffled to f^2 channels and resampled to the latent frames (nearest)."""
    binary = (mask > 0.5).to(video.dtype)
    z = torch.cat([encode_video(vae, video * (1 - binary)), encode_video(vae, video * binary)], dim=1)
    _, _, T, H, W = mask.shape
    f = H // z.shape[-2]
    m = mask[0, 0].reshape(T, H // f, f, W // f, f).permute(2, 4, 0, 1, 3).flatten(0, 1)
    m = torch.nn.functional.interpolate(m[None], size=(latent_frames, H // f, W // f), mode="nearest-exact")
    return torch.cat([z, m.to(z)], dim=1)


class WanVACEExpert(WanExpert):
    """Wan 2.1 VACE (``WanVACETransformer3DModel``): the control latents (``vace_control``) enter the VACE blocks,
    whose hints are added with ``scale`` (one factor per VACE layer). Experts with different control videos share one
    call; the scale is part of the batch key."""

    def __init__(self, transformer, prompt_embeds: Tensor, shape, control: Tensor, scale: Tensor, **kwargs):
        super().__init__(transformer, prompt_embeds, shape, **kwargs)
        self.control, self.scale = control, scale

    @classmethod
    def load_prompts(cls, path_or_id: str, prompts: Sequence[str], video: Optional[Tensor] = None,
                     mask: Optional[Tensor] = None, conditioning_scale: Union[float, Sequence[float]] = 1.0,
                     num_frames: int = 81, height: int = 480, width: int = 832, max_sequence_length: int = 512,
                     torch_dtype=None, micro_batch: Optional[int] = None, name: Optional[str] = None) -> list:
        """One expert per prompt steered by ``video`` (1, 3, frames, H, W) in [-1, 1] (a depth or pose video; None:
        black) inside ``mask`` (1, 1, frames, H, W) in [0, 1], 1 = generate (None: everywhere); the video's size
        sets frames, height and width when given."""
        root = resolve(path_or_id)
        if video is not None:
            video = _check_video(video, "video", 3, -1.0)
            num_frames, height, width = video.shape[2:]
        shape = latent_shape(root, num_frames, height, width)
        video = torch.zeros(1, 3, num_frames, height, width) if video is None else video
        mask = torch.ones(1, 1, *video.shape[2:]) if mask is None else _check_video(mask, "mask", 1, 0.0)
        if mask.shape[2:] != video.shape[2:]:
            raise ValueError(f"mask covers {tuple(mask.shape[2:])} (frames, H, W) but the video {tuple(video.shape[2:])}")
        layers = len(_config(root, "transformer").get("vace_layers") or ())
        if not layers:
            raise ValueError(f"{path_or_id}: transformer/ has no vace_layers; this is not a Wan VACE folder")
        scale = torch.as_tensor(conditioning_scale, dtype=torch.float32).reshape(-1)
        if len(scale) not in (1, layers):
            raise ValueError(f"conditioning_scale has {len(scale)} values; give one number or {layers} (one per "
                             "VACE layer)")
        scale = scale.expand(layers).clone()
        store = cached("wan-vace-control", root, None, None, dict)
        key = digest(video, mask)
        if key not in store:
            store[key] = vace_control(load_wan_vae(root), video, mask, shape[1])
        control = store[key]

        def make(parts, emb, prompt):
            return cls(parts["transformer"], emb, shape, control, scale, micro_batch=micro_batch,
                       name=name or f"wan-vace[{prompt}]")
        return cls._load(path_or_id, prompts, max_sequence_length, torch_dtype, make)

    @property
    def batch_key(self):
        return (*super().batch_key, tuple(self.scale.tolist()))

    def _conditioning(self, n: int) -> dict:
        return {**super()._conditioning(n), "control_hidden_states": self.control.expand(n, -1, -1, -1, -1)}

    def _forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        return super()._forward(x_t, t, control_hidden_states_scale=self.scale.to(x_t), **cond)


def _given(value, what: str, reader) -> Tuple[Optional[Tensor], str]:
    """(tensor with a batch axis, its name for messages) of an input given as a tensor or as a file (``reader``)."""
    if value is None or isinstance(value, Tensor):
        return value, what
    if isinstance(value, (str, Path)):
        return reader(value, what)[None], f"{what} {value}"
    raise ValueError(f"{what}: expected a file path or a tensor, got {type(value).__name__}")


def _sized(clip: Tensor, name: str, root: str, height: Optional[int] = None, width: Optional[int] = None) -> Tensor:
    """A (1, 3, F, H, W) clip resized to height x width where either is given (with a warning), else checked: sides
    that are multiples of the folder's step (VAE factor times patch size), or a short error with the fix."""
    H, W = clip.shape[-2:]
    if height is not None or width is not None:
        size = (height or H, width or W)
        if size != (H, W):
            log.warning("%s is %dx%d pixels; resized to %dx%d (options height, width)", name, W, H, size[1], size[0])
            frames = torch.nn.functional.interpolate(clip[0].transpose(0, 1).float(), size=size, mode="bilinear",
                                                     antialias=True, align_corners=False)
            clip = frames.transpose(0, 1)[None].clamp(-1, 1)
        return clip
    step = _config(root, "vae").get("scale_factor_spatial", 8) * _config(root, "transformer").get(
        "patch_size", (1, 2, 2))[1]
    if H % step or W % step:
        near = [max(step, round(v / step) * step) for v in (W, H)]
        raise ValueError(f"{name} is {W}x{H} pixels; Wan needs sides that are multiples of {step}: resize it (e.g. to "
                         f"{near[0]}x{near[1]}), or set options height and width of the wan entry (--config) to have "
                         "it resized")
    return clip


def _frames_of(video: Tensor, name: str, root: str, options: dict):
    """Check a control video's frame count: 4k + 1, and options num_frames (--frames) if given (then dropped)."""
    n, ft = video.shape[2], _config(root, "vae").get("scale_factor_temporal", 4)
    if (n - 1) % ft:
        raise ValueError(f"{name} has {n} frames; Wan needs {ft}k + 1 (nearest: "
                         f"{' or '.join(map(str, nearest_frames(n, ft)))}): trim or extend the clip")
    asked = options.pop("num_frames", None)
    if asked is not None and asked != n:
        raise ValueError(f"{name} has {n} frames but num_frames (--frames) is {asked}: give a clip of {asked} frames, "
                         "or leave --frames out (the clip sets the length)")


def load_wan(path: str, texts: Sequence[str], image=None, video=None, mask: Optional[Tensor] = None,
             **options) -> list:
    """Registry loader: one expert per text; the folder's transformer picks the kind (VACE with ``video``/``mask``,
    image-to-video when it reads more channels than the VAE gives, with ``image``; else text-to-video). ``image``
    (1, 3, H, W) and ``video`` (1, 3, F, H, W) in [-1, 1] may also be files (``images.read_image``/``read_video``);
    options height and width resize them, else their size is the clip's."""
    from ..images import read_image, read_video

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"wan options {unknown} are not among {', '.join(OPTIONS)}")
    root = resolve(path)
    config = _config(root, "transformer")
    image_to_video = config.get("in_channels") != _config(root, "vae").get("z_dim", 16)
    kind = "a VACE" if config.get("vace_layers") else "an image-to-video" if image_to_video else "a text-to-video"
    if image is not None and video is not None:  # a scene gives both (users give one): each folder takes its own
        image, video = (None, video) if config.get("vace_layers") else (image, None) if image_to_video else (None, None)
    if image is not None and (config.get("vace_layers") or not image_to_video):
        raise ValueError(f"wan {path}: a first frame (--first-frame) needs an image-to-video folder (transformer "
                         f"in_channels 36); this is {kind} folder" + (", which takes a control video (--control)"
                                                                      if config.get("vace_layers") else ""))
    if config.get("vace_layers"):
        video, name = _given(video, "control video", read_video)
        if video is not None:
            _frames_of(video, name, root, options)
            video = _sized(video, name, root, options.get("height"), options.get("width"))
        return WanVACEExpert.load_prompts(path, list(texts), video, mask, **options)
    scale = options.pop("conditioning_scale", None)
    if video is not None or mask is not None or scale is not None:
        raise ValueError(f"wan {path}: a control video (--control), mask or conditioning_scale needs a VACE folder "
                         f"(transformer with vace_layers); this is {kind} folder")
    if image_to_video:
        if image is None:
            raise ValueError(f"wan {path}: an image-to-video folder needs the clip's first frame (--first-frame FILE, "
                             "or options.first_frame of its entry)")
        image, name = _given(image, "first frame", read_image)
        image = _sized(image[:, :, None], name, root, options.pop("height", None), options.pop("width", None))
        return WanImageToVideoExpert.load_prompts(path, list(texts), image[:, :, 0], **options)
    return WanExpert.load_prompts(path, list(texts), **options)
