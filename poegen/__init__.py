"""poegen: image generation from a product of generative and discriminative experts."""
from . import resampling, samplers, schedules
from .layout import Layout, LayoutObject, build_product, from_prompt, load_layout
from .particles import Particles
from .product import Product
from .samplers import AllParticlesDead, SampleResult, sample

__version__ = "0.1.0"
__all__ = ["Layout", "LayoutObject", "build_product", "from_prompt", "load_layout", "Product", "Particles", "sample", "samplers", "resampling", "schedules", "SampleResult",
           "AllParticlesDead", "__version__"]
