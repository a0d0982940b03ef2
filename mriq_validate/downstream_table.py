"""The downstream table: where no-reference image quality and downstream Dice agree, and where they do not.

One call (CLI: ``mriq-validate downstream-table [--out FILE.md]``) computes, on the reference data, for every builtin
stand-in model (:data:`mriq_validate.models.BUILTIN_MODELS`):

* PIQE (mean per generated test image, lower is better) and its paired difference from the real test images;
* protocol A Dice (the real-data segmenter applied to the images generated for the real test masks) and its paired
  difference from the same segmenter's Dice on the real test images;
* for :data:`TSTR_MODELS`, protocol B TSTR Dice (a segmenter trained on the images generated for the real TRAIN masks,
  evaluated on the real test split) and its paired difference from TRTR, also in seed-to-seed SDs;

plus TRTR Dice itself with its seed spread. Every value carries a percentile-bootstrap 95% CI; differences are
paired (same resampled test slices on both sides). Segmenters come from the on-disk cache (trained once).

The flags apply the thresholds of a suite's criteria (:data:`FLAG_CRITERIA`, default the shipped brain-tumour suite)
with the gate's own rule (:func:`mriq_validate.criteria.noise_unit` and :func:`~mriq_validate.criteria.check_threshold`),
so the table and the gate cannot disagree on where a bound lies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ModelError, SuiteError
from .stats import Estimate, bootstrap, estimate_from, resample_rows
from .suite import shipped_suites

if TYPE_CHECKING:
    from .bounds import NoiseUnit
    from .metrics import Metric
    from .session import RunContext
    from .suite import Criterion

TSTR_MODELS: tuple[str, ...] = ("real", "noisy", "boundary-blur", "collapse")

#: The suite the flags are read from by default: the shipped brain-tumour suite (package data).
SHIPPED_SUITE = shipped_suites() / "brain_tumour.yaml"
#: Flag → (criterion id, metric it must use): the criteria whose thresholds flag the table's columns.
FLAG_CRITERIA: dict[str, tuple[str, str]] = {"PIQE": ("IQA-PIQE", "piqe"), "Dice A": ("DICE-WT", "dice"),
                                             "TSTR": ("DICE-TSTR-WT", "dice_tstr")}


@dataclass
class FlagRule:
    """A column's flag: the criterion's threshold on the paired difference, in its noise unit, as the gate applies it."""

    flag: str
    criterion_id: str
    threshold: dict[str, Any]
    unit: "NoiseUnit"
    bounds: dict[str, float | None]

    def flags(self, difference: Estimate) -> bool:
        """Whether the gate's rule fails ``difference`` (subject − reference)."""
        from .bounds import check_threshold
        from .suite import Threshold

        return not check_threshold(Threshold(**self.threshold), difference, self.unit)[0]

    def text(self) -> str:
        """The rule in words, with its bound on the difference."""
        from .suite import Threshold

        th, u = self.threshold, self.unit
        parts = []
        for key, sign in (("min", "<"), ("max", ">")):
            c = th[key]
            if c is None:
                continue
            bound = self.bounds[key]
            if u.unit == "absolute":
                parts.append(f"Δ {sign} {c:g}")
            elif u.unit == "se":
                parts.append(f"Δ {sign} {c:g} bootstrap SEs of the real mean ({bound:+.3g})")
            else:
                rec = u.record(Threshold(**th))["noise_unit"]["bounds"][key]
                parts.append(f"Δ {sign} {c:g} seed SDs, widened ×{rec['inflation']:.2f} for an SD from {u.seeds} seeds to keep its "
                             f"{100 * rec['false_alarm']:.1f} % false-alarm rate ({bound:+.4f})")
        tol = th.get("tolerance") or {}
        loosened = [f"{k} {v:+g}" for k, v in tol.items() if v is not None]
        return (f"**{self.flag}** ({self.criterion_id}) when " + " or ".join(parts)
                + (f", loosened to the clinical tolerance ({', '.join(loosened)}) where that is looser" if loosened else ""))


def flag_criteria(suite: str | Path | None = None) -> dict[str, "Criterion"]:
    """The criteria of :data:`FLAG_CRITERIA` in ``suite`` (default :data:`SHIPPED_SUITE`), each a model criterion with
    ``relative: difference`` on the expected metric; SuiteError naming the file and criterion otherwise."""
    from .errors import SuiteError
    from .suite import load_suite

    path = Path(suite) if suite is not None else SHIPPED_SUITE
    if not path.is_file():
        raise SuiteError(f"downstream table: suite {path} not found (the flags read their thresholds from it); pass a suite path")
    by_id = {c.id: c for c in load_suite(path).criteria}
    out = {}
    for flag, (cid, metric) in FLAG_CRITERIA.items():
        crit = by_id.get(cid)
        if crit is None:
            raise SuiteError(f"{path}: the downstream table flags {flag} by criterion {cid}, which the suite does not have")
        if crit.metric != metric or crit.kind != "model" or crit.threshold.relative != "difference":
            raise SuiteError(f"{path}: criterion {cid} must be a model criterion on metric {metric!r} with relative: difference to flag "
                             f"the table's {flag} column; it has metric {crit.metric!r}, kind {crit.kind}, relative "
                             f"{crit.threshold.relative}")
        out[flag] = crit
    return out


def flag_rule(flag: str, crit: "Criterion", metric: "Metric", ctx: "RunContext", reference: Estimate) -> FlagRule:
    """The rule that flags a column: ``crit``'s threshold in the noise unit the gate would use for ``metric`` with
    ``reference`` as the baseline (:func:`mriq_validate.criteria.noise_unit`)."""
    from .bounds import threshold_bounds
    from .criteria import noise_unit

    unit = noise_unit(crit, metric, ctx, reference)
    th = crit.threshold
    return FlagRule(flag, crit.id, th.model_dump(), unit, dict(zip(("min", "max"), threshold_bounds(th, unit))))


@dataclass
class Paired:
    """A subject's mean, the reference's mean and their paired difference (subject - reference), with CIs."""

    value: Estimate
    reference: Estimate
    difference: Estimate


@dataclass
class ModelRow:
    """One builtin stand-in's line of the table."""

    model: str
    behaviour: str
    piqe: Paired
    dice_a: Paired
    tstr: Paired | None = None
    flags: list[str] = field(default_factory=list)


@dataclass
class DownstreamTable:
    """Everything the table shows, and how it was computed."""

    data: str
    region: str
    segmenter: dict[str, Any]
    device: str
    n_test: int
    n_train: int
    n_boot: int
    trtr: Estimate
    seed_means: list[float]
    seed_sd: float
    suite: str
    rules: list[FlagRule]
    rows: list[ModelRow]
    seconds: float

    def markdown(self) -> str:
        """The table as GitHub markdown (a header paragraph, the table, the flag rules)."""
        seeds = ", ".join(f"{m:.3f}" for m in self.seed_means)
        seg = self.segmenter
        lines = [
            f"Downstream table on `{self.data}` ({self.n_train} real training / {self.n_test} real test slices), region "
            f"`{self.region}`, segmenter MONAI UNet channels {list(seg['channels'])}, res units {seg['num_res_units']}, "
            f"{seg['epochs']} epochs, batch {seg['batch_size']}, lr {seg['lr']} (cosine), loss {seg['loss']}, device {self.device}.",
            "",
            f"**TRTR** (train on real train, test on real test) Dice {_est(self.trtr)}; seed-to-seed SD over "
            f"{len(self.seed_means)} training seeds **{self.seed_sd:.4f}** (per-seed means {seeds}).",
            "",
            "| model | behaviour | PIQE ↓ | ΔPIQE vs real | Dice A | ΔDice A vs real | TSTR Dice | ΔTSTR vs TRTR | ΔTSTR / seed SD | flagged by |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            tstr = ("—",) * 3 if r.tstr is None else (
                _est(r.tstr.value), _est(r.tstr.difference, signed=True), f"{r.tstr.difference.value / self.seed_sd:+.1f}")
            lines.append(
                f"| {r.model} | {r.behaviour} | {_est(r.piqe.value, 2)} | {_est(r.piqe.difference, 2, signed=True)} | "
                f"{_est(r.dice_a.value)} | {_est(r.dice_a.difference, signed=True)} | {tstr[0]} | {tstr[1]} | {tstr[2]} | "
                f"{', '.join(r.flags) or 'none'} |"
            )
        lines += [
            "",
            f"Values are means with percentile-bootstrap 95% CIs ({self.n_boot} resamples); Δ are paired differences over the "
            "same resampled test slices (model − real, or TSTR − TRTR). Dice A: the real-data (TRTR) segmenter applied to the "
            "images each model generates for the real test masks. TSTR: a segmenter of the same architecture and budget trained "
            "on the images each model generates for the real training masks, tested on the real test images. "
            f"Flags apply the thresholds of `{self.suite}` with the gate's own rule: "
            + "; ".join(r.text() for r in self.rules) + f". Computed in {self.seconds:.0f} s.",
        ]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def _est(e: Estimate, digits: int = 3, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{e.value:{sign}.{digits}f} [{e.ci_low:{sign}.{digits}f}, {e.ci_high:{sign}.{digits}f}]"


def paired_estimates(subject: np.ndarray, reference: np.ndarray, rng: np.random.Generator, n_boot: int) -> Paired:
    """Means of two item-aligned score vectors and their difference, bootstrapped on the same resampled items."""
    subject, reference = np.asarray(subject, np.float64), np.asarray(reference, np.float64)
    if subject.shape != reference.shape:
        raise ValueError(f"paired scores need equal shapes, got {subject.shape} and {reference.shape}")
    n = subject.size
    idx = resample_rows(n, n_boot, rng)
    return Paired(estimate_from(lambda i: subject[i].mean(), n, idx), estimate_from(lambda i: reference[i].mean(), n, idx),
                  estimate_from(lambda i: subject[i].mean() - reference[i].mean(), n, idx))


def downstream_table(data_spec: str = "builtin:mni-tumour", *, cache_dir: str | Path | None = None, device: str = "auto",
                     seed: int = 0, suite: str | Path | None = None, region: str | None = None, segmenter: dict[str, Any] | None = None,
                     noise_seeds: int | None = None, n_boot: int = 1000, models: Sequence[str] | None = None,
                     tstr_models: Sequence[str] = TSTR_MODELS, progress: Callable[[str], None] | None = None) -> DownstreamTable:
    """Compute the downstream table (see the module docstring) for builtin ``models`` (default: all of them).

    The metrics' parameters and the flags' thresholds come from ``suite``'s criteria (:func:`flag_criteria`);
    ``region``, ``segmenter`` and ``noise_seeds``, when given, override those parameters for the Dice columns.
    On CPU everything runs with ``$MRIQ_TORCH_THREADS`` torch threads (default 1; see
    :func:`mriq_validate.segnets.cpu_threads`), which on shared CPUs is many times faster than torch's default.
    """
    from .segnets import torch_threads
    from .devices import resolve_device

    with torch_threads(resolve_device(device)):
        return _downstream_table(data_spec, cache_dir=cache_dir, device=device, seed=seed, suite=suite, region=region, segmenter=segmenter,
                                 noise_seeds=noise_seeds, n_boot=n_boot, models=models, tstr_models=tstr_models, progress=progress)


def _downstream_table(data_spec: str, *, cache_dir: str | Path | None, device: str, seed: int, suite: str | Path | None,
                      region: str | None, segmenter: dict[str, Any] | None, noise_seeds: int | None, n_boot: int,
                      models: Sequence[str] | None, tstr_models: Sequence[str], progress: Callable[[str], None] | None) -> DownstreamTable:
    from .cache import default_cache_dir
    from .metrics import create_metric
    from .metrics.downstream import Dice, DiceTSTR
    from .models import BUILTIN_MODELS
    from .seeding import rng_for
    from .session import RunContext, RunSettings

    start = time.perf_counter()
    say = progress or (lambda msg: None)
    names = list(models) if models is not None else list(BUILTIN_MODELS)
    unknown = sorted(set(names) - set(BUILTIN_MODELS)) + sorted(set(tstr_models) - set(BUILTIN_MODELS))
    if unknown:
        raise ModelError(f"unknown builtin model(s) {unknown}; expected some of {sorted(BUILTIN_MODELS)}")
    criteria = flag_criteria(suite)
    overrides = {k: v for k, v in (("region", region), ("segmenter", segmenter), ("noise_seeds", noise_seeds)) if v is not None}

    def metric_for(flag: str, params: dict[str, Any]) -> Any:
        crit = criteria[flag]
        return create_metric(crit.metric, {**crit.params, **params}, where=f"criterion {crit.id}: ")

    settings = RunSettings(model=None, data=data_spec, device=device, seed=seed, cache_dir=str(cache_dir or default_cache_dir()))
    ctx = RunContext(settings, data_spec, say)
    data = ctx.data
    dice_a, tstr, piqe = metric_for("Dice A", overrides), metric_for("TSTR", overrides), metric_for("PIQE", {})
    assert isinstance(dice_a, Dice) and isinstance(tstr, DiceTSTR)
    if dice_a.segmenter != tstr.segmenter or dice_a.region != tstr.region:
        raise SuiteError(f"the downstream table needs one segmenter and region for protocols A and B; the suite's criteria "
                         f"{criteria['Dice A'].id} and {criteria['TSTR'].id} differ (region {dice_a.region} vs {tstr.region})")
    region = tstr.region
    real_test, real_train = ctx.real("test"), ctx.real("train")

    say(f"downstream table: TRTR segmenter and its seed spread over {tstr.noise_seeds} seeds")
    trtr = ctx.prepare(tstr, real_train)
    seed_means = tstr.seed_means(ctx)
    seed_sd = float(np.std(seed_means, ddof=1))
    real_dice = ctx.prepare(dice_a, real_test)
    if not np.allclose(real_dice, trtr):
        raise AssertionError("protocol A's real-test Dice differs from TRTR's: they must be the same segmenter")
    say("downstream table: PIQE on the real test images")
    real_piqe = ctx.prepare(piqe, real_test)

    def mean_estimate(scores: np.ndarray, *key: str) -> Estimate:
        return bootstrap(lambda i: scores[i].mean(), scores.size, rng_for(seed, "downstream-table", *key), n_boot)

    trtr_est = mean_estimate(trtr, "trtr")
    rules = {"PIQE": flag_rule("PIQE", criteria["PIQE"], piqe, ctx, mean_estimate(real_piqe, "real-piqe")),
             "Dice A": flag_rule("Dice A", criteria["Dice A"], dice_a, ctx, trtr_est),
             "TSTR": flag_rule("TSTR", criteria["TSTR"], tstr, ctx, trtr_est)}

    rows = []
    for name in names:
        b = BUILTIN_MODELS[name]
        # the model's side of a run sharing this reference side: the gate's own batched, seeded generation
        mctx = RunContext(replace(settings, model=f"builtin:{name}"), data_spec, say, reference=ctx.reference)
        try:
            say(f"downstream table: builtin:{name}: generating for the test masks, PIQE and protocol A Dice")
            gen_test, _ = mctx.generated("test")
            rng = rng_for(seed, "downstream-table", name)
            row = ModelRow(name, b.behaviour, paired_estimates(ctx.prepare(piqe, gen_test), real_piqe, rng, n_boot),
                           paired_estimates(ctx.prepare(dice_a, gen_test), real_dice, rng, n_boot))
            if name in tstr_models:
                say(f"downstream table: builtin:{name}: generating for the training masks and training the TSTR segmenter")
                gen_train, _ = mctx.generated("train")
                row.tstr = paired_estimates(ctx.prepare(tstr, gen_train), trtr, rng, n_boot)
        finally:
            mctx.close()
        rows.append(row)

    for row in rows:
        for flag, paired in (("PIQE", row.piqe), ("Dice A", row.dice_a), ("TSTR", row.tstr)):
            if paired is not None and rules[flag].flags(paired.difference):
                row.flags.append(flag)
    return DownstreamTable(data_spec, region, asdict(tstr.segmenter.resolve(data.spatial_dims)), str(ctx.device), len(data.test), len(data.train), n_boot, trtr_est,
                           seed_means, seed_sd, _display_path(suite), list(rules.values()), rows,
                           time.perf_counter() - start)


def _display_path(suite: str | Path | None) -> str:
    """The suite as the table names it: the path given, or the shipped suite as ``suites/<name>``."""
    return str(suite) if suite is not None else f"suites/{SHIPPED_SUITE.name}"
