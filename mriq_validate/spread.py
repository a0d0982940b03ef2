"""Per-case spread of a per-item measure: summary statistics and the worst items (numpy only, no run).

A criterion's value is a mean with a confidence interval; a model can pass on the mean and still fail badly on a few
cases. Brain-MRI synthesis challenges therefore report the spread of the per-case scores and look at the worst cases
(BraSyn within the BraTS challenges; SynthRAD2025, which ranks on per-case metrics and reports their distribution).
:func:`summary` gives n, mean, SD, min, quartiles and max; :func:`worst` the ``k`` worst items in the measure's own
direction; :func:`item_spread` the record a criterion carries (``spread`` in ``report.json``), per contrast for a
measure taken on each contrast alone; :func:`no_items` the record of a set-level measure, which has no per-item values.

Which items a measure's values belong to (generated item ``i`` is conditioned on the real item ``i`` of the split, a
protocol-B measure scores real test items, some measures score random pairs) is :func:`describe_items`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

#: How many worst items a record lists by default.
DEFAULT_WORST_K = 8
#: The statistics :func:`summary` returns, in order.
STATISTICS = ("n", "n_missing", "mean", "sd", "min", "q1", "median", "q3", "max")

#: Measures whose per-item values are not one value per item of the sample (no ids can be given): metric name → what
#: one value belongs to.
UNALIGNED_ITEMS: dict[str, str] = {
    "ms_ssim_diversity": "a random pair of images of the set (the pairs are drawn per run; no item ids)",
}


class MeasureInfo(Protocol):
    """What :func:`describe_items` needs of a measure (a :class:`mriq_validate.metrics.Metric` has it)."""

    name: str
    kind: str
    pairs_by_reference: bool


def summary(values: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """n (finite values), n_missing (non-finite), mean, SD (ddof 1; None for n < 2), min, quartiles (numpy's linear
    interpolation) and max of the finite ``values``; the statistics are None when there are none.

    >>> summary([1.0, 2.0, 3.0, 4.0])["median"], summary([1.0, 2.0, 3.0, 4.0])["q1"]
    (2.5, 1.75)
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = v[np.isfinite(v)]
    out: dict[str, float | int | None] = {"n": int(finite.size), "n_missing": int(v.size - finite.size)}
    if not finite.size:
        return {**out, **{k: None for k in STATISTICS[2:]}}
    q1, median, q3 = (float(x) for x in np.percentile(finite, [25, 50, 75]))
    return {**out, "mean": float(finite.mean()), "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
            "min": float(finite.min()), "q1": q1, "median": median, "q3": q3, "max": float(finite.max())}


def worst(values: Sequence[float] | np.ndarray, higher_is_better: bool, k: int = DEFAULT_WORST_K,
          ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The ``k`` worst items by the measure's direction: lowest values first when higher is better, highest first
    otherwise; equal values in item order. Each ``{rank, index, id, value}`` (``id`` None without ``ids``); non-finite
    values are left out (:func:`summary` counts them).

    >>> [w["index"] for w in worst([0.9, 0.1, 0.5, 0.1], higher_is_better=True, k=3)]
    [1, 3, 2]
    """
    if k < 0:
        raise ValueError(f"worst: k must be >= 0, got {k}")
    v = np.asarray(values, dtype=np.float64).ravel()
    if ids is not None and len(ids) != v.size:
        raise ValueError(f"worst: {len(ids)} ids for {v.size} values")
    finite = np.flatnonzero(np.isfinite(v))
    key = v[finite] if higher_is_better else -v[finite]
    order = finite[np.lexsort((finite, key))][:k]  # by badness, then by item index
    return [{"rank": r + 1, "index": int(i), "id": None if ids is None else str(ids[i]), "value": float(v[i])}
            for r, i in enumerate(order)]


def side(values: Sequence[float] | np.ndarray | None, higher_is_better: bool, k: int,
         ids: Sequence[str] | None) -> dict[str, Any] | None:
    """:func:`summary` and :func:`worst` of one set's per-item values (None for a set that was not measured)."""
    if values is None:
        return None
    return {**summary(values), "worst": worst(values, higher_is_better, k, ids)}


def describe_items(metric: MeasureInfo, criterion_kind: str, split: str, paired: bool, item_kind: str,
                   split_ids: Sequence[str], test_ids: Sequence[str]) -> tuple[Sequence[str] | None, str]:
    """The ids of a measure's per-item values (None when they are not the split's items) and what one item is.

    ``item_kind``: "slice" or "volume"; ``split``: the real split the criterion conditions on; ``paired``: whether
    the evaluated sample is the model's images for that split's masks, item by item."""
    if metric.name in UNALIGNED_ITEMS:
        return None, UNALIGNED_ITEMS[metric.name]
    if metric.pairs_by_reference:
        return test_ids, (f"real test {item_kind}: Dice there of the segmenter trained on the evaluated images; the "
                          f"reference is the segmenter trained on the real training split")
    if criterion_kind == "sensitivity":
        return split_ids, f"real {split} {item_kind} after the perturbation; the reference is the same {item_kind} clean"
    if criterion_kind == "reference":
        return split_ids, f"real {split} {item_kind}"
    if paired:
        return split_ids, f"generated {item_kind} for the mask of the real {split} {item_kind} of the same id"
    return None, f"generated {item_kind} of the model's own sample (no real counterpart, so no id)"


def item_spread(parts: Mapping[str, tuple[Any, Any]], *, higher_is_better: bool, ids: Sequence[str] | None, item: str,
                shown: str = "", k: int = DEFAULT_WORST_K) -> dict[str, Any]:
    """The ``spread`` record of a per-item measure. ``parts``: contrast name ("" for a joint measure) → (the evaluated
    items' values, the real reference's values or None when the criterion did not measure the reference); ``shown``:
    the contrast the record's top level shows (the one the criterion's outcome shows). Values whose count differs from
    ``ids`` (a capped random subset) are listed without ids."""
    def own(v: Any) -> Sequence[str] | None:
        return ids if ids is not None and v is not None and len(ids) == np.asarray(v).size else None

    per = {name: {"evaluated": side(evaluated, higher_is_better, k, own(evaluated)),
                  "reference": side(reference, higher_is_better, k, own(reference))}
           for name, (evaluated, reference) in parts.items()}
    top = per[shown]
    note = None if top["reference"] is not None else (
        "not measured: the criterion's threshold does not compare with the real data, so the measure was not taken on it")
    return {"per_item": True, "reason": None, "item": item, "k": k, "higher_is_better": higher_is_better,
            "contrast": shown or None, "evaluated": top["evaluated"], "reference": top["reference"], "reference_note": note,
            "per_contrast": per if shown else None}


def no_items(metric_name: str, reason: str | None = None) -> dict[str, Any]:
    """The ``spread`` record of a measure without per-item values (a set-level measure such as FID)."""
    return {"per_item": False, "reason": reason or f"{metric_name} is a set-level measure: one value for the whole set, "
            "no value per item", "item": None, "k": 0, "higher_is_better": None, "contrast": None, "evaluated": None,
            "reference": None, "reference_note": None, "per_contrast": None}


def per_item_values(metric: MeasureInfo, prepared: Any) -> np.ndarray | None:
    """The per-item values a prepared measure holds (its value is their mean), or None for a set-level measure."""
    if metric.kind != "per_image" and not metric.pairs_by_reference:
        return None
    if not isinstance(prepared, np.ndarray) or prepared.ndim != 1:
        return None
    return prepared
