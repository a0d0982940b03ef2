"""The detectability measure (``c2st_auc``, a classifier two-sample test) on the embedded data: its noise on real-vs-real
comparisons, the shipped suite's self-check (tumours erased from the real test images), and the AUC next to FID for every
builtin stand-in, each decided by the suite's own criteria (DET-C2ST, DIST-FID). Writes
``docs/generated/detectability.json``. About 4 minutes on 2 CPU cores (the classifiers are trained afresh; FID's features
come from the cache).

    .venv/bin/python docs/generate/detectability.py
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import provenance, write

from mriq_validate.builtin_models import BUILTIN_MODELS
from mriq_validate.cache import default_cache_dir
from mriq_validate.criteria import evaluate
from mriq_validate.memo import ENV as RESULT_CACHE_ENV
from mriq_validate.metrics import create_metric
from mriq_validate.metrics.detectability import held_out_scores, pooled
from mriq_validate.metrics.functional.detectability import auc_of_labels, delong_ci
from mriq_validate.seeding import derive_seed
from mriq_validate.session import RunContext, RunSettings
from mriq_validate.suite import load_suite, shipped_suites

DATA = "builtin:mni-tumour"
AUC, SENSITIVITY, FID = "DET-C2ST", "SENS-C2ST-ERASE", "DIST-FID"
#: DET-C2ST's band: 0.5 ± (BAND_SDS × the SD of the real-vs-real AUCs + TOLERANCE), rounded to 0.01.
BAND_SDS, TOLERANCE = 3, 0.05


def estimate(e: Any) -> dict[str, float]:
    return {"value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high}


def null_aucs(ctx: RunContext, params: dict[str, Any], repeats: int, seed: int) -> dict[str, Any]:
    """The AUC where both sides are real: the real test images against the real training images with ``repeats``
    classifier seeds, and ``repeats`` random re-splits of all real images into sets of the test and training sizes."""
    metric = create_metric("c2st_auc", params)
    test = pooled(ctx.data.test.images, None, metric.downsample)
    train = pooled(ctx.data.train.images, None, metric.downsample)
    both, labels = torch.cat([test, train]), np.r_[np.ones(len(test)), np.zeros(len(train))]
    out: dict[str, Any] = {"seeds": [], "resplits": []}
    for r in range(repeats):
        resplit = torch.as_tensor(np.random.default_rng(derive_seed(seed, "resplit", r)).permutation(len(both)))
        for kind, x in (("seeds", both), ("resplits", both[resplit])):
            scores = held_out_scores(x, labels, metric, ctx.device, derive_seed(seed, "null", kind, r))
            ci = delong_ci(scores[labels == 1], scores[labels == 0])
            out[kind].append({"auc": auc_of_labels(labels, scores), "delong_low": ci.low, "delong_high": ci.high})
    n1, n0 = len(test), len(train)
    for kind in ("seeds", "resplits"):
        a = np.array([r["auc"] for r in out[kind]])
        out[f"{kind}_summary"] = {"mean": float(a.mean()), "sd": float(a.std(ddof=1)), "min": float(a.min()), "max": float(a.max()),
                                  "delong_covers_half": float(np.mean([r["delong_low"] <= 0.5 <= r["delong_high"] for r in out[kind]]))}
    every = np.array([r["auc"] for kind in ("seeds", "resplits") for r in out[kind]])
    out["sd_pooled"] = float(every.std(ddof=1))
    out["sd_expected"] = math.sqrt((n1 + n0 + 1) / (12 * n1 * n0))  # the AUC's SD between two samples of one distribution
    half = round(BAND_SDS * out["sd_pooled"] + TOLERANCE, 2)
    out["band_rule"] = {"sds": BAND_SDS, "tolerance": TOLERANCE, "half_width": half, "band": [round(0.5 - half, 2), round(0.5 + half, 2)]}
    out["n_evaluated"], out["n_reference"] = n1, n0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20, help="classifier seeds and re-splits of the real-vs-real null (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="the cache folder (default: the repository's)")
    args = ap.parse_args(argv)
    os.environ[RESULT_CACHE_ENV] = "0"  # every number computed afresh, so the timings are those of a cold run
    suite = load_suite(shipped_suites() / "brain_tumour.yaml")
    crits = {c.id: c for c in suite.criteria}
    auc_crit, sens_crit, fid_crit = crits[AUC], crits[SENSITIVITY], crits[FID]
    settings = RunSettings(model="builtin:real", data=DATA, device="cpu", seed=args.seed, cache_dir=str(args.cache or default_cache_dir()))
    base = RunContext(settings, DATA)

    t0 = time.perf_counter()
    null = null_aucs(base, auc_crit.params, args.repeats, args.seed)
    null["wall_s"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    real_auc = evaluate(auc_crit, base)
    sens = evaluate(sens_crit, base)
    suite_s = time.perf_counter() - t0  # what the two criteria add to a cold run of the suite against builtin:real
    sensitivity = {"verdict": sens.verdict, "clean": estimate(sens.baseline), "perturbed": estimate(sens.value),
                   "rise": estimate(sens.compared), "bound": sens.bounds["min"], "perturbation": sens.perturbation["params"]}

    rows = []
    for name, b in BUILTIN_MODELS.items():
        ctx = base if name == "real" else RunContext(replace(settings, model=f"builtin:{name}"), DATA, reference=base.reference)
        try:
            t0 = time.perf_counter()
            auc = real_auc if name == "real" else evaluate(auc_crit, ctx)
            auc_s = time.perf_counter() - t0
            fid = evaluate(fid_crit, ctx)
            gen, _ = ctx.generated("test")
            prepared = ctx.prepare(create_metric(auc_crit.metric, auc_crit.params), gen)
            delong = delong_ci(prepared[prepared[:, 0] == 1, 1], prepared[prepared[:, 0] == 0, 1])
        finally:
            if ctx is not base:
                ctx.close()
        rows.append({"model": name, "behaviour": b.behaviour, "fit_for_release": b.fit_for_release,
                     "auc": {**estimate(auc.value), "delong_low": delong.low, "delong_high": delong.high}, "auc_verdict": auc.verdict,
                     "auc_s": round(auc_s, 1), "fid": estimate(fid.value), "fid_real": estimate(fid.baseline),
                     "fid_difference": estimate(fid.compared), "fid_verdict": fid.verdict, "fid_bound": fid.bounds["max"]})
        print(f"{name}: AUC {auc.value.value:.3f} {auc.verdict}, FID {fid.value.value:.4g} {fid.verdict}", flush=True)
    base.close()

    command = "python docs/generate/detectability.py" + (f" --repeats {args.repeats}" if args.repeats != 20 else "")
    write("detectability", {**provenance(command), "data": DATA, "seed": args.seed, "metric": real_auc.metric,
                            "band": [auc_crit.threshold.min, auc_crit.threshold.max], "null": null, "sensitivity": sensitivity,
                            "suite_cold_s": round(suite_s, 1), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
