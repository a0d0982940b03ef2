"""How time and peak memory grow with the cohort: the gate's stages on enlarged embedded data.

The template generator is asked for more cases (data option ``size``): N slices of 4×128×128 (``builtin:mni-tumour``,
train:test 2:1 as the embedded 256:128; ``--slice-size`` resamples them, e.g. to 192×192) and N volumes of 4×64×72×64
(``builtin:mni-tumour-3d``, split by case). Each N runs in a fresh subprocess with its own cache folder (a temporary
one, removed at the end) through the public APIs a gate run uses (``RunContext``, ``create_metric``, ``prepare`` and
``value``, and for a suite ``criteria.evaluate``), so the figures are those of the gate's own code paths. Stages:

- ``build``: the data synthesised into a cold cache; ``load``: loaded again from the warm cache (SHA-256 check) and
  its digests;
- ``generate``: ``builtin:noisy`` (a stochastic stand-in) generating for the test masks (and the training masks when
  the suite has a train-on-synthetic criterion);
- ``segmenter``: the downstream segmenter trained on the real training split for ``--epochs`` (default 1: a fixed
  small budget, so that training cost is linear in N and the stage stays short; the gate's default budget is in
  ``SegmenterConfig``);
- ``per_image``: PIQE (each contrast), brain_intensity and whole-tumour Dice (that segmenter), on the generated and
  the real test images;
- ``set``: segmenter-encoder features and FID, KID, PRDC coverage; copy_fraction; ms_ssim_diversity;
- ``suite`` (with ``--suite``): every criterion of the suite evaluated as the gate does, each segmenter at ``--epochs``.

Per stage: wall seconds and peak RSS (VmHWM after resetting it by writing 5 to ``/proc/self/clear_refs``, Linux), and
the growth ratios time(N)/time(N0)/(N/N0) (1 = linear) and peak(N)/peak(N0) against the smallest N of each kind.
The defaults (384 slices, no volumes: no growth ratios) are ``make bench``'s; ``make bench-long`` runs the long figures:

    .venv/bin/python benchmarks/scale.py --sizes 1k 4k 16k --volumes 32 128 [--stages build,load,...]
        [--threads 1] [--batch-size 128] [--json scale.json] [--cache DIR] [--keep-cache]
    .venv/bin/python benchmarks/scale.py --sizes 10000 --slice-size 192 --suite mriq_validate/suites/brain_tumour.yaml
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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mriq_validate.cache import DiskCache
    from mriq_validate.data import ReferenceData
    from mriq_validate.session import RunContext

STAGES = ("build", "load", "generate", "segmenter", "per_image", "set", "suite")
DEFAULT_STAGES = STAGES[:-1]  # "suite" runs when --suite is given
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


def resized(data: ReferenceData, side: int, cache: DiskCache) -> ReferenceData:
    """``data``'s slices resampled to ``side``×``side`` (images bilinear, labels nearest; the spacing scaled to keep the
    field of view), written item by item into a cache entry of their own and mapped back as the builtins are."""
    from dataclasses import replace

    import numpy as np
    import torch
    import torch.nn.functional as F

    from mriq_validate.cache import content_hash
    from mriq_validate.data.core import Split, cached_splits, write_splits

    splits = {"train": data.train, "test": data.test}

    def case(split: str, i: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        s = splits[split]
        image = F.interpolate(s.images[i:i + 1].float(), size=(side, side), mode="bilinear", align_corners=False)
        labels = F.interpolate(s.masks[i:i + 1].float(), size=(side, side), mode="nearest")
        return (image[0].clamp(0, 1).numpy(), labels[0, 0].to(torch.int64).numpy(),
                {k: int(v[i]) for k, v in s.covariates.items()})

    key = content_hash(data.name, data.provenance.get("cache_key") or data.digests(), side, "resized/1")
    plan = {name: list(s.ids) for name, s in splits.items()}
    out: dict[str, Split] = cached_splits(cache, "data", f"resized-{side}-{key}", lambda path: write_splits(path, plan, case))
    scale = data.train.images.shape[-1] / side
    return replace(data, train=out["train"], test=out["test"], spacing_mm=tuple(s * scale for s in data.spacing_mm),
                   provenance={**data.provenance, "resampled": f"{side}x{side} (bilinear images, nearest labels)"})


def data_for(dims: int, n: int, cache: str, side: int | None) -> tuple[str, Any, Callable[[], ReferenceData]]:
    """The data spec, its ``size`` option and a loader of the cohort of ``n`` items (slices resampled to ``side``)."""
    from mriq_validate.cache import DiskCache
    from mriq_validate.data import load_data

    if dims == 2:
        spec, size = "builtin:mni-tumour", [round(2 * n / 3), n - round(2 * n / 3)]
    else:
        spec, size = "builtin:mni-tumour-3d", n

    def load() -> ReferenceData:
        data = load_data(spec, DiskCache(cache), size=size)
        return data if side is None or dims != 2 else resized(data, side, DiskCache(cache))
    return spec, size, load


def with_budget(metric: str, params: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
    """``params`` of ``metric`` with the segmenter training ``budget`` (e.g. ``{"epochs": 2}``) set wherever the metric
    trains a segmenter: its ``segmenter`` parameter, or the ``features`` of a learnt (segmenter) extractor."""
    import inspect

    from mriq_validate.metrics import create_metric
    from mriq_validate.metrics.base import METRICS

    if not budget:
        return params
    out = dict(params)
    accepted = inspect.signature(METRICS[metric].__init__).parameters
    if "segmenter" in accepted:
        out["segmenter"] = {**(params.get("segmenter") or {}), **budget}
    features = create_metric(metric, params).config().get("features")
    if "features" in accepted and isinstance(features, dict) and features.get("extractor") == "segmenter":
        feats = dict(params.get("features") or {})
        feats["segmenter"] = {**(feats.get("segmenter") or {}), **budget}
        out["features"] = feats
    return out


def suite_stage(ctx: RunContext, suite: Path, budget: dict[str, Any], deadline: float) -> dict[str, Any]:
    """Every criterion (each sweep level) of ``suite`` evaluated as the gate does (:func:`mriq_validate.criteria.evaluate`),
    with the segmenter ``budget``; per criterion its wall seconds and verdict (``ERROR ...`` when it cannot be evaluated,
    ``skipped`` once ``deadline``, a :func:`time.perf_counter` value, has passed)."""
    from mriq_validate.criteria import evaluate
    from mriq_validate.errors import MriqError
    from mriq_validate.suite import load_suite

    rows: dict[str, Any] = {}
    for crit in load_suite(suite).criteria:
        crit = crit.model_copy(update={"params": with_budget(crit.metric, crit.params, budget)})
        for level in (crit.perturbation.levels() if crit.perturbation else [{}]):
            name = crit.id + "".join(f"[{k}={v}]" for k, v in level.items())
            if time.perf_counter() > deadline:
                rows[name] = {"s": 0.0, "verdict": "skipped (time budget)"}
                continue
            t = time.perf_counter()
            try:
                verdict = evaluate(crit, ctx, level or None).verdict
            except MriqError as exc:  # recorded, and the other criteria still run
                verdict = f"ERROR {type(exc).__name__}: {exc}"[:300]
            rows[name] = {"s": round(time.perf_counter() - t, 3), "verdict": verdict}
            print(f"    {name}: {rows[name]['s']:.1f} s, {verdict[:80]}", file=sys.stderr, flush=True)
    return rows


def child(dims: int, n: int, stages: list[str], cache: str, threads: int, batch_size: str, *, device: str = "cpu",
          side: int | None = None, suite: Path | None = None, budget: dict[str, Any] | None = None,
          deadline: float = float("inf"), on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the stages for one N in this process; the figures per stage. ``side``: 2D slices resampled to side×side;
    ``suite``: the criteria of the ``suite`` stage; ``budget``: the segmenter training budget (default
    :data:`SEGMENTER`); ``on_stage(stage)`` is called before each stage (e.g. to reset a GPU memory peak)."""
    import numpy as np
    import torch

    if device == "cpu":
        torch.set_num_threads(threads)
    from mriq_validate.errors import MriqError
    from mriq_validate.metrics import create_metric
    from mriq_validate.segmenter import SegmenterConfig
    from mriq_validate.session import RunContext, RunSettings

    budget = SEGMENTER if budget is None else budget
    spec, size, load = data_for(dims, n, cache, side)
    settings = RunSettings(model="builtin:noisy", data=spec, device=device, seed=0, cache_dir=cache, data_options={"size": size},
                           batch_size=batch_size if batch_size == "auto" else int(batch_size))
    built: list[RunContext] = []

    def context() -> RunContext:
        if not built:  # created when first needed, so that the build stage starts from a cold cache
            built.append(RunContext(settings, spec, data=load() if side else None))
        return built[0]

    out: dict[str, Any] = {"dims": dims, "n": n, "spec": spec, "size": size, "side": side, "batch_size": batch_size,
                           "device": device, "segmenter": budget, "stages": {}}
    seconds: dict[str, float] = {}  # per measure, generated and real together

    def measure_all(metrics: tuple[tuple[str, dict[str, Any]], ...]) -> dict[str, float]:
        ctx = context()
        subject, real = ctx.generated("test")[0], ctx.real("test")
        values: dict[str, Any] = {}
        for name, params in metrics:
            m, t0 = create_metric(name, with_budget(name, params, budget)), time.perf_counter()
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

    def generate() -> int:
        """The generated sets of the stages that follow: the test masks, and the training masks for a suite with a
        criterion conditioned on them (train-on-synthetic)."""
        from mriq_validate.suite import load_suite

        train = suite is not None and "suite" in stages and any(c.condition_on == "train_masks" for c in load_suite(suite).criteria)
        return sum(len(context().generated(split)[0].images) for split in ("test", "train")[:1 + train])

    run = {
        "build": lambda: load().digests(),
        "load": lambda: context().data.digests(),
        "generate": generate,
        "segmenter": lambda: context().segmenter(SegmenterConfig.from_params(budget, "")).key,
        "per_image": lambda: measure_all(PER_IMAGE),
        "set": lambda: measure_all(SET if dims == 2 else tuple((n, {"alpha": COPY_ALPHA_3D} if n == "copy_fraction" else p)
                                                                 for n, p in SET)),
        "suite": lambda: suite_stage(context(), suite, budget, deadline) if suite else {},
    }
    try:
        for stage in stages:
            if on_stage:
                on_stage(stage)
            value, fig = measured(run[stage])
            if stage in ("per_image", "set"):
                out.setdefault("values", {}).update(value)
                fig["errors"] = sum(isinstance(v, str) for v in value.values())  # measures that could not be computed
                fig["measures_s"] = dict(seconds)
                seconds.clear()
            elif stage == "suite":
                out["criteria"] = value
                fig["errors"] = sum(r["verdict"].startswith("ERROR") for r in value.values())
            elif stage == "generate":
                fig["items"] = value
            out["stages"][stage] = fig
            print(f"  {spec} N={n} {stage}: {fig['s']:.1f} s, peak {fig['peak_mb']:.0f} MB {fig.get('measures_s', '')}",
                  file=sys.stderr, flush=True)
    finally:
        if built:
            built[0].close()
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


def criteria_table(results: list[dict[str, Any]]) -> str:
    """Per criterion of the suite stage: wall seconds and verdict (empty when no run had a suite stage)."""
    rows = [f"| {r['n']} | {name} | {c['s']:.1f} | {c['verdict'][:90]} |" for r in results for name, c in r.get("criteria", {}).items()]
    return "\n".join(["| items | criterion | time s | verdict |", "|---|---|---|---|", *rows]) if rows else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", type=parse_n, default=[384], help="slice counts (2D), e.g. 1k 4k 16k")
    ap.add_argument("--volumes", nargs="*", type=parse_n, default=[], help="volume counts (3D), e.g. 32 128")
    ap.add_argument("--stages", default=None, help=f"comma-separated, in order, from {','.join(STAGES)} (default: all but "
                                                   "suite, and suite too when --suite is given)")
    ap.add_argument("--slice-size", type=int, default=None, help="slices resampled to this side (default: the cohort's 128)")
    ap.add_argument("--suite", type=Path, default=None, help="a suite whose criteria the suite stage evaluates")
    ap.add_argument("--epochs", type=int, default=SEGMENTER["epochs"], help="segmenter training epochs of every measure")
    ap.add_argument("--device", default="cpu")
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
    stages = [s.strip() for s in (args.stages or ",".join(STAGES if args.suite else DEFAULT_STAGES)).split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise SystemExit(f"--stages: unknown {bad}; expected some of {list(STAGES)}")
    if args.merge:
        results = [r for p in args.merge for r in json.loads(p.read_text())["results"]]
        print(table(results))
        return
    budget = {**SEGMENTER, "epochs": args.epochs}
    if args.child:
        print(json.dumps(child(int(args.child[0]), int(args.child[1]), stages, args.child[2], args.threads, args.batch_size,
                               device=args.device, side=args.slice_size, suite=args.suite, budget=budget)))
        return

    root = Path(tempfile.mkdtemp(prefix="mriq-scale-", dir=args.cache))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
    results, failed = [], []
    try:
        for dims, ns in ((2, args.sizes), (3, args.volumes)):
            for n in ns:
                cache = root / f"{dims}d-{n}"
                print(f"{'slices' if dims == 2 else 'volumes'} N={n} (cache {cache})", file=sys.stderr, flush=True)
                cmd = [sys.executable, __file__, "--child", str(dims), str(n), str(cache), "--stages", ",".join(stages),
                       "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--device", args.device,
                       "--epochs", str(args.epochs)]
                cmd += ["--slice-size", str(args.slice_size)] if args.slice_size else []
                cmd += ["--suite", str(args.suite)] if args.suite else []
                done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
                if done.returncode != 0:
                    print(f"N={n}: child failed with exit code {done.returncode}", file=sys.stderr)
                    failed.append(n)
                    continue
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                if not args.keep_cache:
                    shutil.rmtree(cache, ignore_errors=True)
    finally:
        if not args.keep_cache:
            shutil.rmtree(root, ignore_errors=True)
    print(table(results))
    if results and any("criteria" in r for r in results):
        print(criteria_table(results))
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "segmenter": budget, "results": results}, indent=1) + "\n")
    if failed:
        raise SystemExit(f"the runs of N = {failed} failed")


if __name__ == "__main__":
    main()
