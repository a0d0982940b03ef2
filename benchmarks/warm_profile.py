"""Warm runs: where the time of a shipped suite goes when nothing changed, with the results cache off and on.

Runs the suite against ``builtin:real`` three times in fresh processes on one cache: once to fill it (data,
segmenters, features, kept results), then warm with ``MRIQ_RESULT_CACHE=0`` (every measure computed again: what a warm
run cost before results were kept) and warm with it on, each under ``cProfile``; prints each warm run's wall time and
the cumulative seconds of its stages (imports, reference data, segmenters, measures' prepare, resampling, the report
and its figures), and the ratio of the two.

    .venv/bin/python benchmarks/warm_profile.py [--suite suites/vessels.yaml] [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: stage → the function whose cumulative time it is (file suffix, function name)
STAGES = {
    "criteria (all)": ("mriq_validate/criteria.py", "evaluate"),
    "measures: prepare": ("mriq_validate/session.py", "prepare"),
    "measures: resampling": ("mriq_validate/stats.py", "resample_metric"),
    "segmenters (load)": ("mriq_validate/segmenter.py", "get_segmenter"),
    "reference data": ("mriq_validate/data/__init__.py", "load_data"),
    "report (json + html)": ("mriq_validate/report.py", "write_report"),
    "perturbation figure": ("mriq_validate/run_state.py", "_write_perturbation_figures"),
}


def stage_seconds(profile: Path) -> dict[str, float]:
    """Cumulative seconds of each of :data:`STAGES` in a ``cProfile`` output (0 where the function never ran)."""
    stats = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    out = {name: 0.0 for name in STAGES}
    for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.items():
        for name, (suffix, fn) in STAGES.items():
            if func == fn and file.endswith(suffix):
                out[name] = max(out[name], ct)
    return out


def run(suite: str, cache: Path, report: Path, profile: Path | None, keep_results: bool) -> float:
    """One gate run in a fresh process; its wall time."""
    env = {**os.environ, "MRIQ_CACHE_DIR": str(cache), "MRIQ_RESULT_CACHE": "1" if keep_results else "0"}
    prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
    cmd = [sys.executable, *prof, "-m", "pytest", suite, "--mriq-model", "builtin:real", f"--mriq-report={report}", "-q",
           "-p", "no:cacheprovider"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="suites/vessels.yaml", help="make bench: the vessel suite; docs/benchmarks.md: brain_tumour.yaml")
    ap.add_argument("--cache", type=Path, default=None, help="cache folder (default: the checkout's .mriq-cache)")
    args = ap.parse_args()
    cache = args.cache or Path(os.environ.get("MRIQ_CACHE_DIR", ROOT / ".mriq-cache"))
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        fill = run(args.suite, cache, t / "fill", None, keep_results=True)
        print(f"{args.suite} against builtin:real, cache {cache}: filling run {fill:.1f} s")
        walls, stages = {}, {}
        for label, keep in (("results computed again", False), ("results kept", True)):
            walls[label] = run(args.suite, cache, t / label.replace(" ", "-"), t / f"{keep}.prof", keep)
            stages[label] = stage_seconds(t / f"{keep}.prof")
    labels = list(walls)
    print(f"{'warm run':<24}" + "".join(f"{label:>26}" for label in labels))
    print(f"{'wall (s)':<24}" + "".join(f"{walls[label]:>26.1f}" for label in labels))
    for name in STAGES:
        print(f"{name:<24}" + "".join(f"{stages[label][name]:>26.1f}" for label in labels))
    print(f"ratio (computed again / kept): {walls[labels[0]] / walls[labels[1]]:.2f}x")


if __name__ == "__main__":
    main()
