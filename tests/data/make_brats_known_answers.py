"""Regenerate ``tests/data/brats2023_known_answers.json``: the official BraTS 2023 lesion-wise scores of the random label
volumes of ``benchmarks/lesionwise_reference.py`` (``random_cases``), which ``tests/test_lesionwise.py`` compares
:func:`mriq_validate.metrics.functional.lesionwise.lesionwise_case` against, so that the comparison runs without the
official code at hand.

    .venv/bin/python tests/data/make_brats_known_answers.py PATH/TO/BraTS-2023-Metrics [--python PY] [--cases 10] [--seed 0]

``PATH`` is a checkout of https://github.com/rachitsaluja/BraTS-2023-Metrics (the challenge platform ran commit
43c9052). Its ``metrics.py`` carries no licence, so it is run from the checkout, never copied into this repository; its
``surface_distance/`` (DeepMind's surface-distance, Apache 2.0) is vendored under ``tests/data/brats2023_metrics/``.

Two ways to run the official code, in the interpreter ``--python`` (default: this one):

* ``official`` (used when that interpreter imports nibabel, cc3d and pandas): ``metrics.get_LesionWiseResults`` whole,
  as the challenge ran it, with what NumPy 2 and pandas 2 removed supplied where missing (as
  ``benchmarks/lesionwise_reference.py`` does; nothing changes on the versions of its requirements.txt).
* ``scipy-cc3d`` (otherwise, or with ``--mode scipy-cc3d``): ``metrics.get_LesionWiseScores`` unchanged (the labelling,
  the merging by dilation, the matching, the per-lesion Dice and HD95), with ``cc3d.connected_components(x,
  connectivity=26)`` supplied by ``scipy.ndimage.label`` with the full 3×3×3 structure (the same components: 26-
  connectivity; only the numbering may differ, which no score depends on) and ``pandas`` not needed (that function does
  not use it); the per-region score is then the few lines of ``get_LesionWiseResults`` that make it, transcribed below
  (lesions of volume <= the challenge's threshold left out, a missed lesion's HD95 inf read as 374, each false
  positive scored 0 and 374, no lesion and no false positive 1 and 0).

The JSON records which way produced it, the checkout's commit, and each case's SHA-256 of its prediction and
reference volumes, so that a change to ``random_cases`` shows as a stale fixture rather than as a metric disagreement.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "brats2023_known_answers.json"

RUNNER = r"""
import importlib.util, json, math, os, sys, types
import numpy as np
repo, mode, jobs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
for name, value in (("Inf", np.inf), ("NaN", np.nan)):  # removed in NumPy 2; used by metrics.py and surface_distance
    if name not in np.__dict__:
        setattr(np, name, value)
if mode == "scipy-cc3d":
    from scipy import ndimage
    cc3d = types.ModuleType("cc3d")
    def connected_components(labels, connectivity=26):
        if connectivity != 26:
            raise ValueError(connectivity)
        return ndimage.label(np.asarray(labels), structure=np.ones((3, 3, 3), bool))[0]
    cc3d.connected_components = connected_components
    sys.modules["cc3d"] = cc3d
    try:
        import pandas  # noqa: F401
    except ImportError:
        sys.modules["pandas"] = types.ModuleType("pandas")  # imported by metrics.py, unused by get_LesionWiseScores
else:
    import pandas as pd
    if not hasattr(pd.DataFrame, "append"):  # removed in pandas 2
        pd.DataFrame.append = lambda self, other, ignore_index=False: pd.concat([self, other], ignore_index=ignore_index)
    original = pd.DataFrame.replace  # as benchmarks/lesionwise_reference.py: leave the column of arrays alone
    def replace(self, *args, inplace=False, **kwargs):
        out = self if inplace else self.copy()
        for column in list(out.columns):
            try:
                out[column] = original(out[[column]], *args, **kwargs)[column]
            except (ValueError, TypeError, AttributeError):
                pass
        return None if inplace else out
    pd.DataFrame.replace = replace
sys.path.insert(0, repo)
spec = importlib.util.spec_from_file_location("brats2023_official_metrics", os.path.join(repo, "metrics.py"))
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
SETTINGS = {"BraTS-GLI": (3, 50), "BraTS-SSA": (3, 50), "BraTS-MEN": (1, 50), "BraTS-PED": (3, 50), "BraTS-MET": (1, 2)}
out = []
for pred, ref, challenge in jobs:
    row = {}
    if mode == "official":
        rows = module.get_LesionWiseResults(pred, ref, challenge).set_index("Labels")
        for k in ("WT", "TC", "ET"):
            row[k] = {"dice": float(rows.loc[k, "LesionWise_Score_Dice"]), "hd95": float(rows.loc[k, "LesionWise_Score_HD95"]),
                      "tp": int(rows.loc[k, "Num_TP"]), "fp": int(rows.loc[k, "Num_FP"]), "fn": int(rows.loc[k, "Num_FN"])}
    else:
        dilation, threshold = SETTINGS[challenge]
        for k in ("WT", "TC", "ET"):
            tp, fn, fp, gt_tp, pairs = module.get_LesionWiseScores(pred, ref, k, dilation)[:5]
            # get_LesionWiseResults, transcribed: pairs are (matched ids, lesion number, volume, Dice, HD95)
            pairs = sorted(pairs, key=lambda p: p[1])
            kept = [p for p in pairs if p[2] > threshold]
            n = len(kept) + len(fp)
            dice = float(np.sum([p[3] for p in kept]) / n) if n else 1.0
            hd95 = float((np.sum([374 if math.isinf(p[4]) else p[4] for p in kept]) + len(fp) * 374) / n) if n else 0.0
            row[k] = {"dice": dice, "hd95": hd95,
                      "tp": len(gt_tp) - sum(1 for p in pairs if len(p[0]) and p[2] <= threshold), "fp": len(fp),
                      "fn": len(fn) - sum(1 for p in pairs if not len(p[0]) and p[2] <= threshold)}
    out.append(row)
print(json.dumps(out))
"""


MODES = {
    "official": "metrics.get_LesionWiseResults of the checkout run whole, with nibabel, cc3d and pandas installed (what NumPy 2 "
                "and pandas 2 removed supplied where missing).",
    "scipy-cc3d": "metrics.get_LesionWiseScores of the checkout run unchanged, with cc3d.connected_components(x, connectivity=26) "
                  "supplied by scipy.ndimage.label with the full 3x3x3 structure (cc3d and pandas were not installed where it "
                  "was made); the per-region scores and counts from its output by the lines of get_LesionWiseResults, "
                  "transcribed in make_brats_known_answers.py.",
}


def reference_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("lesionwise_reference", ROOT / "benchmarks" / "lesionwise_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digest(labels: np.ndarray) -> str:
    """SHA-256 of a label volume as C-ordered uint8 bytes."""
    return hashlib.sha256(np.ascontiguousarray(labels, np.uint8).tobytes()).hexdigest()


def commit_of(repo: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo", type=Path, help="checkout of rachitsaluja/BraTS-2023-Metrics")
    parser.add_argument("--python", default=sys.executable, help="interpreter to run the official code in")
    parser.add_argument("--mode", choices=("auto", "official", "scipy-cc3d"), default="auto")
    parser.add_argument("--cases", type=int, default=10, help="10: every challenge at 1 mm and at 1.5×1×1.5 mm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import nibabel as nib

    ref = reference_module()
    mode = args.mode
    if mode == "auto":
        mode = "official" if ref.has_modules(args.python, "nibabel", "cc3d", "pandas") else "scipy-cc3d"
    cases = ref.random_cases(args.cases, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for i, (pred, target, spacing, challenge) in enumerate(cases):
            files = [os.path.join(tmp, f"{i}-{kind}.nii.gz") for kind in ("pred", "ref")]
            for path, labels in zip(files, (pred, target)):
                nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.diag([*spacing, 1.0])), path)
            jobs.append([*files, challenge])
        done = subprocess.run([args.python, "-c", RUNNER, str(args.repo), mode, json.dumps(jobs)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the official BraTS 2023 code failed:\n{done.stderr[-3000:]}")
    scores = json.loads(done.stdout.strip().splitlines()[-1])
    fixture = {
        "about": "Official BraTS 2023 lesion-wise scores (rachitsaluja/BraTS-2023-Metrics) of benchmarks/lesionwise_reference.py "
                 "random_cases(cases, seed), region by region; made by tests/data/make_brats_known_answers.py (see its "
                 "docstring for the two modes). Regenerate with that script; never edit by hand.",
        "source": "https://github.com/rachitsaluja/BraTS-2023-Metrics",
        "commit": commit_of(args.repo),
        "mode": mode,
        "how": MODES[mode],
        "cases": args.cases,
        "seed": args.seed,
        "results": [{"challenge": challenge, "spacing": list(spacing), "shape": list(pred.shape), "pred_sha256": digest(pred),
                     "ref_sha256": digest(target), "regions": row}
                    for (pred, target, spacing, challenge), row in zip(cases, scores)],
    }
    args.out.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"{args.out}: {args.cases} cases, mode {mode}, commit {fixture['commit']}")


if __name__ == "__main__":
    main()
