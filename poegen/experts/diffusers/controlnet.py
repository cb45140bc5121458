"""ControlNet-steered UNet experts (SD 1.x/2.x and SDXL) on a fixed control image, and their shared loader."""
from __future__ import annotations

from torch import Tensor

from ..cache import cached
from .common import load_pretrained, resolve
from .sdxl import SDXLExpert
from .unet import TextConditionedUNetExpert, unet_config


class _ControlNetMixin:
    """A text-conditioned UNet expert steered by a ``ControlNetModel`` on a fixed control image (e.g. the physics
    expert's depth map) in [0, 1] at pixel resolution, shape (1, C, H, W); the UNet's own conditioning goes to both."""

    def _control(self, controlnet, control_image: Tensor, conditioning_scale: float):
        self.controlnet, self.control_image, self.conditioning_scale = controlnet.eval(), control_image, conditioning_scale

    @property
    def batch_key(self):
        return (type(self), id(self.unet), id(self.controlnet), self.conditioning_scale)

    def offload_modules(self) -> list:
        return [self.controlnet, self.unet]

    def _conditioning(self, n: int) -> dict:
        return {**super()._conditioning(n), "controlnet_cond": self.control_image.expand(n, -1, -1, -1)}

    def _forward(self, x_vp: Tensor, t: Tensor, controlnet_cond: Tensor = None, **cond) -> Tensor:
        kwargs = self._net_kwargs(**cond)
        down, mid = self.controlnet(x_vp, t, controlnet_cond=controlnet_cond, conditioning_scale=self.conditioning_scale,
                                    return_dict=False, **kwargs)
        return self.unet(x_vp, t, down_block_additional_residuals=down, mid_block_additional_residual=mid,
                         **kwargs).sample


class ControlNetExpert(_ControlNetMixin, TextConditionedUNetExpert):
    """Stable Diffusion 1.x/2.x with a ControlNet (see ``_ControlNetMixin``)."""

    def __init__(self, unet, alphas_cumprod, prediction_type: str, text_embeddings: Tensor, controlnet,
                 control_image: Tensor, conditioning_scale: float = 1.0, **kwargs):
        super().__init__(unet, alphas_cumprod, prediction_type, text_embeddings, **kwargs)
        self._control(controlnet, control_image, conditioning_scale)

    @classmethod
    def from_pretrained(cls, path_or_id: str, prompt: str = "", controlnet: str = "", control_image: Tensor = None,
                        conditioning_scale: float = 1.0, **kwargs) -> "ControlNetExpert":
        """The Stable Diffusion folder ``path_or_id`` plus a ControlNet folder or cached id ``controlnet``."""
        return load_controlnet_prompts(path_or_id, controlnet, [prompt], control_image, conditioning_scale, **kwargs)[0]


class SDXLControlNetExpert(_ControlNetMixin, SDXLExpert):
    """Stable Diffusion XL with a ControlNet (see ``_ControlNetMixin``)."""

    def __init__(self, unet, alphas_cumprod, prediction_type: str, text_embeddings: Tensor, pooled_embeddings: Tensor,
                 time_ids: Tensor, controlnet, control_image: Tensor, conditioning_scale: float = 1.0, **kwargs):
        super().__init__(unet, alphas_cumprod, prediction_type, text_embeddings, pooled_embeddings, time_ids, **kwargs)
        self._control(controlnet, control_image, conditioning_scale)


def load_controlnet_prompts(base: str, controlnet: str, prompts, control_image: Tensor, conditioning_scale: float = 1.0,
                            torch_dtype=None, **kwargs):
    """One ControlNet expert per prompt on the SD 1.x/2.x or SDXL folder ``base`` (told apart by the UNet's
    ``addition_embed_type``) and the ControlNet folder or cached id ``controlnet``, each loaded once."""
    from diffusers import ControlNetModel

    if not controlnet:
        raise ValueError("a ControlNet expert needs the ControlNet's folder or cached id")
    if control_image is None or control_image.dim() != 4:
        raise ValueError("a ControlNet expert needs a control image of shape (1, C, H, W) in [0, 1]")
    root = resolve(controlnet)
    net = cached("controlnet", root, torch_dtype, None,
                 lambda: load_pretrained(ControlNetModel, root, torch_dtype=torch_dtype))
    xl = unet_config(base).get("addition_embed_type") == "text_time"
    kwargs.setdefault("name", None)
    experts = (SDXLExpert if xl else TextConditionedUNetExpert).load_prompts(base, prompts, torch_dtype=torch_dtype)
    kind = SDXLControlNetExpert if xl else ControlNetExpert
    out = []
    for prompt, e in zip(prompts, experts):
        cond = (e.text_embeddings, e.pooled_embeddings, e.time_ids) if xl else (e.text_embeddings,)
        out.append(kind(e.unet, e.alphas_cumprod, e.prediction_type, *cond, net, control_image, conditioning_scale,
                        **dict(kwargs, name=kwargs["name"] or f"controlnet[{prompt}]")))
    return out
