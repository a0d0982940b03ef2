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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .downstream import torch_threads
from .stats import Estimate, bootstrap_indices

TSTR_MODELS: tuple[str, ...] = ("real", "noisy", "boundary-blur", "collapse")

# The flag rules (the shipped suite's tolerances; see the table's footnote).
PIQE_SE_TOLERANCE = 3.0  # IQA-PIQE: worse than real by more than 3 bootstrap SEs of the real mean
DICE_A_TOLERANCE = -0.05  # DICE-WT: protocol A Dice more than 0.05 below real
TSTR_SEED_SD_TOLERANCE = -2.0  # TSTR Dice more than 2 seed-to-seed SDs below TRTR


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
    real_piqe_se: float
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
            f"Flags: **PIQE** when ΔPIQE > {PIQE_SE_TOLERANCE:g} standard errors of the real mean PIQE "
            f"({PIQE_SE_TOLERANCE * self.real_piqe_se:.2f}); **Dice A** when ΔDice A < {DICE_A_TOLERANCE:g}; "
            f"**TSTR** when ΔTSTR < {TSTR_SEED_SD_TOLERANCE:g} seed SDs ({TSTR_SEED_SD_TOLERANCE * self.seed_sd:+.4f}). "
            f"Computed in {self.seconds:.0f} s.",
        ]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def estimate_from(statistic: Callable[[np.ndarray], float], n: int, indices: np.ndarray, level: float = 0.95) -> Estimate:
    """Point value of ``statistic`` on ``range(n)`` and its percentile CI and SE over the resample ``indices`` (n_boot × n);
    statistics evaluated on the same ``indices`` are paired."""
    point = float(statistic(np.arange(n)))
    reps = np.array([statistic(i) for i in indices], dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return Estimate(point, point, point, 0.0, n, 0, level)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(point, float(lo), float(hi), float(reps.std(ddof=1)) if reps.size > 1 else 0.0, n, int(reps.size), level)


def _est(e: Estimate, digits: int = 3, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{e.value:{sign}.{digits}f} [{e.ci_low:{sign}.{digits}f}, {e.ci_high:{sign}.{digits}f}]"


def paired_estimates(subject: np.ndarray, reference: np.ndarray, rng: np.random.Generator, n_boot: int) -> Paired:
    """Means of two item-aligned score vectors and their difference, bootstrapped on the same resampled items."""
    subject, reference = np.asarray(subject, np.float64), np.asarray(reference, np.float64)
    if subject.shape != reference.shape:
        raise ValueError(f"paired scores need equal shapes, got {subject.shape} and {reference.shape}")
    n = subject.size
    idx = bootstrap_indices(n, n_boot, rng) if n_boot else np.empty((0, n), np.int64)
    return Paired(estimate_from(lambda i: subject[i].mean(), n, idx), estimate_from(lambda i: reference[i].mean(), n, idx),
                  estimate_from(lambda i: subject[i].mean() - reference[i].mean(), n, idx))


def downstream_table(data_spec: str = "builtin:mni-tumour", *, cache_dir: str | Path | None = None, device: str = "auto",
                     seed: int = 0, region: str = "whole_tumour", segmenter: dict[str, Any] | None = None, noise_seeds: int = 3,
                     n_boot: int = 1000, models: Sequence[str] | None = None, tstr_models: Sequence[str] = TSTR_MODELS,
                     progress: Callable[[str], None] | None = None) -> DownstreamTable:
    """Compute the downstream table (see the module docstring) for builtin ``models`` (default: all of them).

    On CPU everything runs with ``$MRIQ_TORCH_THREADS`` torch threads (default 1; see
    :func:`mriq_validate.downstream.cpu_threads`), which on shared CPUs is many times faster than torch's default.
    """
    from .session import resolve_device

    with torch_threads(resolve_device(device)):
        return _downstream_table(data_spec, cache_dir=cache_dir, device=device, seed=seed, region=region, segmenter=segmenter,
                                 noise_seeds=noise_seeds, n_boot=n_boot, models=models, tstr_models=tstr_models, progress=progress)


def _downstream_table(data_spec: str, *, cache_dir: str | Path | None, device: str, seed: int, region: str,
                      segmenter: dict[str, Any] | None, noise_seeds: int, n_boot: int, models: Sequence[str] | None,
                      tstr_models: Sequence[str], progress: Callable[[str], None] | None) -> DownstreamTable:
    from .cache import default_cache_dir
    from .downstream import Dice, DiceTSTR
    from .metrics.base import Sample, create_metric
    from .models import BUILTIN_MODELS, ModelContext, load_model
    from .seeding import derive_seed, rng_for
    from .session import RunContext, RunSettings

    start = time.perf_counter()
    say = progress or (lambda msg: None)
    names = list(models) if models is not None else list(BUILTIN_MODELS)
    unknown = sorted(set(names) - set(BUILTIN_MODELS)) + sorted(set(tstr_models) - set(BUILTIN_MODELS))
    if unknown:
        raise ValueError(f"unknown builtin model(s) {unknown}; expected some of {sorted(BUILTIN_MODELS)}")
    settings = RunSettings(model=None, data=data_spec, device=device, seed=seed, cache_dir=str(cache_dir or default_cache_dir()))
    ctx = RunContext(settings, data_spec, say)
    data = ctx.data
    dice_a, tstr = Dice(region, segmenter, noise_seeds=noise_seeds), DiceTSTR(region, segmenter, noise_seeds=noise_seeds)
    piqe = create_metric("piqe")
    real_test, real_train = ctx.real("test"), ctx.real("train")

    say(f"downstream table: TRTR segmenter and its seed spread over {noise_seeds} seeds")
    trtr = ctx.prepare(tstr, real_train)
    seed_means = tstr.seed_means(ctx)
    seed_sd = float(np.std(seed_means, ddof=1))
    real_dice = ctx.prepare(dice_a, real_test)
    if not np.allclose(real_dice, trtr):
        raise AssertionError("protocol A's real-test Dice differs from TRTR's: they must be the same segmenter")
    say("downstream table: PIQE on the real test images")
    real_piqe = ctx.prepare(piqe, real_test)

    rows = []
    for name in names:
        b = BUILTIN_MODELS[name]
        mctx = ModelContext(data.train.images, data.train.masks, data.image_shape, ctx.device, derive_seed(seed, "model"), dict(data.labels))
        model = load_model(f"builtin:{name}", mctx, data)
        say(f"downstream table: builtin:{name}: generating for the test masks, PIQE and protocol A Dice")
        gen_test = Sample(model.generate(real_test.masks, seed=derive_seed(seed, "generated", "test")), real_test.masks, "generated (test masks)")
        rng = rng_for(seed, "downstream-table", name)
        row = ModelRow(name, b.behaviour, paired_estimates(ctx.prepare(piqe, gen_test), real_piqe, rng, n_boot),
                       paired_estimates(ctx.prepare(dice_a, gen_test), real_dice, rng, n_boot))
        if name in tstr_models:
            say(f"downstream table: builtin:{name}: generating for the training masks and training the TSTR segmenter")
            gen_train = Sample(model.generate(real_train.masks, seed=derive_seed(seed, "generated", "train")), real_train.masks,
                               "generated (train masks)")
            row.tstr = paired_estimates(ctx.prepare(tstr, gen_train), trtr, rng, n_boot)
        rows.append(row)

    real_piqe_se = float(np.std(real_piqe, ddof=1) / np.sqrt(real_piqe.size))
    for row in rows:
        if row.piqe.difference.value > PIQE_SE_TOLERANCE * real_piqe_se:
            row.flags.append("PIQE")
        if row.dice_a.difference.value < DICE_A_TOLERANCE:
            row.flags.append("Dice A")
        if row.tstr is not None and row.tstr.difference.value < TSTR_SEED_SD_TOLERANCE * seed_sd:
            row.flags.append("TSTR")
    trtr_est = estimate_from(lambda i: trtr[i].mean(), trtr.size, bootstrap_indices(trtr.size, n_boot, rng_for(seed, "downstream-table", "trtr"))
                             if n_boot else np.empty((0, trtr.size), np.int64))
    return DownstreamTable(data_spec, region, asdict(tstr.segmenter), str(ctx.device), len(data.test), len(data.train), n_boot, trtr_est,
                           seed_means, seed_sd, real_piqe_se, rows, time.perf_counter() - start)
