"""Experts: generative (denoisers) and discriminative (log-potentials), one module per family."""
from .base import DiscriminativeExpert, GenerativeExpert, expert_name

__all__ = ["GenerativeExpert", "DiscriminativeExpert", "expert_name"]
