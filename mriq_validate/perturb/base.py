"""The perturbation registry: seeded, replayable edits of (images, masks) at a known strength.

A perturbation is a pure function ``fn(images, masks, rng, ctx, **params) -> (images, masks)`` on
N×C×H×W float slices or N×C×D×H×W float volumes in [0, 1] (one channel per contrast) and N×1×H×W (N×1×D×H×W)
integer label masks; every family works in both: volumes get 3D k-space artefacts and 3D morphology (distance
transforms, in-painting and skeletons in 3D), and a volume's draws are made once per volume. It is registered with
typed parameters (default, valid range, the value that makes it the identity) so YAML can name it and sweep its
strength, and every call is recorded with the parameters and seed it used.

Contrasts are treated alike: every channel gets the same parameters, and whatever is drawn per item (a bias
field, a spike's position, a ghosting axis, a lesion edit's direction or gap positions) is drawn once per slice or
volume and used on every channel of it; localised edits use the one mask on every channel. Pixel noise is drawn independently
for each channel (each contrast is its own acquisition) at the same strength. With C = 1 every draw is the one a
single-contrast image always got.

The declarations are enforced here, once, by :func:`apply`: at the strength parameter's ``identity`` value the
function is not called and an exact copy is returned; a ``local`` edit needs a lesion in every mask; an edit
declared ``changes_mask=False`` must return the masks unchanged. The registry is filled by the package
``__init__``, which imports the implementation modules (they register on import); this module imports none of them.
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

    def is_identity(self, values: Mapping[str, float]) -> bool:
        """Whether resolved ``values`` put the strength parameter at its declared identity (the edit does nothing)."""
        identity = self.param(self.strength).identity
        return identity is not None and values[self.strength] == identity

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
        if any(p.identity is not None and p.name != strength for p in params):
            raise ValueError(f"perturbation {name!r}: only the strength parameter {strength!r} may declare an identity value")
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
    if name not in REGISTRY:
        raise MetricError(f"{where}unknown perturbation {name!r}; expected one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def apply(name: str, images: torch.Tensor, masks: torch.Tensor, *, seed: int, ctx: PerturbContext | None = None,
          where: str = "", **params: Any) -> Perturbed:
    """Apply perturbation ``name`` with ``params`` (checked), seeded by ``seed``; same seed → identical output.

    At the strength's identity value the result is an exact copy of the inputs. MetricError when a ``local`` edit
    meets an empty lesion mask, or when an edit declared not to change masks changed them.
    """
    pert = get(name, where)
    values = pert.resolve(params, where)
    check_shapes(images, masks, f"{where}perturbation {name!r}")
    ctx = ctx or PerturbContext()
    if pert.scope == "local":
        require_lesion(lesion_region(masks, ctx), name)
    if pert.is_identity(values):
        out_images, out_masks = images, masks.clone()
    else:
        rng = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed % (2**63))
            out_images, out_masks = pert.fn(images, masks, rng, ctx, **values)
        if not pert.changes_mask and not torch.equal(out_masks, masks):
            raise MetricError(f"{where}perturbation {name!r} is declared not to change masks (changes_mask=False) but "
                              f"changed them; declare changes_mask=True or keep the masks")
    out_images = out_images.clamp(0.0, 1.0).to(images.dtype)
    return Perturbed(out_images, out_masks, {"name": name, "params": values, "seed": seed, "scope": pert.scope})


def check_shapes(images: torch.Tensor, masks: torch.Tensor, where: str) -> None:
    """MetricError unless ``images`` are N×C×H×W and ``masks`` N×1×H×W of the same N, H, W (or N×C×D×H×W and
    N×1×D×H×W)."""
    im, ms = tuple(images.shape), tuple(masks.shape)
    if len(im) not in (4, 5) or im[1] < 1 or ms != (im[0], 1, *im[2:]):
        raise MetricError(f"{where}: images {im} and masks {ms}; expected images N×C×H×W (one channel per contrast) and masks N×1×H×W, "
                          f"or volumes N×C×D×H×W and N×1×D×H×W")


def per_channel(images: torch.Tensor) -> torch.Tensor:
    """N×C×H×W as (N·C)×H×W (N×C×D×H×W as (N·C)×D×H×W), item by item with its channels together (``channel_stack``'s
    inverse order); for transforms that treat the first axis as independent channels (MONAI's array transforms)."""
    return images.reshape(-1, *images.shape[2:])


def channel_stack(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N·C)×H×W (or (N·C)×D×H×W) back to the shape of ``like``."""
    return flat.reshape(like.shape)


def lesion_region(masks: torch.Tensor, ctx: PerturbContext) -> torch.Tensor:
    """Boolean lesion mask (labels in ``ctx.lesion_labels``, or any label > 0)."""
    if ctx.lesion_labels is None:
        return masks > 0
    region = torch.zeros_like(masks, dtype=torch.bool)
    for label in ctx.lesion_labels:  # a few comparisons: ~8x faster than torch.isin on CPU
        region |= masks == label
    return region


def require_lesion(region: torch.Tensor, name: str) -> None:
    """MetricError when any image has an empty lesion mask (a localised edit cannot be applied)."""
    empty = (~region.flatten(1).any(1)).nonzero().flatten().tolist()
    if empty:
        raise MetricError(f"localised perturbation {name!r} needs a lesion in every mask, but mask(s) {empty[:10]} are empty")

