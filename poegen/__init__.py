"""poegen: image generation from a product of generative and discriminative experts.

The public names load on first use (PEP 562), so ``import poegen`` and ``poegen --help`` stay free of torch.
"""
import importlib

__version__ = "0.1.0"
_WHERE = {"Layout": "layout", "LayoutObject": "layout", "build_product": "families", "from_prompt": "specs",
          "load_layout": "specs", "Product": "product", "Particles": "particles", "sample": "samplers",
          "SampleResult": "samplers", "AllParticlesDead": "samplers", "from_pipeline": "interop",
          "potential": "interop", "decode_images": "interop", "pipeline_sigmas": "interop",
          "certify": "certificate", "Certificate": "certificate"}
_MODULES = ("defaults", "resampling", "samplers", "schedules")
__all__ = [*_WHERE, *_MODULES, "__version__"]


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
