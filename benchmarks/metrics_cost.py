"""CPU cost of the maths metrics: ms per set of 500 feature vectors, or per 128×128 slice.

Distribution metrics on random 500 × d features (d = 64 and the Inception size 2048); memorisation, NIQE and
radiomics on T1 slices of the builtin ``mni-tumour`` cohort. NIQE is also timed as the bare
``pyiqa.archs.niqe_arch.niqe()`` call on the same prepared input, and the ratio wrapped / bare is printed.
The median over repeats is reported.

    .venv/bin/python benchmarks/metrics_cost.py [--repeats 3] [--threads 1]

``--threads`` sets both torch's and OpenBLAS's thread count (the latter through ``OPENBLAS_NUM_THREADS``
before numpy loads): on a shared CPU, idle BLAS threads spinning against other processes made numbers vary
up to 5× between runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per figure (median; more for steadier figures)")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (1: stable numbers on a busy CPU)")
    args = ap.parse_args()
    if "numpy" in sys.modules:
        raise SystemExit("run as a script: numpy must not be imported before the BLAS thread count is set")
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
    global np, torch
    import numpy as np
    import torch

    from mriq_validate.cache import DiskCache, default_cache_dir
    from mriq_validate.data import load_data
    from mriq_validate.metrics.functional.distribution import fid_from_features, kid, mmd2, prdc, vendi_score
    from mriq_validate.metrics.functional.memorisation import copy_flags, image_embedding, nn_distances
    from mriq_validate.metrics.functional.niqe import fit_niqe, niqe_scores, prepare_niqe_input
    from mriq_validate.metrics.functional.radiomics import radiomic_features

    torch.set_num_threads(args.threads)
    r = args.repeats
    rng = np.random.default_rng(0)

    print(f"distribution metrics, ms per call on two sets of 500 feature vectors (torch/BLAS threads {args.threads}, median of {r})")
    for d in (64, 2048):
        f1, f2 = rng.normal(size=(500, d)), rng.normal(size=(500, d)) + 0.1
        rows = {
            "fid_from_features": lambda: fid_from_features(f1, f2),
            "kid (100 subsets of 100)": lambda: kid(f1, f2),
            "mmd2 rbf (median bw)": lambda: mmd2(f1, f2),
            "mmd2 poly": lambda: mmd2(f1, f2, kernel="poly"),
            "prdc k=5": lambda: prdc(f1, f2, k=5),
            "vendi_score cosine (one set)": lambda: vendi_score(f1),
        }
        for name, fn in rows.items():
            print(f"  d={d:<5d} {name:<30s} {timed(fn, r) * 1e3:9.1f} ms")

    data = load_data("builtin:mni-tumour", DiskCache(default_cache_dir())).select(["t1"])  # grey slices, as the measures take
    train, test = data.train.images, data.test.images
    n_tr, n_te = len(train), len(test)

    print(f"\nmemorisation ({n_tr} train, {n_te} held-out, 500 generated slices; embedding {image_embedding(train[:1]).shape[1]}-d)")
    gen = torch.cat([test, train, test[:116]])[:500]
    t_emb = timed(lambda: image_embedding(train), r)
    e_tr, e_te, e_gen = image_embedding(train), image_embedding(test), image_embedding(gen)
    print(f"  image_embedding                        {t_emb / n_tr * 1e3:9.3f} ms/slice")
    print(f"  nn_distances 500 gen x {n_tr} train (1024-d) {timed(lambda: nn_distances(e_gen, e_tr), r) * 1e3:9.1f} ms")
    print(f"  copy_flags (incl. null NN)             {timed(lambda: copy_flags(e_gen, e_tr, e_te), r) * 1e3:9.1f} ms")
    print(f"  nn_distances on raw pixels (16384-d)   {timed(lambda: nn_distances(gen, train), r) * 1e3:9.1f} ms")

    print("\nNIQE (block 32, 128x128 slices)")
    n_fit = 64
    t_fit = timed(lambda: fit_niqe(train[:n_fit]), max(1, r // 2))
    model = fit_niqe(train[:n_fit])
    x = test[:32]
    prepared = prepare_niqe_input(x, model.block_size)
    from pyiqa.archs.niqe_arch import niqe

    mu, cov = torch.from_numpy(model.mu), torch.from_numpy(model.cov)

    def bare(batch: int) -> None:
        for s in range(0, len(prepared), batch):
            p = prepared[s:s + batch]
            niqe(p, mu.repeat(len(p), 1), cov.repeat(len(p), 1, 1), block_size_h=32, block_size_w=32)

    print(f"  fit_niqe                               {t_fit / n_fit * 1e3:9.1f} ms/slice ({n_fit} slices)")
    for batch in (1, 4):
        wrapped_t, bare_t = [], []
        niqe_scores(x, model, batch_size=batch), bare(batch)  # warm-up
        for _ in range(r):  # interleaved, so drifting CPU load hits both alike
            t = time.perf_counter()
            niqe_scores(x, model, batch_size=batch)
            wrapped_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            bare(batch)
            bare_t.append(time.perf_counter() - t)
        w, b = statistics.median(wrapped_t) / len(x), statistics.median(bare_t) / len(x)
        print(f"  niqe_scores batch {batch:<2d}                   {w * 1e3:9.1f} ms/slice; bare pyiqa niqe() {b * 1e3:.1f} ms/slice; ratio {w / b:.3f}")

    print("\nradiomics")
    t_rad = timed(lambda: radiomic_features(train), r)
    t_radm = timed(lambda: radiomic_features(train, masks=train > 0.1), r)
    print(f"  radiomic_features (whole slice)        {t_rad / n_tr * 1e3:9.2f} ms/slice")
    print(f"  radiomic_features (masked)             {t_radm / n_tr * 1e3:9.2f} ms/slice")


if __name__ == "__main__":
    main()
