"""Editing: objects inserted into a given image, placed by a user's mask or by physics, with the background kept.

An edit is a Layout like any other (``poegen.layout``): the new objects, located by the mask or by their
simulated footprints, plus, for a scene, the objects already in the image marked ``known`` (asked about, not
drawn), and ``extra["edit"]``: the image and the mask of pixels to repaint. Every family adds the ``KnownPixels``
potential of the image outside the mask; inpainting kinds (``sd-inpaint``, ``flux-fill``) also take both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .layout import Layout, LayoutObject, from_physics, split_prompt


@dataclass
class Edit:
    image: Tensor              # (3, H, W) in [-1, 1]
    mask: Tensor               # (H, W) in {0, 1}: 1 where the image may change
    noise: float = 0.05        # the KnownPixels likelihood's noise scale

    def known_pixels(self):
        from .experts.known import KnownPixels
        return KnownPixels(self.image, 1 - self.mask, self.noise)

    def resized(self, h: int, w: int) -> "Edit":
        """The image (bilinear) and the mask (nearest) at h x w."""
        image = F.interpolate(self.image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        mask = F.interpolate(self.mask[None, None], size=(h, w), mode="nearest")[0, 0]
        return Edit(image, mask, self.noise)


def load_image(path) -> Tensor:
    """An RGB image file as (3, H, W) in [-1, 1]."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    except Exception as e:
        raise ValueError(f"{path}: cannot read it as an image ({type(e).__name__})") from None
    return torch.from_numpy(rgb).permute(2, 0, 1) / 127.5 - 1


def load_mask(path, size: Tuple[int, int]) -> Tensor:
    """A mask file (white = repaint) as (H, W) in {0, 1}; it must match the image's size and mark something."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mask file {path} does not exist")
    grey = np.asarray(Image.open(path).convert("L"))
    if grey.shape != tuple(size):
        raise ValueError(f"--mask {path} is {grey.shape[1]}x{grey.shape[0]}, the image {size[1]}x{size[0]}; give a "
                         "mask of the image's size")
    mask = torch.from_numpy((grey > 127).astype(np.float32))
    if not mask.any():
        raise ValueError(f"--mask {path} is empty: paint the region to change white")
    return mask


def dilate(mask: Tensor, pixels: int) -> Tensor:
    """The mask grown by ``pixels`` in every direction (a square structuring element)."""
    if pixels <= 0:
        return mask
    return F.max_pool2d(mask[None, None], 2 * pixels + 1, stride=1, padding=pixels)[0, 0]


def edit_layout(image: Tensor, prompt: str = "", mask: Optional[Tensor] = None, scene=None, margin: int = 2,
                noise: float = 0.05) -> Layout:
    """The Layout of an edit. With ``mask``: the prompt's objects ("and", commas) inside it. With ``scene`` (a
    SceneSpec whose objects to add say ``new: true``): pybullet drops the new objects onto the others, which stay
    where the spec puts them; the mask is the new objects' simulated footprint grown by ``margin`` pixels."""
    if (mask is None) == (scene is None):
        raise ValueError("an edit needs exactly one of --mask or --scene")
    if scene is None:
        layout = split_prompt(prompt) if prompt.strip() else Layout()
        if not layout.objects:
            raise ValueError("edit: name what to add, e.g. 'a red ball'")
        for o in layout.objects:
            o.mask = mask
        layout.prompt = ""
        layout.extra["edit"] = Edit(image, mask, noise)
        return layout
    from .experts.physics import PhysicsExpert

    new = [k for k, o in enumerate(scene.objects) if o.new]
    if not new:
        raise ValueError("--scene: no object says new: true; mark the objects to add")
    physics = PhysicsExpert(scene)
    lost = [scene.objects[k].name for k in new if k not in physics.visible]
    if lost:
        raise ValueError(f"--scene: new object(s) {', '.join(lost)} end outside the camera's view; move them")
    size = scene.camera.resolution
    if tuple(image.shape[-2:]) != (size, size):
        raise ValueError(f"the image is {image.shape[-1]}x{image.shape[-2]}, the scene's camera {size}x{size}; "
                         "set camera.resolution to the image's size")
    layout = from_physics(physics)
    keep = [k for k in physics.visible]
    for obj, k in zip(layout.objects, keep):
        obj.known = k not in new
    footprint = sum(physics.masks[k] for k in new).clamp(max=1) > 0.05
    region = dilate(footprint.float(), margin)
    if prompt:
        layout.prompt = prompt
    layout.extra["edit"] = Edit(image, region, noise)
    return layout


def replaces_known(product) -> bool:
    """Whether an edit replaces the kept pixels by default: where its samples are pixels (it measured better than
    the KnownPixels weights alone, see README); latent models inpaint with their own experts."""
    return product.edit is not None and product.decode is None


def background_mse(edited: Tensor, edit: Edit) -> float:
    """Mean squared difference to the given image outside the mask ([-1, 1] scale)."""
    keep = (1 - edit.mask).to(edited.device)
    return float((((edited - edit.image.to(edited.device)) ** 2) * keep).sum() / (keep.sum() * edited.shape[0]))


__all__ = ["Edit", "load_image", "load_mask", "dilate", "edit_layout", "background_mse", "LayoutObject"]


def load_edit(path) -> Layout:
    """An edit spec file (YAML/JSON): ``image``, ``prompt`` (optional with a scene), and ``mask`` or ``scene`` (a
    path or an inline scene mapping); paths are relative to the spec's folder."""
    from .scene import parse_scene, load_scene
    from .validation import check_keys, read_file

    path = Path(path)
    data = check_keys(read_file(path, "edit spec"), str(path), ("image", "prompt", "mask", "scene", "margin"),
                      ("image",))
    here = path.parent
    image = load_image(here / data["image"])
    mask = load_mask(here / data["mask"], tuple(image.shape[-2:])) if "mask" in data else None
    scene = data.get("scene")
    if isinstance(scene, str):
        scene = load_scene(here / scene)
    elif scene is not None:
        scene = parse_scene(scene)
    margin = data.get("margin", 2)
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"{path}: margin {str(margin)[:20]!r}: expected whole pixels >= 0 around the new objects")
    return edit_layout(image, data.get("prompt", ""), mask, scene, margin)
