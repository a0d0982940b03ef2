"""Evaluating one criterion: sample → (perturbation) → metric → bootstrap CI → threshold → verdict.

``evaluate`` returns an :class:`Outcome` with verdict PASS or FAIL, or raises :class:`MriqError` when the
criterion cannot be evaluated (the plugin reports that as ERROR, never as a pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bounds import NoiseUnit, bound_sources, check_threshold, noise_bounds
from .errors import MetricError
from .metrics import Metric, Sample, create_metric
from .perturb import PerturbContext, apply
from .figures import gallery_channel, worst_case_images
from .seeding import derive_seed, rng_for
from .memo import cached_replicates
from .session import RunContext
from .spread import describe_items, item_spread, no_items, per_item_values
from .stats import Estimate, compare, resample_metric
from .subgroups import ONE_GROUP, Subgroups, assign, check_sizes, heterogeneity, item_split
from .suite import Criterion, Threshold


@dataclass
class Outcome:
    """The result of one criterion (one sweep level), everything a report needs to trace it."""

    criterion_id: str
    verdict: str
    gate: bool
    metric: dict[str, Any]
    higher_is_better: bool
    compared: Estimate
    value: Estimate
    baseline: Estimate | None
    threshold: dict[str, Any]
    bounds: dict[str, float | None]
    checked: float
    message: str
    seed: int
    perturbation: dict[str, Any] | None = None
    samples: dict[str, Any] = field(default_factory=dict)
    # per-contrast decisions of a measure taken on each contrast alone (metric ``channels: each``), None otherwise
    per_contrast: dict[str, dict[str, Any]] | None = None
    # ``by:``: the subgroup the criterion is decided in, and the decision in every subgroup (× contrast) with the spread
    by: str | None = None
    per_subgroup: dict[str, Any] | None = None
    # the per-item spread of the measure (mriq_validate.spread); for a gating per-item criterion on the model, the images of
    # its worst items for report.html (K thumbnails, not in the JSON record)
    spread: dict[str, Any] | None = None
    gallery: dict[str, Any] | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "criterion_id": self.criterion_id, "verdict": self.verdict, "gate": self.gate, "metric": self.metric,
            "higher_is_better": self.higher_is_better, "compared": self.compared.as_dict(), "value": self.value.as_dict(),
            "baseline": self.baseline.as_dict() if self.baseline else None, "threshold": self.threshold,
            "bounds": self.bounds, "checked": self.checked, "message": self.message, "seed": self.seed,
            "perturbation": self.perturbation, "samples": self.samples, "per_contrast": self.per_contrast,
            "by": self.by, "per_subgroup": self.per_subgroup, "spread": self.spread,
        }


def _quantity(relative: str) -> Any:
    if relative == "difference":
        return lambda v, b: v - b
    if relative == "ratio":
        return lambda v, b: v / b if b != 0 else np.nan
    return lambda v, b: v


def _label(metric: Metric, crit: Criterion) -> str:
    region = metric.config().get("region")
    return f"{metric.name}" + (f" ({region})" if region else "")


def _fmt(e: Estimate) -> str:
    return f"{e.value:.4g} [95% CI {e.ci_low:.4g}, {e.ci_high:.4g}]" if e.n_boot else f"{e.value:.4g}"


def _verdict_message(crit: Criterion, ok: bool, what: str, checked: float, th: Threshold, bounds: dict[str, float | None]) -> str:
    on = {"value": "", "lower_ci": "lower 95% CI bound of ", "upper_ci": "upper 95% CI bound of "}[th.on]
    unit = {"absolute": "", "se": " (threshold in bootstrap standard errors)", "seed_sd": " (threshold in seed-to-seed SDs)"}[th.unit]
    if ok:
        rule = " and ".join(f"{k} {v:.4g}" for k, v in bounds.items() if v is not None)
        return f"{crit.id} PASSED: {what}; {on}checked quantity {checked:.4g} within {rule}{unit}."
    if bounds["min"] is not None and checked < bounds["min"]:
        broke = f"is below the minimum {bounds['min']:.4g}"
    else:
        broke = f"is above the maximum {bounds['max']:.4g}"
    text = f"{crit.id} FAILED: {what}; {on}checked quantity {checked:.4g} {broke}{unit}.\n  requirement: {crit.requirement.strip()}"
    if crit.hazard:
        text += f"\n  hazard: {crit.hazard.strip()}"
    return text + f"\n  rationale for the threshold: {crit.rationale.strip()}"


def _perturb(ctx: RunContext, crit: Criterion, level: dict[str, Any], sample: Sample, seed: int,
             real_split: str | None) -> tuple[Sample, dict[str, Any]]:
    """``sample`` perturbed per ``crit`` at ``level``; ``real_split`` names the real split ``sample`` is (its covariates
    reach covariate-aware perturbations), None for generated images (no covariates)."""
    assert crit.perturbation is not None
    if sample.masks is None:
        raise MetricError(f"criterion {crit.id}: perturbation {crit.perturbation.name!r} needs masks with the {sample.origin} images")
    data = ctx.data
    covariates = {"test": data.test, "train": data.train}[real_split].covariates if real_split is not None else {}
    pctx = PerturbContext(data.train.images, data.train.masks, covariates, lesion_labels=tuple(data.labels.values()))
    out = apply(crit.perturbation.name, sample.images, sample.masks, seed=seed, ctx=pctx, where=f"criterion {crit.id}: ", **level)
    return Sample(out.images, out.masks, f"{sample.origin} + {crit.perturbation.name}"), out.record


def evaluate(crit: Criterion, ctx: RunContext, level: dict[str, Any] | None = None) -> Outcome:
    """Evaluate ``crit`` (at sweep ``level``) in ``ctx``; PASS/FAIL Outcome, or MriqError when it cannot be evaluated."""
    level = level or {}
    key = (crit.id, *sorted(level.items()))
    seed = derive_seed(ctx.seed, *key)
    metric = create_metric(crit.metric, crit.params, where=f"criterion {crit.id}: ")
    th = crit.threshold
    pert_record = None
    # the perturbation's parameters: the sweep level, or (no sweep) the parameters written in the suite
    pert_params = level or (crit.perturbation.params if crit.perturbation is not None else {})
    split = "train" if crit.condition_on == "train_masks" else "test"
    real = ctx.real(split)

    if crit.kind == "sensitivity":
        subject, pert_record = _perturb(ctx, crit, pert_params, real, seed, split)
        reference, paired = real, True
    elif crit.kind == "reference":  # the tool's competence on the real data, whatever the model
        subject, reference, paired = real, real, True
    else:
        subject, paired = ctx.generated(split)
        if crit.perturbation is not None:
            subject, pert_record = _perturb(ctx, crit, pert_params, subject, seed, None)
        reference = real

    contrasts = ctx.data.contrasts if metric.channels == "each" else ()
    cuts = list(enumerate(contrasts)) if len(contrasts) > 1 else [(None, "")]  # one decision per contrast: all must pass
    groups = _subgroups(crit, metric, ctx, split, paired, subject) if crit.by is not None else None
    members = groups.members() if groups is not None else {"": None}  # and per subgroup with `by:`: all must pass
    parts = {(name, label): _decide(crit, metric, ctx, key, subject if c is None else subject.contrast(c, name),
                                    reference if c is None else reference.contrast(c, name), paired, pert_params, items, label)
             for c, name in cuts for label, items in members.items()}
    rep = _representative(parts)
    d = parts[rep]
    ok = all(p["ok"] for p in parts.values())
    message = _verdict_message(crit, ok, d["what"], d["checked"], th, d["bounds"])
    per_contrast = per_subgroup = None
    if groups is not None:
        per_subgroup = _subgroup_record(crit, groups, parts)
        message += _subgroup_note(groups, parts, per_subgroup, ok)
    elif len(parts) > 1:
        per_contrast = {name: _part_record(p) for (name, _), p in parts.items()}
        message += "\n  per contrast (every contrast must pass; the one shown above is the " + \
            ("first that failed" if not ok else "closest to its bound") + "): " + \
            ", ".join(f"{name} {p['checked']:.4g} {'PASS' if p['ok'] else 'FAIL'}" for (name, _), p in parts.items())
    spread, gallery = _spread(crit, metric, ctx, split, paired, subject, parts, rep[0])
    return Outcome(
        criterion_id=crit.id, verdict="PASS" if ok else "FAIL", gate=crit.gate, metric=metric.config(),
        higher_is_better=metric.higher_is_better, compared=d["compared"], value=d["value"], baseline=d["baseline"],
        threshold={**th.model_dump(exclude=set() if th.tolerance else {"tolerance"}), **d["scale"].record(th),
                   **_tolerance_record(th, d["scale"])}, bounds=d["bounds"], checked=d["checked"], message=message + _tolerance_note(th, d["scale"]),
        seed=seed, perturbation=pert_record, per_contrast=per_contrast, by=crit.by.name if crit.by else None, per_subgroup=per_subgroup,
        spread=spread, gallery=gallery,
        samples={"evaluated": subject.origin, "n": d["n"], "n_reference": d["n_ref"], "paired": d["paired"],
                 **({"contrasts": [name for _, name in cuts]} if len(cuts) > 1 else {})},
    )


def _subgroups(crit: Criterion, metric: Metric, ctx: RunContext, split: str, paired: bool, subject: Sample) -> Subgroups:
    """The subgroups ``crit`` is decided in (``by:``), each large enough; MetricError when they cannot be formed."""
    assert crit.by is not None
    where = f"criterion {crit.id}: "
    if not (paired or metric.pairs_by_reference):
        raise MetricError(f"{where}`by: {crit.by.name}` puts each generated item in the subgroup of the real item it was "
                          f"generated for, and the {subject.origin} images are the model's own sample (no real counterpart); "
                          f"it needs a mask-conditioned model (generate(masks))")
    groups = assign(ctx.data, item_split(metric, split), crit.by.name, metric.config().get("region"), crit.by.if_absent)
    check_sizes(groups, crit.by.min_items, len(getattr(ctx.data, groups.split)) if metric.pairs_by_reference else len(subject), where)
    return groups


def _part_record(p: dict[str, Any]) -> dict[str, Any]:
    """One decision (a contrast, a subgroup) as the report records it."""
    return {"verdict": "PASS" if p["ok"] else "FAIL", "checked": p["checked"], "bounds": p["bounds"], "compared": p["compared"].as_dict(),
            "value": p["value"].as_dict(), "baseline": p["baseline"].as_dict() if p["baseline"] else None}


def _subgroup_record(crit: Criterion, groups: Subgroups, parts: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """``per_subgroup``: every decision (subgroup × contrast) and, per contrast, the spread of the compared quantity
    over the subgroups with Cochran's Q and I² (:func:`mriq_validate.subgroups.heterogeneity`)."""
    assert crit.by is not None
    rows = [{"subgroup": label, "contrast": name or None, "n": p["n"], "defined_by": groups.details.get(label, {}), **_part_record(p)}
            for (name, label), p in parts.items()]
    spread = [{"contrast": name or None, **heterogeneity([p["compared"].value for (c, _), p in parts.items() if c == name],
                                                          [p["compared"].se for (c, _), p in parts.items() if c == name])}
              for name in dict.fromkeys(c for c, _ in parts)]
    return {"by": crit.by.name, "source": groups.source, "split": groups.split, "min_items": crit.by.min_items,
            "if_absent": crit.by.if_absent, "quantity": "compared", "subgroups": rows, "heterogeneity": spread}


def _subgroup_note(groups: Subgroups, parts: dict[tuple[str, str], dict[str, Any]], record: dict[str, Any], ok: bool) -> str:
    """The message's lines on the subgroups: each decision, those that failed, and the spread."""
    name = lambda k: f"{k[0]} {k[1]}" if k[0] else k[1]  # noqa: E731
    text = (f"\n  per subgroup of {groups.by} (every subgroup must pass; the one shown above is the "
            f"{'first that failed' if not ok else 'closest to its bound'}): "
            + ", ".join(f"{name(k)} (n {p['n']}) {p['checked']:.4g} {'PASS' if p['ok'] else 'FAIL'}" for k, p in parts.items()))
    if groups.labels == (ONE_GROUP,):
        text += f"\n  subgroups not given: {groups.source}"
    failed = [name(k) for k, p in parts.items() if not p["ok"]]
    if failed:
        text += f"\n  failed in subgroup(s): {', '.join(failed)}"
    for h in record["heterogeneity"]:
        stat = (f"Cochran's Q {h['q']:.3g} (df {h['df']}, p {h['p_value']:.3g}), I² {100 * h['i_squared']:.0f}%" if h["q"] is not None
                else f"Cochran's Q not defined: {h['note']}")
        text += f"\n  spread{' on ' + h['contrast'] if h['contrast'] else ''}: max - min {h['max_minus_min']:.4g}; {stat}"
    return text


def _spread(crit: Criterion, metric: Metric, ctx: RunContext, split: str, paired: bool, subject: Sample,
            parts: dict[tuple[str, str], dict[str, Any]], shown: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The measure's per-item spread (``spread``) and, for a gating criterion on the model, the images of its worst items
    (gathered now, K of them, while the run holds the images) for report.html's gallery."""
    # parts are keyed (contrast, subgroup); every subgroup of a contrast shares that contrast's prepared items
    values = {name: (per_item_values(metric, p["prepared"]), None if p["prepared_ref"] is None
                     else per_item_values(metric, p["prepared_ref"])) for (name, _), p in parts.items()}
    if any(v is None for v, _ in values.values()):
        return no_items(metric.name), None
    data = ctx.data
    ids, item = describe_items(metric, crit.kind, split, paired, ctx.item_kind.removesuffix("s"), getattr(data, split).ids, data.test.ids)
    spread = item_spread(values, higher_is_better=metric.higher_is_better, ids=ids, item=item, shown=shown)
    worst = spread["evaluated"]["worst"]
    if not (crit.gate and crit.kind == "model" and worst and worst[0]["id"] is not None):
        return spread, None
    rows, real = [w["index"] for w in worst], data.test if metric.pairs_by_reference else getattr(data, split)
    channel = gallery_channel(data.contrasts, shown or None)
    images = worst_case_images(rows, real.images, real.masks, None if metric.pairs_by_reference else subject.images, channel)
    ref = values[shown][1]
    return spread, {"meta": {"criterion_id": crit.id, "metric": metric.name, "item": item, "contrast": data.contrasts[channel],
                             "ids": [w["id"] for w in worst], "values": [w["value"] for w in worst],
                             "reference_values": None if ref is None else [float(ref[i]) for i in rows],
                             "higher_is_better": metric.higher_is_better}, "arrays": images}


def _tolerance_record(th: Threshold, scale: NoiseUnit) -> dict[str, Any]:
    """What the outcome records about a clinical tolerance: the noise bounds and which of the two set each bound."""
    if th.tolerance is None:
        return {}
    lo, hi = noise_bounds(th, scale)
    return {"noise_bounds": {"min": lo, "max": hi}, "bound_sources": bound_sources(th, scale)}


def _tolerance_note(th: Threshold, scale: NoiseUnit) -> str:
    if th.tolerance is None:
        return ""
    noise = dict(zip(("min", "max"), noise_bounds(th, scale)))
    parts = [f"{side} {getattr(th.tolerance, side) if src == 'clinical tolerance' else noise[side]:.4g} is the "
             f"{'clinical tolerance' if src == 'clinical tolerance' else 'noise bound'} (the "
             f"{'noise bound' if src == 'clinical tolerance' else 'clinical tolerance'} is "
             f"{noise[side] if src == 'clinical tolerance' else getattr(th.tolerance, side):.4g})"
             for side, src in bound_sources(th, scale).items() if getattr(th.tolerance, side) is not None]
    return ("\n  bound: " + "; ".join(parts) + ": the looser of the two applies") if parts else ""


def _representative(parts: dict[tuple[str, str], dict[str, Any]]) -> tuple[str, str]:
    """The decision (contrast, subgroup) an outcome shows: the first that failed, else the one closest to a bound ("" for a
    joint measure, "" without ``by:``)."""
    failed = [k for k, p in parts.items() if not p["ok"]]
    if failed:
        return failed[0]

    def margin(p: dict[str, Any]) -> float:
        lo, hi = p["bounds"]["min"], p["bounds"]["max"]
        return min(p["checked"] - lo if lo is not None else math.inf, hi - p["checked"] if hi is not None else math.inf)

    return min(parts, key=lambda k: margin(parts[k]))


def _decide(crit: Criterion, metric: Metric, ctx: RunContext, key: tuple[Any, ...], subject: Sample, reference: Sample,
            paired: bool, pert_params: dict[str, Any], items: np.ndarray | None = None, subgroup: str = "") -> dict[str, Any]:
    """Measure ``subject`` (against ``reference`` where the threshold needs it), resample, compare and check the bounds;
    on the rows ``items`` only (the subgroup named ``subgroup``, resampled with its own seed) where given."""
    th = crit.threshold
    prepared = ctx.prepare(metric, subject)
    need_ref = crit.kind == "sensitivity" or th.relative != "none" or th.unit == "se"
    prepared_ref = ctx.prepare(metric, reference) if need_ref else None

    n = metric.size(prepared)
    n_ref = metric.size(prepared_ref) if prepared_ref is not None else n
    paired = (paired or metric.pairs_by_reference) and n == n_ref
    n_boot = crit.n_boot if crit.n_boot is not None else metric.default_n_boot
    if items is not None and (not paired or int(np.max(items)) >= n):
        raise MetricError(f"criterion {crit.id}: subgroup {subgroup} cannot be resampled: the measure has {n} items and {n_ref} "
                          f"reference items, not the split's items paired one to one")
    # Every resample is evaluated once; value, baseline and the compared quantity are summarised from the same
    # replicates (paired replicates share their rows). Subsampled set metrics take the mean replicate as value.
    by = ("by", crit.by.name, subgroup) if items is not None and crit.by is not None else ()
    v_reps, r_reps = resample_metric(metric, prepared, prepared_ref, n_boot, rng_for(ctx.seed, *key, "bootstrap", *by), paired,
                                     measure=lambda m, p, rows, items=None: cached_replicates(ctx.cache, m, p, rows, items), items=items)
    if items is not None:
        n = n_ref = len(items)
    value = v_reps.estimate()
    baseline = r_reps.estimate() if r_reps is not None else None

    if crit.kind == "sensitivity":
        assert baseline is not None and r_reps is not None and crit.perturbation is not None
        if not paired:
            raise MetricError(f"criterion {crit.id}: the perturbation changed the number of images ({n_ref} → {n})")
        sign = -1.0 if metric.higher_is_better else 1.0  # the change towards "worse" is positive
        compared = compare(v_reps, r_reps, lambda v, b: sign * (v - b))
        what = (f"{_label(metric, crit)} moved by {_fmt(compared)} towards worse under {crit.perturbation.name} "
                f"{pert_params} (clean {baseline.value:.4g}, perturbed {value.value:.4g})")
    elif th.relative != "none":
        assert baseline is not None and r_reps is not None
        if th.relative == "ratio" and not baseline.value != 0:
            raise MetricError(f"criterion {crit.id}: `relative: ratio` divides by the baseline, and {_label(metric, crit)} is "
                              f"{baseline.value:.4g} on the {reference.origin} images, so the ratio is undefined; use "
                              f"`relative: difference` for a measure that can be 0 on real data")
        # paired: replicate-wise on shared rows; unpaired: independent replicates of each side, combined row by row
        compared = compare(v_reps, r_reps, _quantity(th.relative))
        what = (f"{_label(metric, crit)} on {subject.origin} images {_fmt(value)} vs baseline {_fmt(baseline)} on {reference.origin} "
                f"images: {th.relative} {_fmt(compared)}")
    else:
        compared = value
        what = f"{_label(metric, crit)} on {subject.origin} images {_fmt(value)}"

    if items is not None:
        what += f" in subgroup {subgroup} ({n} {ctx.item_kind})"
    scale = noise_unit(crit, metric, ctx, baseline or value)
    ok, checked, bounds = check_threshold(th, compared, scale)
    return {"ok": ok, "checked": checked, "bounds": bounds, "compared": compared, "value": value, "baseline": baseline,
            "prepared": prepared, "prepared_ref": prepared_ref,
            "scale": scale, "what": what, "n": n, "n_ref": n_ref, "paired": paired}


def noise_unit(crit: Criterion, metric: Metric, ctx: RunContext, reference: Estimate) -> NoiseUnit:
    """How the bounds of ``crit``'s threshold scale: 1 (``absolute``), the reference's bootstrap SE (``se``), or the
    metric's seed-to-seed SD with its seed count (``seed_sd``; see :class:`NoiseUnit`)."""
    unit = crit.threshold.unit
    if unit == "absolute":
        return NoiseUnit("absolute")
    if unit == "se":
        if reference.se == 0 and crit.threshold.tolerance is not None:
            return NoiseUnit("se", 0.0)  # no sampling noise to detect (e.g. a share that is 0 on real data): the tolerance decides
        if not reference.se > 0:
            raise MetricError(f"criterion {crit.id}: threshold in standard errors, but the bootstrap SE is {reference.se} (set n_boot > 0)")
        return NoiseUnit("se", float(reference.se))
    floor = metric.noise_floor(ctx)
    if floor is None:
        raise MetricError(f"criterion {crit.id}: threshold in seed_sd, but metric {metric.name!r} has no training-noise floor; use unit se or absolute")
    if not floor > 0:
        raise MetricError(f"criterion {crit.id}: the seed-to-seed SD of {metric.name!r} is {floor}; a threshold in seed_sd needs a positive floor")
    seeds = getattr(metric, "noise_seeds", None)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
        raise MetricError(f"criterion {crit.id}: threshold in seed_sd, but metric {metric.name!r} does not say over how many training "
                          f"seeds (noise_seeds >= 2) its floor was measured, got {seeds!r}")
    means = getattr(metric, "seed_means", None)
    return NoiseUnit("seed_sd", float(floor), seeds, tuple(float(m) for m in means(ctx)) if callable(means) else ())
