"""Perturbations: a registry of seeded, replayable edits (noise, artefacts, localised morphology, set shifts)."""

from .base import REGISTRY, Param, PerturbContext, Perturbation, Perturbed, apply, get

__all__ = ["REGISTRY", "Param", "PerturbContext", "Perturbation", "Perturbed", "apply", "get"]
