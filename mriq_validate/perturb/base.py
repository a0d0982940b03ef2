"""The perturbation registry: seeded, replayable edits of (images, masks) at a known strength.

A perturbation is a pure function ``fn(images, masks, rng, ctx, **params) -> (images, masks)`` on
N×1×H×W float images in [0, 1] and N×1×H×W integer label masks. It is registered with typed parameters
(default, valid range, the value that makes it the identity) so YAML can name it and sweep its strength,
and every call is recorded with the parameters and seed it used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ..errors import MetricError

Scope = Literal["global", "local", "set"]


@dataclass(frozen=True)
class Param:
    """One parameter: its default, inclusive valid range, and the value at which the edit is the identity."""

    name: str
    default: float
    low: float
    high: float
    identity: float | None = None
    doc: str = ""
    integer: bool = False


@dataclass(frozen=True)
class PerturbContext:
    """What set-level perturbations may draw on: the training split and its covariates, and label values."""

    train_images: torch.Tensor | None = None
    train_masks: torch.Tensor | None = None
    covariates: Mapping[str, np.ndarray] = field(default_factory=dict)
    lesion_labels: tuple[int, ...] | None = None  # mask values that make up the lesion; None: all > 0


PerturbFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Perturbation:
    """A registered perturbation (see module docstring)."""

    name: str
    fn: PerturbFn
    params: tuple[Param, ...]
    scope: Scope
    strength: str
    changes_mask: bool
    doc: str

    def param(self, name: str) -> Param:
        """The parameter called ``name``."""
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def resolve(self, given: Mapping[str, Any], where: str = "") -> dict[str, float]:
        """Defaults filled in and every value checked against its range; MetricError names the bad one."""
        known = {p.name for p in self.params}
        unknown = set(given) - known
        if unknown:
            raise MetricError(f"{where}perturbation {self.name!r}: unknown parameter(s) {sorted(unknown)}; expected {sorted(known)}")
        out: dict[str, float] = {}
        for p in self.params:
            v = given.get(p.name, p.default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise MetricError(f"{where}perturbation {self.name!r}: {p.name}={v!r} is not a finite number")
            if not p.low <= v <= p.high:
                raise MetricError(f"{where}perturbation {self.name!r}: {p.name}={v} is out of range; expected {p.low} <= {p.name} <= {p.high}")
            out[p.name] = int(v) if p.integer else float(v)
        return out


REGISTRY: dict[str, Perturbation] = {}


def register(name: str, *, params: tuple[Param, ...], scope: Scope, strength: str, changes_mask: bool = False) -> Callable[[PerturbFn], PerturbFn]:
    """Register ``fn`` as perturbation ``name``; its docstring is the user-facing description."""

    def deco(fn: PerturbFn) -> PerturbFn:
        if name in REGISTRY:
            raise ValueError(f"perturbation {name!r} registered twice")
        if strength not in {p.name for p in params}:
            raise ValueError(f"perturbation {name!r}: strength {strength!r} is not one of its parameters")
        REGISTRY[name] = Perturbation(name, fn, params, scope, strength, changes_mask, (fn.__doc__ or "").strip())
        return fn

    return deco


@dataclass(frozen=True)
class Perturbed:
    """The result of :func:`apply`, with the record that replays it."""

    images: torch.Tensor
    masks: torch.Tensor
    record: dict[str, Any]


def get(name: str, where: str = "") -> Perturbation:
    """The registered perturbation ``name``; MetricError listing the known names otherwise."""
    _load_all()
    if name not in REGISTRY:
        raise MetricError(f"{where}unknown perturbation {name!r}; expected one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def apply(name: str, images: torch.Tensor, masks: torch.Tensor, *, seed: int, ctx: PerturbContext | None = None,
          where: str = "", **params: Any) -> Perturbed:
    """Apply perturbation ``name`` with ``params`` (checked), seeded by ``seed``; same seed → identical output."""
    pert = get(name, where)
    values = pert.resolve(params, where)
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed % (2**63))
        out_images, out_masks = pert.fn(images, masks, rng, ctx or PerturbContext(), **values)
    out_images = out_images.clamp(0.0, 1.0).to(images.dtype)
    return Perturbed(out_images, out_masks, {"name": name, "params": values, "seed": seed, "scope": pert.scope})


def lesion_region(masks: torch.Tensor, ctx: PerturbContext) -> torch.Tensor:
    """Boolean lesion mask (labels in ``ctx.lesion_labels``, or any label > 0)."""
    if ctx.lesion_labels is None:
        return masks > 0
    return torch.isin(masks, torch.tensor(ctx.lesion_labels, dtype=masks.dtype))


def require_lesion(region: torch.Tensor, name: str) -> None:
    """MetricError when any image has an empty lesion mask (a localised edit cannot be applied)."""
    empty = (~region.flatten(1).any(1)).nonzero().flatten().tolist()
    if empty:
        raise MetricError(f"localised perturbation {name!r} needs a lesion in every mask, but mask(s) {empty[:10]} are empty")


def _load_all() -> None:
    from . import artefacts, morphology, noise, shifts  # noqa: F401  (register on import)
