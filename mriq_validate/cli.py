"""``mriq-validate``: commands for work that is not a gate (demo, listing what is available, exporting masks)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import pytest

    suites = Path(args.suites)
    if not suites.is_dir():
        print(f"mriq-validate demo: suites folder {suites} not found; run from the repository root or pass --suites DIR", file=sys.stderr)
        return 2
    out = Path(args.out)
    start = time.perf_counter()
    code = pytest.main([str(suites), "--mriq-model", args.model, "--mriq-report", str(out), "-p", "no:cacheprovider", "-q", *args.pytest_args])
    print(f"\nmriq-validate demo: model {args.model} on the embedded data, {time.perf_counter() - start:.1f} s; "
          f"results in {out.resolve()}/ (verdicts.json); pytest exit code {int(code)}")
    return int(code)


def _list(args: argparse.Namespace) -> int:
    from .data.core import BUILTIN_DATASETS, load_data  # noqa: F401
    from .data import mni, vessels  # noqa: F401
    from .metrics.base import METRICS, metric_names
    from .models import BUILTIN_MODELS
    from .perturb.base import REGISTRY, _load_all

    _load_all()
    metric_names()
    print("builtin models (--mriq-model):")
    for name, b in BUILTIN_MODELS.items():
        print(f"  builtin:{name:<15} {b.behaviour}{'  [fit for release]' if b.fit_for_release else ''}")
    print("builtin data (--mriq-data):")
    for name in BUILTIN_DATASETS:
        print(f"  builtin:{name}")
    print("metrics (metric: in a suite):")
    for name, cls in sorted(METRICS.items()):
        print(f"  {name:<22} {'higher' if cls.higher_is_better else 'lower'} is better; {cls.kind}; {cls.summary}")
    print("perturbations (perturbation: {name: ...}):")
    for name, p in sorted(REGISTRY.items()):
        params = ", ".join(f"{q.name}={q.default} [{q.low}, {q.high}]" for q in p.params)
        print(f"  {name:<22} {p.scope:<6} {params}")
    return 0


def _export_masks(args: argparse.Namespace) -> int:
    import numpy as np

    from .cache import DiskCache, default_cache_dir
    from .data import load_data

    data = load_data(args.data, DiskCache(args.cache or default_cache_dir()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for sid, mask in zip(data.test.ids, data.test.masks):
        np.save(out / f"{sid}_seg.npy", mask[0].numpy().astype(np.uint8))
    print(f"wrote {len(data.test)} test masks ({data.image_shape[1]}x{data.image_shape[2]}, labels {data.labels}) to {out}/; "
          f"save your model's image for <id>_seg.npy as <id>.npy (float in [0, 1]) in the same folder, then run "
          f"pytest --mriq-model {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mriq-validate`` console script."""
    parser = argparse.ArgumentParser(prog="mriq-validate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the shipped suites on the embedded data against builtin:real")
    demo.add_argument("--model", default="builtin:real")
    demo.add_argument("--suites", default="suites")
    demo.add_argument("--out", default="mriq-results")
    demo.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    demo.set_defaults(fn=_demo)
    sub.add_parser("list", help="list builtin models, data, metrics and perturbations").set_defaults(fn=_list)
    exp = sub.add_parser("export-masks", help="write the test masks so a model can generate images for them offline")
    exp.add_argument("out")
    exp.add_argument("--data", default="builtin:mni-tumour")
    exp.add_argument("--cache", default=None)
    exp.set_defaults(fn=_export_masks)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
