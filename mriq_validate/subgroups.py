"""Consistency across subgroups: a criterion decided in every subgroup of the items (``by:``), and how far apart the
subgroups lie.

A generator that is fine on average can fail one acquisition site or only the smallest lesions, and a criterion
decided on the pooled mean clears it. FDA's Synthetic Data ScoreCard (Zamzmi et al., Communications Engineering
4:130, 2025) names this property, stability across subgroups, *consistency*. With ``by: <subgroup>`` a criterion's
threshold is checked in every subgroup, each on its own rows and its own resampling, and it passes only when every
subgroup passes (:func:`mriq_validate.criteria.evaluate`).

Where the subgroups come from:

- a covariate of the reference data, per item (``site`` of the embedded cohorts), or a column of the table of case
  attributes a suite names in its data block (``case_attributes:``), which the loader attaches to the data as
  covariates (:mod:`mriq_validate.data.attributes`);
- a grouping derived from the annotations, which works on any annotated data (:data:`DERIVED`): ``lesion_size``, the
  quartiles of the lesion's area (volume, on volumes) in the real masks, Q1 the smallest.

Item i of a generated sample is generated for mask i of the conditioning split, so it belongs to that real item's
subgroup; a measure valued on a fixed reference (``pairs_by_reference``: a segmenter trained on the sample and
evaluated on the real test items) has the real test items as its items (:func:`item_split`).

The spread of the compared quantity over the subgroups is reported with a test of heterogeneity
(:func:`heterogeneity`): Cochran's Q (Cochran 1954, Biometrics 10:101-129), the inverse-variance weighted sum of
squared deviations of the subgroup estimates from their weighted mean, χ² with k − 1 degrees of freedom when the
subgroups agree, and I² = max(0, (Q − df) / Q), the share of the spread beyond sampling noise (Higgins & Thompson
2002, Statistics in Medicine 21:1539-1558). The subgroups are disjoint sets of items, so their bootstrap estimates are
independent, as Q assumes. The spread is evidence for the reader; the decision is the per-subgroup check.

Pure functions of arrays and recorded numbers: the gate and the readers that re-derive a report use the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .arrays import batches
from .errors import MetricError

#: The fewest items a subgroup may have by default (a stated convention, not derived): a percentile bootstrap interval
#: of a mean over a handful of items is too narrow (no resample reaches beyond the items' own range), so a subgroup
#: decision on fewer would rest on noise. ``by: {name: ..., min_items: N}`` changes it.
DEFAULT_MIN_ITEMS = 20
#: How many quantile groups ``lesion_size`` cuts the items into (quartiles).
LESION_SIZE_GROUPS = 4


#: Per-image measures whose items are not the images of the sample: metric name → what one item is.
UNALIGNED: dict[str, str] = {"ms_ssim_diversity": "random pairs of images"}


class SubgroupData(Protocol):
    """What subgroups are read from: the reference data (:class:`mriq_validate.data.ReferenceData` has these)."""

    name: str
    train: Any
    test: Any
    regions: dict[str, tuple[int, ...]]
    labels: dict[str, int]
    spatial_dims: int

    def region_mask(self, masks: Any, region: str) -> Any: ...


@dataclass(frozen=True)
class Subgroups:
    """The items of one real split assigned to subgroups: ``codes[i]`` is the index in ``labels`` of item i's
    subgroup; ``source`` says where the assignment comes from; ``details`` holds per subgroup what defines it (a
    covariate's value, a quartile's range of lesion sizes)."""

    by: str
    split: str
    labels: tuple[str, ...]
    codes: np.ndarray
    source: str
    details: dict[str, dict[str, Any]] = field(default_factory=dict)

    def members(self) -> dict[str, np.ndarray]:
        """Subgroup label → the indices of its items (ascending)."""
        return {label: np.flatnonzero(self.codes == k) for k, label in enumerate(self.labels)}

    def sizes(self) -> dict[str, int]:
        """Subgroup label → its number of items."""
        return {label: int(len(idx)) for label, idx in self.members().items()}


def subgroup_support(metric: Any) -> str | None:
    """Why ``metric`` cannot be decided per subgroup, or None when it can: its resampled items must be the images of the
    sample (a per-image measure) or the real test items (``pairs_by_reference``)."""
    if getattr(metric, "pairs_by_reference", False):
        return None
    if getattr(metric, "kind", None) != "per_image":
        return (f"metric {metric.name!r} is a distance between whole sets, not a mean over items; a subgroup of it would "
                f"be another set measure, so `by:` does not apply to it")
    if metric.name in UNALIGNED:
        return (f"metric {metric.name!r} resamples {UNALIGNED[metric.name]}, not images; its items belong to no one "
                f"subgroup, so `by:` does not apply to it")
    return None


def item_split(metric: Any, conditioning: str) -> str:
    """The real split whose items the measure's rows are: the real test split for a measure valued on a fixed
    reference (``pairs_by_reference``), else the conditioning split (a generated item is its real mask's)."""
    return "test" if getattr(metric, "pairs_by_reference", False) else conditioning


def lesion_region(data: SubgroupData, region: str | None) -> str | None:
    """The region whose size defines ``lesion_size``: the criterion's own region where the data have it, else the
    whole tumour where the data have one, else None (every non-zero label)."""
    known = {*data.regions, *data.labels}
    if region is not None and region in known:
        return region
    return "whole_tumour" if "whole_tumour" in known else None


def lesion_areas(data: SubgroupData, split: str, region: str | None) -> np.ndarray:
    """Pixels (voxels, on volumes) of ``region`` (every non-zero label when None) in each mask of the real ``split``,
    read batch by batch (a mapped split is never read whole)."""
    masks = getattr(data, split).masks
    out = np.empty(len(masks), np.int64)
    for sl in batches(len(masks), 256):
        part = masks[sl]
        inside = data.region_mask(part, region) if region is not None else part > 0
        out[sl] = inside.flatten(1).sum(1).numpy()
    return out


def quantile_groups(values: np.ndarray, k: int) -> np.ndarray:
    """Group codes 0..k-1 of ``values`` by rank: the items sorted by value (ties in item order) cut into ``k`` groups of
    sizes as equal as possible, 0 the smallest values."""
    order = np.argsort(np.asarray(values), kind="stable")
    codes = np.empty(len(order), np.int64)
    for g, part in enumerate(np.array_split(order, k)):
        codes[part] = g
    return codes


def lesion_size_groups(data: SubgroupData, split: str, region: str | None) -> Subgroups:
    """``lesion_size``: quartiles of the lesion's size in the masks of the real ``split`` (Q1 the smallest lesions)."""
    region = lesion_region(data, region)
    areas = lesion_areas(data, split, region)
    if len(areas) < LESION_SIZE_GROUPS:
        raise MetricError(f"subgroup 'lesion_size': the {split} split of data {data.name!r} has {len(areas)} items, fewer than "
                          f"its {LESION_SIZE_GROUPS} quartiles")
    codes = quantile_groups(areas, LESION_SIZE_GROUPS)
    unit = "px" if data.spatial_dims == 2 else "voxels"
    labels = tuple(f"Q{g + 1}" for g in range(LESION_SIZE_GROUPS))
    details = {label: {"min": int(areas[codes == g].min()), "max": int(areas[codes == g].max()), "unit": unit}
               for g, label in enumerate(labels)}
    what = region or "every lesion label"
    return Subgroups("lesion_size", split, labels, codes,
                     f"quartiles of the {what} size ({unit}) in the real {split} masks, by rank (ties in item order); "
                     f"Q1 the smallest", details)


#: Subgroups derived from the data's annotations: name → f(data, split, the criterion's region).
DERIVED: dict[str, Callable[[SubgroupData, str, str | None], Subgroups]] = {"lesion_size": lesion_size_groups}


def available(data: SubgroupData, split: str) -> list[str]:
    """The subgroup names ``by:`` can take on ``data``'s ``split``: its covariates and the derived ones."""
    return sorted({*getattr(data, split).covariates, *DERIVED})


def covariate_groups(data: SubgroupData, split: str, by: str) -> Subgroups:
    """Subgroups of the items of ``split`` by the value of covariate ``by`` (one subgroup per value, in sorted order)."""
    values = np.asarray(getattr(data, split).covariates[by])
    uniq, codes = np.unique(values, return_inverse=True)
    labels = tuple(f"{by}={v}" for v in uniq.tolist())
    details = {label: {"value": v} for label, v in zip(labels, uniq.tolist())}
    return Subgroups(by, split, labels, codes.astype(np.int64), f"covariate {by!r} of the real {split} split", details)


#: The one subgroup of ``if_absent: one_group`` when the data lack the column.
ONE_GROUP = "all items"


def assign(data: SubgroupData, split: str, by: str, region: str | None = None, if_absent: str = "error") -> Subgroups:
    """The items of the real ``split`` of ``data`` in the subgroups ``by`` names (a derived one, :data:`DERIVED`, or a
    covariate). When it is neither: with ``if_absent="one_group"`` every item in one group whose source says the data
    do not give ``by``; otherwise MetricError naming ``by`` and the subgroups the data offer."""
    if by in DERIVED:
        return DERIVED[by](data, split, region)
    if by in getattr(data, split).covariates:
        return covariate_groups(data, split, by)
    if if_absent == "one_group":
        n = len(getattr(data, split).ids)
        why = (f"data {data.name!r} give no {by!r} for their items, so they could not be split by it: every item in one "
               f"group (`if_absent: one_group`; name a table with a {by!r} column in the suite's data block, "
               f"`case_attributes: file.csv`, to decide per {by})")
        return Subgroups(by, split, (ONE_GROUP,), np.zeros(n, np.int64), why, {ONE_GROUP: {"absent": by}})
    raise MetricError(f"by: {by!r}: data {data.name!r} have no covariate {by!r} on their {split} split; expected one of "
                      f"{available(data, split)} (derived: {sorted(DERIVED)}; a column of your own comes from a table named "
                      f"in the suite's data block, `case_attributes: file.csv`)")


def check_sizes(groups: Subgroups, min_items: int, n_items: int, where: str = "") -> None:
    """MetricError when the measure's ``n_items`` rows are not the split's items, or a subgroup has fewer than
    ``min_items`` items (too small to decide: never a silent pass), naming the subgroups and their sizes."""
    if n_items != len(groups.codes):
        raise MetricError(f"{where}the measure resamples {n_items} items, but the real {groups.split} split that `by: "
                          f"{groups.by}` assigns has {len(groups.codes)}; its items cannot be put in subgroups")
    sizes = groups.sizes()
    small = {k: n for k, n in sizes.items() if n < min_items}
    if small:
        raise MetricError(f"{where}by: {groups.by!r}: subgroup(s) {', '.join(f'{k} ({n} items)' for k, n in small.items())} "
                          f"have fewer than min_items {min_items}, too few to decide (every subgroup: "
                          f"{', '.join(f'{k} {n}' for k, n in sizes.items())}); use more data, or lower `min_items` in "
                          f"`by:` knowing that a smaller subgroup's decision rests on fewer items")


# --------------------------------------------------------------------------------------------- heterogeneity


def heterogeneity(estimates: Sequence[float], ses: Sequence[float]) -> dict[str, Any]:
    """How far apart ``estimates`` (one per subgroup) lie given their standard errors ``ses``: ``max_minus_min``,
    Cochran's Q with ``df`` = k − 1 and its χ² ``p_value``, and I² (Higgins & Thompson 2002).

    Equal estimates give Q = 0, p = 1, I² = 0 whatever the SEs. A subgroup with SE 0 (the same value in every resample,
    e.g. a generator identical to the real images there) is the limit of an infinite weight: the weighted mean is its
    estimate and it adds nothing to Q, so Q = Σ over the others of ((θᵢ − θ₀)/SEᵢ)²; subgroups with SE 0 that differ
    from each other make Q infinite (recorded as None, p = 0, I² = 1). A non-finite estimate or SE leaves Q, p and I²
    None. ``note`` says which case applied."""
    from scipy import stats

    theta, se = np.asarray(estimates, np.float64), np.asarray(ses, np.float64)
    k = int(theta.size)
    df = max(k - 1, 0)
    out: dict[str, Any] = {"k": k, "max_minus_min": float(theta.max() - theta.min()) if k else None, "df": df,
                           "q": None, "p_value": None, "i_squared": None, "weighted_mean": None, "note": None}
    if k < 2:
        return {**out, "note": "fewer than 2 subgroups: no spread to test"}
    if not (np.all(np.isfinite(theta)) and np.all(np.isfinite(se)) and np.all(se >= 0)):
        return {**out, "max_minus_min": out["max_minus_min"] if np.all(np.isfinite(theta)) else None,
                "note": "an estimate or standard error is not finite"}
    if np.all(theta == theta[0]):
        return {**out, "q": 0.0, "p_value": 1.0, "i_squared": 0.0, "weighted_mean": float(theta[0]),
                "note": "every subgroup has the same estimate"}
    exact = se == 0
    if exact.any():
        fixed = theta[exact]
        if not np.all(fixed == fixed[0]):
            return {**out, "p_value": 0.0, "i_squared": 1.0,
                    "note": "subgroups with standard error 0 differ from each other: Q is infinite"}
        mean = float(fixed[0])
        note = (f"{int(exact.sum())} subgroup(s) with standard error 0 (the same value in every resample) fix the weighted "
                f"mean (the limit of inverse-variance weights)")
    else:
        w = 1.0 / se ** 2
        mean, note = float((w * theta).sum() / w.sum()), None
    q = float((((theta[~exact] - mean) / se[~exact]) ** 2).sum())
    return {**out, "q": q, "p_value": float(stats.chi2.sf(q, df)), "i_squared": max(0.0, (q - df) / q) if q > 0 else 0.0,
            "weighted_mean": mean, "note": note}


def heterogeneity_close(recorded: dict[str, Any], again: dict[str, Any]) -> list[str]:
    """The fields of a recorded :func:`heterogeneity` that differ from ``again`` (numbers compared to 1e-9 relative)."""
    bad = []
    for key in ("k", "df", "max_minus_min", "q", "p_value", "i_squared"):
        a, b = recorded.get(key), again.get(key)
        if a is None or b is None:
            if (a is None) != (b is None):
                bad.append(key)
        elif not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12):
            bad.append(key)
    return bad
