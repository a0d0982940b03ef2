"""The shipped tumour suite on synthetic cohorts in the public layouts: loading, decisions and cold/warm times.

Writes one synthetic cohort (``mriq_validate.data.cohort_writer``: MNI-template anatomy, 3D tumours, four contrasts)
in each public layout at the real BraTS geometry (240×240×155 at 1 mm, LPS affines as BraTS stores them), checks that
every layout loads to the same slices, then runs ``pytest suites/brain_tumour.yaml --mriq-data
<folder>`` with each model and prints the decision, the exit status, the errors and the wall time of each run. The
first run of a cohort is cold (data preprocessed, segmenters trained); later runs on the same slices are warm.

    .venv/bin/python benchmarks/cohort_layouts.py [--cases 2] [--layouts brats2021 brats2023 msd nnunet]
        [--models builtin:real builtin:tumour-eraser] [--workdir /tmp/mriq-layouts] [--cache <dir>]

By default (``make bench``) it writes 2 cases per layout and checks the loading only (no ``--models``: no gate run);
the README's figures are ``--cases 20 --models builtin:real builtin:tumour-eraser`` (``make bench-long``; hours:
builtin:real alone took 23.6 min cold on the 20-case BraTS 2023 cohort on 2 CPU cores). The cache defaults to a fresh
folder inside ``--workdir`` so that the first run is really cold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2, help="cases per layout (the README's figures: 20)")
    ap.add_argument("--layouts", nargs="+", default=["brats2021", "brats2023", "msd", "nnunet"])
    ap.add_argument("--models", nargs="*", default=[], help="models to gate on each cohort, e.g. builtin:real builtin:tumour-eraser "
                                                            "(default none: the loading check only)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mriq-layouts"))
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    from mriq_validate.cache import DiskCache
    from mriq_validate.data import load_data
    from mriq_validate.data.cohort_writer import write_cohort
    from mriq_validate.suite import load_suite

    args.workdir.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache or args.workdir / "cache"
    options = load_suite(ROOT / "suites" / "brain_tumour.yaml").data.options_for("folder")
    rows = []
    digests = {}
    for layout in args.layouts:
        folder = args.workdir / f"{layout}-{args.cases}"
        t = time.perf_counter()
        if not folder.exists():
            write_cohort(folder, layout, args.cases, seed=args.seed, orientation="LPS")
        t_write = time.perf_counter() - t
        t = time.perf_counter()
        data = load_data(str(folder), DiskCache(cache_dir), **options)
        t_load = time.perf_counter() - t
        from mriq_validate.cache import content_hash

        digests[layout] = sorted(content_hash(s.images[i], s.masks[i]) for s in (data.train, data.test) for i in range(len(s)))
        print(f"{layout}: wrote {args.cases} cases in {t_write:.1f} s; loaded {len(data.train)} train + {len(data.test)} test slices "
              f"{tuple(data.image_shape)} contrasts {list(data.contrasts)} in {t_load:.1f} s "
              f"(layout {data.provenance.get('layout')}, labels from {data.provenance.get('label_meaning_source')})", flush=True)
        for model in args.models:
            report = args.workdir / f"report-{layout}-{model.split(':')[-1]}"
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "suites" / "brain_tumour.yaml"),
                   f"--mriq-data={folder}", f"--mriq-model={model}", f"--mriq-cache={cache_dir}", f"--mriq-report={report}",
                   "--rootdir", str(args.workdir)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=args.workdir, capture_output=True, text=True)
            wall = time.perf_counter() - t
            rep = json.loads((report / "report.json").read_text()) if (report / "report.json").exists() else {}
            results = rep.get("results", [])
            errors = [r["criterion_id"] for r in results if r.get("verdict") == "ERROR"]
            failed = [r["criterion_id"] for r in results if r.get("verdict") == "FAIL" and r.get("gate")]
            status = rep.get("decision", {}).get("status", "no report")
            rows.append((layout, model, status, proc.returncode, wall, errors, failed))
            print(f"  {model}: {status} (exit {proc.returncode}) in {wall:.0f} s; errors {errors or 'none'}; gating fails {failed or 'none'}",
                  flush=True)
            if errors or status == "no report":
                print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n")
    same = len({json.dumps(d, sort_keys=True) for d in digests.values()}) == 1
    print(f"\nthe same slices from every layout: {same} (the train/test split follows each layout's case ids)")
    print("\n| layout | model | decision | exit | wall (s) | errors | gating failures |\n|---|---|---|---|---|---|---|")
    for layout, model, status, rc, wall, errors, failed in rows:
        print(f"| {layout} | {model} | {status} | {rc} | {wall:.0f} | {', '.join(errors) or '-'} | {', '.join(failed) or '-'} |")


if __name__ == "__main__":
    main()
