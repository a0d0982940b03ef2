"""Perturbations: a registry of seeded, replayable edits (noise, artefacts, localised morphology, set shifts) of
slices N×C×H×W or volumes N×C×D×H×W.

Importing the package fills the registry: the implementation modules below register their perturbations on
import, and :mod:`.base` (the registry itself) imports none of them, so imports run one way.
"""

from . import artefacts, morphology, vessels, noise, shifts, contrast_defects  # noqa: F401, I001  (register on import, in this order)
from .base import REGISTRY, Param, PerturbContext, Perturbation, Perturbed, apply, get

__all__ = ["REGISTRY", "Param", "PerturbContext", "Perturbation", "Perturbed", "apply", "get"]
