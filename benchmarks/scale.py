"""How time and peak memory grow with the cohort: the gate's stages on enlarged embedded data.

The template generator is asked for more cases (data option ``size``): N = 1k, 4k and 16k slices of 4×128×128
(``builtin:mni-tumour``, train:test 2:1 as the embedded 256:128) and 32 and 128 volumes of 4×64×72×64
(``builtin:mni-tumour-3d``, split by case). Each N runs in a fresh subprocess with its own cache folder (a temporary
one, removed at the end) through the public APIs a gate run uses (``RunContext``, ``create_metric``, ``prepare`` and
``value``), so the figures are those of the gate's own code paths. Stages:

- ``build``: the data synthesised into a cold cache; ``load``: loaded again from the warm cache (SHA-256 check) and
  its digests;
- ``generate``: ``builtin:noisy`` (a stochastic stand-in) generating for the test masks;
- ``segmenter``: the downstream segmenter trained on the real training split for 1 epoch (a fixed small budget, so
  that training cost is linear in N and the stage stays short; the gate's default budget is in ``SegmenterConfig``);
- ``per_image``: PIQE (each contrast), brain_intensity and whole-tumour Dice (the 1-epoch segmenter), on the
  generated and the real test images;
- ``set``: segmenter-encoder features and FID, KID, PRDC coverage; copy_fraction; ms_ssim_diversity.

Per stage: wall seconds and peak RSS (VmHWM after resetting it by writing 5 to ``/proc/self/clear_refs``, Linux), and
the growth ratios time(N)/time(N0)/(N/N0) (1 = linear) and peak(N)/peak(N0) against the smallest N of each kind.

    .venv/bin/python benchmarks/scale.py [--sizes 1k 4k 16k] [--volumes 32 128] [--stages build,load,...]
        [--threads 1] [--json scale.json] [--cache DIR] [--keep-cache]
    .venv/bin/python benchmarks/scale.py --merge 1k.json 4k.json   # one table, ratios across earlier runs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STAGES = ("build", "load", "generate", "segmenter", "per_image", "set")
SEGMENTER = {"epochs": 1}  # the fixed small training budget of the segmenter (Dice and encoder features)
# min_real_dice 0: the benchmark measures cost; a 1-epoch segmenter on a small N may miss the gate's competence bar
PER_IMAGE = (("piqe", {}), ("brain_intensity", {}), ("dice", {"region": "whole_tumour", "segmenter": SEGMENTER, "min_real_dice": 0.0}))
SET = (("fid", {"features": {"segmenter": SEGMENTER}}), ("kid", {"features": {"segmenter": SEGMENTER}}),
       ("coverage", {"features": {"segmenter": SEGMENTER}}), ("copy_fraction", {}), ("ms_ssim_diversity", {}))
COPY_ALPHA_3D = 0.05  # as suites/brain_tumour_3d.yaml: alpha 0.01 needs 99 held-out volumes


def parse_n(text: str) -> int:
    """``1k`` → 1024, ``16k`` → 16384, ``300`` → 300."""
    m = re.fullmatch(r"(\d+)([kK]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected a whole number, optionally with k (×1024)")
    return int(m.group(1)) * (1024 if m.group(2) else 1)


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB."""
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s+(\d+)", fh.read()).group(1)) / 1024  # type: ignore[union-attr]


def measured(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """``fn()`` and its wall seconds, the RSS at its start and its peak RSS (MB)."""
    import gc

    from mriq_validate.arrays import release

    gc.collect()
    release()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS
    start = status_mb("VmRSS")
    t = time.perf_counter()
    out = fn()
    return out, {"s": time.perf_counter() - t, "start_mb": start, "peak_mb": status_mb("VmHWM")}


def child(dims: int, n: int, stages: list[str], cache: str, threads: int, batch_size: str) -> dict[str, Any]:
    """Run the stages for one N in this process; the figures per stage."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from mriq_validate.cache import DiskCache
    from mriq_validate.data import load_data
    from mriq_validate.errors import MriqError
    from mriq_validate.metrics import create_metric
    from mriq_validate.segmenter import SegmenterConfig
    from mriq_validate.session import RunContext, RunSettings

    if dims == 2:
        spec, size = "builtin:mni-tumour", [round(2 * n / 3), n - round(2 * n / 3)]
    else:
        spec, size = "builtin:mni-tumour-3d", n
    settings = RunSettings(model="builtin:noisy", data=spec, device="cpu", seed=0, cache_dir=cache, data_options={"size": size},
                           batch_size=batch_size if batch_size == "auto" else int(batch_size))
    ctx = RunContext(settings, spec)
    out: dict[str, Any] = {"dims": dims, "n": n, "spec": spec, "size": size, "batch_size": batch_size, "stages": {}}

    seconds: dict[str, float] = {}  # per measure, generated and real together

    def measure_all(metrics: tuple[tuple[str, dict[str, Any]], ...]) -> dict[str, float]:
        subject, real = ctx.generated("test")[0], ctx.real("test")
        values: dict[str, Any] = {}
        for name, params in metrics:
            m, t0 = create_metric(name, params), time.perf_counter()
            for sample in (subject, real):
                parts = ([sample.contrast(c, cn) for c, cn in enumerate(ctx.data.contrasts)]
                         if m.channels == "each" and len(ctx.data.contrasts) > 1 else [sample])
                for part in parts:
                    try:
                        prepared = ctx.prepare(m, part)
                        values[f"{name}/{part.origin}"] = round(m.value(prepared, np.arange(m.size(prepared))), 6)
                    except MriqError as exc:  # recorded, and the other measures still run
                        values[f"{name}/{part.origin}"] = f"ERROR {type(exc).__name__}: {exc}"[:300]
            seconds[name] = round(time.perf_counter() - t0, 2)
        return values

    run = {
        "build": lambda: load_data(spec, DiskCache(cache), size=size).digests(),
        "load": lambda: ctx.data.digests(),
        "generate": lambda: len(ctx.generated("test")[0].images),
        "segmenter": lambda: ctx.segmenter(SegmenterConfig.from_params(SEGMENTER, "")).key,
        "per_image": lambda: measure_all(PER_IMAGE),
        "set": lambda: measure_all(SET if dims == 2 else tuple((n, {"alpha": COPY_ALPHA_3D} if n == "copy_fraction" else p)
                                                                 for n, p in SET)),
    }
    try:
        for stage in stages:
            value, fig = measured(run[stage])
            if stage == "per_image" or stage == "set":
                out.setdefault("values", {}).update(value)
                fig["errors"] = sum(isinstance(v, str) for v in value.values())  # measures that could not be computed
                fig["measures_s"] = dict(seconds)
                seconds.clear()
            out["stages"][stage] = fig
            print(f"  {spec} N={n} {stage}: {fig['s']:.1f} s, peak {fig['peak_mb']:.0f} MB {fig.get('measures_s', '')}",
                  file=sys.stderr, flush=True)
    finally:
        ctx.close()
    return out


def table(results: list[dict[str, Any]]) -> str:
    """The figures and growth ratios as a Markdown table (ratios against the smallest N of the same kind)."""
    rows = ["| items | stage | time s | peak RSS MB | time ratio / linear | peak RSS ratio |", "|---|---|---|---|---|---|"]
    base: dict[tuple[int, str], tuple[int, dict[str, float]]] = {}
    for r in sorted(results, key=lambda r: (r["dims"], r["n"])):
        kind = "slices" if r["dims"] == 2 else "volumes"
        for stage, fig in r["stages"].items():
            n0, f0 = base.setdefault((r["dims"], stage), (r["n"], fig))
            tr = fig["s"] / f0["s"] / (r["n"] / n0) if f0["s"] > 0 else float("nan")
            errors = f" ({fig['errors']} measures not computed)" if fig.get("errors") else ""
            rows.append(f"| {r['n']} {kind} | {stage}{errors} | {fig['s']:.1f} | {fig['peak_mb']:.0f} | {tr:.2f} | "
                        f"{fig['peak_mb'] / f0['peak_mb']:.2f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", type=parse_n, default=[1024, 4096, 16384], help="slice counts (2D), e.g. 1k 4k 16k")
    ap.add_argument("--volumes", nargs="*", type=parse_n, default=[32, 128], help="volume counts (3D)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, in order, from {','.join(STAGES)}")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (1: stable numbers on a busy CPU)")
    ap.add_argument("--batch-size", default="auto",
                    help="--mriq-batch-size of the runs (default auto: grows with the split up to its byte budget, then "
                         "stays; a fixed number shows memory that does not grow with N)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--cache", type=Path, default=None, help="parent of the per-N cache folders (default: a temporary folder)")
    ap.add_argument("--keep-cache", action="store_true", help="leave the cache folders in place")
    ap.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                    help="print the table of figures written by earlier runs (--json), ratios across them; run nothing")
    ap.add_argument("--child", nargs=3, metavar=("DIMS", "N", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise SystemExit(f"--stages: unknown {bad}; expected some of {list(STAGES)}")
    if args.merge:
        results = [r for p in args.merge for r in json.loads(p.read_text())["results"]]
        print(table(results))
        return
    if args.child:
        print(json.dumps(child(int(args.child[0]), int(args.child[1]), stages, args.child[2], args.threads, args.batch_size)))
        return

    root = Path(tempfile.mkdtemp(prefix="mriq-scale-", dir=args.cache))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
    results = []
    try:
        for dims, ns in ((2, args.sizes), (3, args.volumes)):
            for n in ns:
                cache = root / f"{dims}d-{n}"
                print(f"{'slices' if dims == 2 else 'volumes'} N={n} (cache {cache})", file=sys.stderr, flush=True)
                cmd = [sys.executable, __file__, "--child", str(dims), str(n), str(cache), "--stages", ",".join(stages),
                       "--threads", str(args.threads), "--batch-size", str(args.batch_size)]
                done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
                if done.returncode != 0:
                    print(f"N={n}: child failed with exit code {done.returncode}", file=sys.stderr)
                    continue
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                if not args.keep_cache:
                    shutil.rmtree(cache, ignore_errors=True)
    finally:
        if not args.keep_cache:
            shutil.rmtree(root, ignore_errors=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "segmenter": SEGMENTER, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
