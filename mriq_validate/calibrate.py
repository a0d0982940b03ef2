"""``mriq-validate calibrate``: re-derive a suite's noise-based thresholds from noise floors measured on the user's data.

Which criteria change:

* model criteria with ``relative: difference`` (value − real baseline);
* sensitivity criteria (the move towards worse under a known perturbation).

Others (``relative: none`` or ``ratio``) are copied unchanged. The data are loaded as a pytest run of the suite loads
them (:func:`suite_context`): ``data`` or the suite's ``data.default``, with the suite's ``data:`` options (modality,
crop, test_fraction, slices) for a NIfTI folder.

The spread (the measure's noise floor on the real data):

* model criteria: when the metric exposes a training-noise floor (``noise_floor(ctx)``, e.g. downstream Dice: the
  seed-to-seed SD of the real-data segmenter's mean Dice), that SD; otherwise the bootstrap SE of the measure on the
  real test images;
* sensitivity criteria: always the bootstrap SE on the real test images. Clean and perturbed images are measured by the
  same frozen segmenter, so training noise cancels and only sampling noise remains.

Bootstrap SE: ``n_boot`` resamples with replacement for per-image measures; for set-level measures (``resample ==
"subsample"``) the SD over 80 % subsets scaled by ``sqrt(m/(n-m))`` (delete-d jackknife): :func:`.stats.noise_floor`
on the study's resampling stream (:func:`.study.floor_rng`), so calibrate and the study report the same SE.

The new bound, in absolute units (``unit: absolute``): ``k × spread``. For a difference criterion it is a tolerance in the
direction of "worse": ``min: -k·spread`` if higher is better, ``max: +k·spread`` if lower is better (the side the
criterion already bounded is kept). For a sensitivity criterion it is the required move: ``min: k·spread``. Each
changed criterion's ``rationale`` is rewritten with the measured spread, the rule and the previous bound.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import MriqError
from .metrics import create_metric
from .session import RunContext, RunSettings
from .stats import noise_floor
from .study import floor_rng
from .suite import Criterion, Suite, Threshold, load_suite, suite_to_yaml


def measure_spread(crit: Criterion, ctx: RunContext, n_boot: int, seed: int) -> dict[str, Any]:
    """The noise floor used for ``crit`` (see the module docstring): {spread, kind, baseline, se, seed_sd, n}."""
    metric = create_metric(crit.metric, crit.params, where=f"criterion {crit.id}: ")
    split = "train" if crit.condition_on == "train_masks" else "test"
    real = ctx.real(split)
    prepared = ctx.prepare(metric, real)
    nb = crit.n_boot if crit.n_boot else (min(n_boot, 100) if metric.resample == "subsample" else n_boot)
    baseline, se = noise_floor(metric, prepared, nb, floor_rng(seed, metric.name))
    out: dict[str, Any] = {"baseline": baseline, "se": se, "seed_sd": None, "n": metric.size(prepared), "n_boot": nb,
                           "higher_is_better": metric.higher_is_better}
    if crit.kind == "model":
        floor = metric.noise_floor(ctx)
        if floor is not None and floor > 0:
            out.update(seed_sd=float(floor), spread=float(floor),
                       kind=f"seed-to-seed SD of the real-data segmenter's mean value over {getattr(metric, 'noise_seeds', '?')} training seeds")
            return out
    out.update(spread=se, kind=f"bootstrap SE of the mean on the {out['n']} real {split} items ({nb} resamples"
                               f"{', 80% subsets, delete-d jackknife scaled' if metric.resample == 'subsample' else ''})")
    return out


def calibrate_criterion(crit: Criterion, m: dict[str, Any], k: float, data_spec: str, seed: int) -> tuple[Criterion, dict[str, Any]]:
    """The criterion with its bound set to ``k × spread`` (absolute units) and its rationale rewritten; and the change."""
    th, spread = crit.threshold, float(m["spread"])
    if not spread > 0:
        raise MriqError(f"criterion {crit.id}: the measured spread of {crit.metric!r} is {spread}; cannot derive a threshold from it")
    bound = k * spread
    old = {"min": th.min, "max": th.max, "unit": th.unit}
    if crit.kind == "sensitivity":
        new_th = Threshold(min=bound, max=None, relative="none", on=th.on, unit="absolute")
        side, new = "min", bound
        meaning = f"the measure must move towards worse by at least {bound:.4g} (absolute units)"
    elif th.unit == "seed_sd":  # stay in seed SDs: the gate widens the bound for the SD's own uncertainty (bounds.NoiseUnit)
        side, new = "min", -k
        new_th = Threshold(min=-k, relative="difference", on=th.on, unit="seed_sd", tolerance=th.tolerance)
        meaning = (f"generated minus real may be at most {k:g} seed-to-seed SDs worse (about {bound:.4g} in absolute units "
                   f"before the gate widens it for the SD's own uncertainty; false-alarm rate {_tail(k / 2 ** 0.5)} for a "
                   f"difference of two trainings)")
    else:
        higher = bool(m["higher_is_better"])
        side = "min" if th.min is not None and (higher or th.max is None) else "max"
        new = -bound if side == "min" else bound
        tol = getattr(th.tolerance, side) if th.tolerance is not None else None
        if tol is not None:  # a clinical tolerance stays a floor under the calibrated bound: the looser of the two
            new = min(new, tol) if side == "min" else max(new, tol)
        new_th = Threshold(**{side: new}, relative="difference", on=th.on, unit="absolute")
        meaning = f"generated minus real may be at most {bound:.4g} worse (absolute units)"
    old_text = (f"min {old['min']}" if old["min"] is not None else "") + (" " if old["min"] is not None and old["max"] is not None else "") + \
               (f"max {old['max']}" if old["max"] is not None else "") + f" ({old['unit']})"
    rationale = (f"Calibrated by `mriq-validate calibrate` on {data_spec} (seed {seed}, k = {k:g}): {m['kind']} = {spread:.4g} "
                 f"(real value {m['baseline']:.4g}); bound = k × spread = {k:g} × {spread:.4g} = {bound:.4g}, so {meaning}. "
                 + ("" if th.unit == "seed_sd" else f"k = {k:g} spreads is a one-sided false-alarm rate of about {_tail(k)} under normality. ")
                 + f"Previous bound: {old_text}. Previous rationale: {crit.rationale.strip()}")
    change = {"criterion": crit.id, "metric": crit.metric, "bound": side, "old": old_text, "new": new, "spread": spread,
              "spread_kind": m["kind"], "se": m["se"], "seed_sd": m["seed_sd"], "k": k,
              "rule": f"{side} = {'-' if new < 0 else ''}{k:g} x {spread:.4g}"}
    requirement = (crit.requirement.strip() + f" [Recalibrated: the bound is now {side} {new:.4g} in {new_th.unit} units, "
                   f"{k:g} × the measured noise floor; numbers above are the original suite's.]")
    return crit.model_copy(update={"threshold": new_th, "rationale": rationale, "requirement": requirement}), change


def _tail(k: float) -> str:
    from math import erfc, sqrt

    return f"{0.5 * erfc(k / sqrt(2)):.2%}"


def suite_context(suite: Suite, data: str | None, seed: int, cache_dir: str, device: str,
                  progress: Callable[[str], None] | None = None) -> RunContext:
    """The run context a pytest run of ``suite`` would use: ``data`` (else the suite's ``data.default``), loaded with the
    suite's ``data:`` options (modality, crop, test_fraction, slices) for a NIfTI folder, as the plugin does."""
    spec = data or suite.data.default
    options = suite.data.options_for(spec)
    settings = RunSettings(model=None, data=spec, device=device, seed=seed, cache_dir=str(cache_dir), data_options=options)
    return RunContext(settings, spec, progress=progress)


def calibrate_suite(suite_path: Path, out_path: Path, *, data: str | None = None, k: float = 3.0, seed: int = 0, cache_dir: str = "",
                    device: str = "cpu", n_boot: int = 1000, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Write the calibrated suite to ``out_path`` (it loads again with :func:`load_suite`); return the changes."""
    if not k > 0:
        raise MriqError(f"calibrate: k must be positive, got {k}")
    say = progress or (lambda msg: None)
    suite: Suite = load_suite(Path(suite_path))
    ctx = suite_context(suite, data, seed, cache_dir, device, say)
    spec = ctx.data_spec
    shape = "×".join(map(str, ctx.data.image_shape[1:]))
    say(f"calibrate: data {spec}: {len(ctx.data.train)} train and {len(ctx.data.test)} test slices of {shape} px"
        + (f" (suite data options {ctx.settings.data_options})" if ctx.settings.data_options else ""))
    criteria, changes = [], []
    for crit in suite.criteria:
        if not (crit.kind == "sensitivity" or crit.threshold.relative == "difference"):
            criteria.append(crit)
            continue
        say(f"calibrate: {crit.id}: measuring the noise floor of {crit.metric}")
        m = measure_spread(crit, ctx, n_boot, seed)
        new, change = calibrate_criterion(crit, m, k, spec, seed)
        criteria.append(new)
        changes.append(change)
        say(f"calibrate: {crit.id}: {change['rule']} ({m['kind']})")
    new_suite = suite.model_copy(update={"criteria": criteria,
                                         "description": ((suite.description or "").strip() + f" Thresholds calibrated on {spec} with k = {k:g}.").strip()})
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(suite_to_yaml(new_suite), encoding="utf-8")
    load_suite(out)  # must load again
    return changes
