"""Running the study's grid: the clean-real noise floor of every measure, then every measure under every condition."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import MriqError
from ..metrics import Metric, Sample
from ..perturb import PerturbContext, apply
from ..seeding import derive_seed, rng_for
from ..session import RunContext, RunSettings
from ..stats import noise_floor
from .analysis import correlations, ranking, rescore, score
from .grid import Condition, StudyConfig, conditions, family, main_region, select_measures
from .result import CORR_BOOT, DETECT_K, StudyResult


def floor_rng(seed: int, measure: str) -> np.random.Generator:
    """The resampling stream of ``measure``'s clean-real noise floor (shared with ``calibrate``, so both report the
    same SE for the same seed)."""
    return rng_for(seed, "study", "noise-floor", measure)


def _subject(cfg: StudyConfig, cond: Condition, real: Sample, pctx: PerturbContext, base: RunContext) -> Sample:
    """The condition's images: the real test images perturbed, or the stand-in's images for the real test masks (the
    gate's own generation, in a run sharing ``base``'s reference side)."""
    if cond.kind == "perturbation":
        assert cond.param is not None
        seed = derive_seed(cfg.seed, "study", cond.family, cond.level)
        out = apply(cond.family, real.images, real.masks, seed=seed, ctx=pctx, **{cond.param: cond.level})
        return Sample(out.images, out.masks, f"real test + {cond.id}")
    name = cond.id.split(":", 1)[1]
    mctx = RunContext(replace(base.settings, model=f"builtin:{name}"), cfg.data, progress=base.progress, reference=base.reference)
    try:
        subject, _ = mctx.generated("test")
    finally:
        mctx.close()
    if subject.masks is None:
        raise MriqError(f"stand-in {name} returned no masks")
    return subject


def _row(m: Metric, cond: Condition, value: float, baseline: float, se: float) -> dict[str, Any]:
    change = value - baseline
    worse = (-1.0 if m.higher_is_better else 1.0) * change
    z, detected = score(worse, se, baseline)
    return {"measure": m.name, "family": family(m.name), "condition": cond.id, "condition_kind": cond.kind,
            "perturbation": cond.family, "scope": cond.scope, "level": cond.level, "value": value, "baseline": baseline,
            "change": change, "worse": worse, "se": se, "z": z, "detected": detected}


def run_study(cfg: StudyConfig, progress: Callable[[str], None] | None = None) -> StudyResult:
    """Run the grid (see :mod:`mriq_validate.study`) and analyse it."""
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    settings = RunSettings(model="builtin:real", data=cfg.data, device=cfg.device, seed=cfg.seed, cache_dir=cfg.cache_dir)
    base = RunContext(settings, cfg.data, progress=say)
    data = base.data
    region = main_region(data)
    measures, skipped = select_measures(cfg, region, len(data.test))
    grid, skipped_c = conditions(cfg, data)
    skipped += skipped_c
    nb_img, nb_set = cfg.resolved_n_boot()
    say(f"study: data {cfg.data} ({len(data.train)} train / {len(data.test)} test {base.item_kind}), main region {region!r}, "
        f"{len(measures)} measures x {len(grid)} conditions, seed {cfg.seed}{' (quick)' if cfg.quick else ''}")

    real = base.real("test")
    n_boot = {m.name: nb_set if m.resample == "subsample" else nb_img for m in measures}
    floors: dict[str, tuple[float, float]] = {}
    for m in measures:
        t = time.perf_counter()
        floors[m.name] = noise_floor(m, base.prepare(m, real), n_boot[m.name], floor_rng(cfg.seed, m.name))
        say(f"study: clean real {m.name} = {floors[m.name][0]:.4g} (SE {floors[m.name][1]:.3g}) [{time.perf_counter() - t:.1f} s]")

    pctx = PerturbContext(data.train.images, data.train.masks, data.test.covariates, lesion_labels=tuple(data.labels.values()))
    rows: list[dict[str, Any]] = []
    done: list[Condition] = []
    for k, cond in enumerate(grid, 1):
        t = time.perf_counter()
        try:
            subject = _subject(cfg, cond, real, pctx, base)
        except MriqError as exc:
            skipped.append({"what": f"condition {cond.id}", "why": str(exc).splitlines()[0]})
            say(f"study: [{k}/{len(grid)}] {cond.id}: skipped ({str(exc).splitlines()[0][:120]})")
            continue
        done.append(cond)
        for m in measures:
            try:
                prep = base.prepare(m, subject)  # measurement does not depend on the model: one shared memo
                value = float(m.value(prep, np.arange(m.size(prep))))
            except MriqError as exc:
                skipped.append({"what": f"{m.name} on {cond.id}", "why": str(exc).splitlines()[0]})
                continue
            rows.append(_row(m, cond, value, *floors[m.name]))
        dice = next((r["value"] for r in rows if r["condition"] == cond.id and r["measure"] == "dice"), float("nan"))
        say(f"study: [{k}/{len(grid)}] {cond.id}: Dice {dice:.3f} [{time.perf_counter() - t:.1f} s, total {time.perf_counter() - t0:.0f} s]")

    measure_info = [{"name": m.name, "family": family(m.name), "higher_is_better": m.higher_is_better, "kind": m.kind,
                     "resample": m.resample, "config": m.config(), "baseline": floors[m.name][0], "se": floors[m.name][1],
                     "n_boot": n_boot[m.name]} for m in measures]
    from ..report import package_versions

    provenance = {"seed": cfg.seed, "data_spec": cfg.data, "data_digests": data.digests(), "n_train": len(data.train),
                  "n_test": len(data.test), "image_shape": list(data.image_shape), "packages": package_versions(),
                  "python": platform.python_version(), "device": cfg.device, "runtime_s": round(time.perf_counter() - t0, 1),
                  "segmenters": base.provenance().get("segmenters", {}), "argv": sys.argv[1:]}
    config = {"data": cfg.data, "seed": cfg.seed, "quick": cfg.quick, "n_boot_per_image": nb_img, "n_boot_set": nb_set,
              "region": region, "detect_k": DETECT_K, "correlation_n_boot": CORR_BOOT}
    res = StudyResult(config, region, measure_info, done, rows, correlations(rows, measures, cfg.seed), [],
                      ranking(rows, measures, done), skipped, provenance)
    rescore(res, len(real))
    say(f"study: done in {time.perf_counter() - t0:.0f} s")
    return res
