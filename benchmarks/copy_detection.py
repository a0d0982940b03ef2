"""Copy detection (copy_fraction's flip- and shift-invariant nearest-training-image search): time per generated sample
of the branch-and-bound search against the exhaustive one it replaced, and their ratio.

Queries: the first ``--queries`` held-out slices (copy_fraction tests at most ``max_items`` = 256 images a set);
references: the first m training slices, for each m of ``--train`` (T1, 128×128, ``builtin:mni-tumour`` enlarged with
the data option ``size``; built into the cache on the first run, about 100 s for 2048 slices). Both searches get the
same copy embeddings; per sample = one ``copy_distances(queries, references)`` call ÷ the number of queries. The new
search keeps the references' windows in memory (``copy_search_cache``), as a run does between the held-out and the
evaluated sets: "cold" is a call with that cache empty, "warm" one that finds the references there (the median of
``--repeats``). The old search is the tests' known-answer oracle (``tests/test_memorisation_search.py``); the script
asserts that both give the same distances and nearest images. Wall seconds (the old search: median of
``--old-repeats``), and the process's CPU seconds.

    .venv/bin/python benchmarks/copy_detection.py [--train 256 2048] [--queries 256] [--threads 1] [--repeats 3]

``--threads`` sets torch's and OpenBLAS's thread count (the latter through ``OPENBLAS_NUM_THREADS`` before numpy
loads); the distances do not depend on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float, float]:
    """``fn()``'s result, and the median wall and CPU seconds of ``repeats`` calls."""
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return out, statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", type=int, default=[256], help="reference (training) set sizes (make bench: 256; the README figures also used 2048)")
    ap.add_argument("--queries", type=int, default=256, help="generated samples per call (copy_fraction's max_items)")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (1: stable numbers on a busy CPU)")
    ap.add_argument("--repeats", type=int, default=3, help="warm calls of the new search per size (median)")
    ap.add_argument("--old-repeats", type=int, default=1, help="calls of the exhaustive search per size (median)")
    args = ap.parse_args()
    if "numpy" in sys.modules:
        raise SystemExit("run as a script: numpy must not be imported before the BLAS thread count is set")
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import torch

    from mriq_validate.cache import DiskCache, default_cache_dir
    from mriq_validate.data import load_data
    from mriq_validate.metrics.functional import copy_search_cache
    from mriq_validate.metrics.functional.memorisation import copy_distances, copy_embedding

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_memorisation_search import reference_copy_distances  # the exhaustive search, kept as the tests' oracle

    torch.set_num_threads(args.threads)
    data = load_data("builtin:mni-tumour", DiskCache(default_cache_dir()), size=[max(args.train), args.queries]).select(["t1"])
    query = copy_embedding(data.test.images[:args.queries])
    train = copy_embedding(data.train.images[:max(args.train)])
    load = os.getloadavg()[0]
    print(f"copy_distances, {args.queries} queries × m training slices (128×128, T1), torch/BLAS threads {args.threads}, "
          f"load average {load:.2f} on {os.cpu_count()} CPUs")
    print(f"{'m':>6} {'old ms/sample':>14} {'cold ms':>8} {'warm ms':>8} {'ratio cold':>10} {'warm':>6}   "
          f"{'old CPU':>8} {'cold CPU':>8} {'warm CPU':>8} {'ratio cold':>10} {'warm':>6}")
    for m in args.train:
        copy_search_cache.clear()
        (d_cold, i_cold), wall_cold, cpu_cold = timed(lambda: copy_distances(query, train[:m]), 1)
        (d_new, i_new), wall_new, cpu_new = timed(lambda: copy_distances(query, train[:m]), args.repeats)
        (d_old, i_old), wall_old, cpu_old = timed(lambda: reference_copy_distances(query, train[:m]), args.old_repeats)
        for d, i in ((d_cold, i_cold), (d_new, i_new)):
            np.testing.assert_allclose(d, d_old, rtol=1e-5, atol=1e-12)
            if not np.array_equal(i, i_old):
                raise SystemExit(f"m={m}: nearest training images differ for {int((i != i_old).sum())} queries")
        per = 1e3 / args.queries
        print(f"{m:>6} {wall_old * per:>14.1f} {wall_cold * per:>8.2f} {wall_new * per:>8.2f} {wall_old / wall_cold:>9.1f}× "
              f"{wall_old / wall_new:>5.1f}×   {cpu_old * per:>8.1f} {cpu_cold * per:>8.2f} {cpu_new * per:>8.2f} "
              f"{cpu_old / cpu_cold:>9.1f}× {cpu_old / cpu_new:>5.1f}×")
    print(f"same distances (max |Δ| {np.abs(d_new - d_old).max():.1e}) and nearest images; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
