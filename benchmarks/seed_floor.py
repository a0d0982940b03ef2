"""False-alarm rate of the training-noise floor (``unit: seed_sd``) on faithful models, measured and analytic.

A "faithful model" here is a TRTR segmenter trained with another seed: the same real training data, other training
randomness, so it is exactly as useful as the real data. The gate DICE-TSTR-WT fails a model when its TSTR Dice minus the
baseline's (TRTR, seed 0) is below ``-c`` seed SDs; the SD is estimated from ``k`` seeds that include the baseline's.
For every baseline seed b, faithful seed j != b and floor set {b} + (k-1 of the other seeds, j excluded), this script
asks whether the gate would fail j, under the rule as shipped (bound ``c'·s``, ``c'`` = ``seed_sd_multiplier(c, k)``,
which keeps the false-alarm rate of ``c`` known SDs) and under the earlier rule (bound ``c·s``). The cases share seeds,
so they are not independent: read the measured rates as a check of the order of magnitude, the analytic ones as the
rates (exact under normal training noise).

Each segmenter is trained once (about 45-60 s on one CPU core with the default configuration) and cached on disk, so a
second run only reads them back. Without ``--seeds`` it is a quick run of the procedure (``make bench``: 4 seeds of
2-epoch segmenters, k 3, about 30 s), not the published rates; with ``--seeds`` the segmenters get the gate's default
budget unless ``--epochs`` says otherwise. The rates quoted in suites/brain_tumour.yaml come from the long run
(``make bench-long``, about 9 min cold on one core):

    MRIQ_TORCH_THREADS=1 .venv/bin/python benchmarks/seed_floor.py --seeds 10 --k 3 5 [--c 3] [--epochs N] [--cache DIR]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from dataclasses import replace

import numpy as np


def cases(means: np.ndarray, k: int, baselines: list[int]) -> list[tuple[float, float]]:
    """(difference faithful − baseline, SD of the floor seeds) for every baseline b in ``baselines``, faithful j != b and
    floor set {b} + (k − 1 seeds from the rest, j excluded)."""
    out = []
    n = len(means)
    for b in baselines:
        for j in range(n):
            if j == b:
                continue
            rest = [i for i in range(n) if i not in (b, j)]
            for extra in itertools.combinations(rest, k - 1):
                s = float(np.std(means[[b, *extra]], ddof=1))
                out.append((float(means[j] - means[b]), s))
    return out


def main() -> None:
    from mriq_validate.cache import default_cache_dir
    from mriq_validate.bounds import seed_sd_false_alarm, seed_sd_multiplier
    from mriq_validate.metrics.downstream import DiceTSTR
    from mriq_validate.session import RunContext, RunSettings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=None, help="TRTR training seeds in all (0 .. seeds-1; the long run: 10; "
                                                            "left out: a quick run of 4 seeds of 2-epoch segmenters)")
    ap.add_argument("--k", type=int, nargs="+", default=[3], help="seeds the floor is estimated from (noise_seeds; the long run: 3 5)")
    ap.add_argument("--epochs", type=int, default=None, help="segmenter training epochs (default: the gate's budget; "
                                                             "2 in the quick run)")
    ap.add_argument("--c", type=float, default=3.0, help="the bound in seed SDs (DICE-TSTR-WT: 3)")
    ap.add_argument("--data", default="builtin:mni-tumour")
    ap.add_argument("--region", default="whole_tumour")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()
    if args.seeds is None:  # the quick run of make bench
        args.seeds, args.epochs = 4, args.epochs or 2

    start = time.perf_counter()
    settings = RunSettings(model=None, data=args.data, device=args.device, cache_dir=str(args.cache or default_cache_dir()))
    ctx = RunContext(settings, args.data, lambda msg: print(f"[mriq] {msg}", flush=True))
    metric = DiceTSTR(args.region, {"epochs": args.epochs} if args.epochs else None, noise_seeds=args.seeds)
    means = np.array(metric.seed_means(ctx))
    seconds = [ctx.segmenter(replace(metric.segmenter, seed=metric.segmenter.seed + i)).history.get("seconds") for i in range(args.seeds)]
    print(f"\nTRTR mean real-test Dice ({args.region}) over {args.seeds} training seeds: " + ", ".join(f"{m:.4f}" for m in means))
    print(f"mean {means.mean():.4f}, SD (ddof 1) {means.std(ddof=1):.4f}, range {means.max() - means.min():.4f}; training "
          f"seconds per seed (when it was trained): {', '.join(f'{s:.0f}' for s in seconds if s is not None)}")
    from scipy import stats

    print(f"Shapiro-Wilk normality of the seed means: p = {stats.shapiro(means).pvalue:.2f}")
    c = args.c
    alpha = float(stats.norm.cdf(-c / math.sqrt(2)))
    print(f"\nbound -{c:g} seed SDs; with a known SD a faithful training fails with probability Phi(-c/sqrt 2) = {alpha:.4f}")
    print("| k (noise_seeds) | rule | multiplier | analytic false-alarm | measured, baseline seed 0 | measured, every baseline |")
    print("|---|---|---|---|---|---|")
    for k in args.k:
        if k > args.seeds - 1:
            print(f"| {k} | needs at least {k + 1} seeds | | | | |")
            continue
        m = seed_sd_multiplier(c, k)
        gate, every = cases(means, k, [0]), cases(means, k, list(range(args.seeds)))
        for rule, mult in (("shipped (widened)", m), ("earlier (c·s)", c)):
            rate = seed_sd_false_alarm(mult, k)

            def measured(cs: list[tuple[float, float]]) -> str:
                fails = sum(d < -mult * s for d, s in cs)
                return f"{fails}/{len(cs)} = {fails / len(cs):.3f}"

            print(f"| {k} | {rule} | {mult:.3f} | {rate:.4f} | {measured(gate)} | {measured(every)} |")
    print(f"\n{time.perf_counter() - start:.0f} s in all (training included)")


if __name__ == "__main__":
    main()
