"""Lesion-wise Dice and HD95 against the official BraTS evaluations, where they are at hand, and their cost.

    .venv/bin/python benchmarks/lesionwise_reference.py [--cases 20] [--seed 0] [--brats2023-repo PATH]

The official code is a reference, never a dependency (neither is installed by the project):

* BraTS 2023 (https://github.com/rachitsaluja/BraTS-2023-Metrics, ``metrics.py``, ``get_LesionWiseResults``; the
  challenge platform ran commit 43c9052). Give a local clone with ``--brats2023-repo`` or ``$MRIQ_BRATS2023_METRICS``;
  it runs in the interpreter ``--brats2023-python`` / ``$MRIQ_BRATS2023_PYTHON`` (default: this one), which needs
  ``nibabel``, ``cc3d`` (connected-components-3d) and ``pandas``. Random 3D label volumes (labels 1-3, blobs of
  several sizes, 1 or 1.5 mm voxels, every challenge's settings) are written as NIfTI and scored by it and by
  :func:`mriq_validate.metrics.functional.lesionwise.lesionwise_case`, region by region (WT, TC, ET); the scores must
  agree to 1e-6. The 2023 code was written for NumPy 1.24 and pandas 1.3 (its requirements.txt); on newer versions the
  child process supplies what they removed (``DataFrame.append``, ``np.Inf``, and the old answer to comparing a table
  column of arrays with inf), which changes nothing on the old versions.
* BraTS 2025 on (``brats-evaluation`` on PyPI, AGPL, https://github.com/BraTS/BraTS_evaluation, built on panoptica),
  run in the interpreter ``--panoptica-python`` / ``$MRIQ_PANOPTICA_PYTHON`` (default: this one): a different
  definition (one-to-one matching, mean Dice over matched lesions only, no dilation). On cases where the
  definitions must coincide (box lesions far apart, each predicted box overlapping at most one lesion or none within
  reach) BraTS 2023's lesion-wise Dice equals panoptica's ``sq_dsc · tp / (tp + fn + fp)`` and the counts agree.

Without either, the script says so and only times the lesion-wise scores on the embedded cohort's test slices
(segmenter-free: its masks against a morphologically perturbed copy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from mriq_validate.metrics.functional.lesionwise import BRATS2023_CHALLENGES, lesionwise_case, lesionwise_dice_hd95

#: BraTS 2023 regions by label value (``get_TissueWiseSeg``): whole tumour, tumour core, enhancing tumour.
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
BRATS2023_ENV = "MRIQ_BRATS2023_METRICS"  # a clone of rachitsaluja/BraTS-2023-Metrics
BRATS2023_PYTHON_ENV = "MRIQ_BRATS2023_PYTHON"  # an interpreter with its requirements (default: the running one)
PANOPTICA_PYTHON_ENV = "MRIQ_PANOPTICA_PYTHON"  # an interpreter with brats-evaluation (default: the running one)


def has_modules(python: str, *modules: str) -> bool:
    """Whether the interpreter ``python`` imports all of ``modules``."""
    code = "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))"
    return subprocess.run([python, "-c", code, *modules], capture_output=True).returncode == 0


# ------------------------------------------------------------------------------------------------ cases
def random_label_volume(rng: np.random.Generator, shape: tuple[int, ...] = (40, 44, 36)) -> np.ndarray:
    """A label volume (0-3) of a few tumours (oedema shell around a core of necrosis and enhancement) and stray blobs of
    every size, so that merging by dilation, the volume threshold and false positives all occur."""
    labels = np.zeros(shape, np.uint8)
    grid = np.indices(shape).astype(float)
    for _ in range(int(rng.integers(0, 4))):
        centre = np.array([rng.uniform(4, n - 4) for n in shape])
        radius = rng.uniform(1.5, 7.0)
        r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
        labels[r < radius * 1.6] = 2
        labels[r < radius] = 3
        labels[(r < radius * 0.5) & (rng.random(shape) < 0.8)] = 1
    for _ in range(int(rng.integers(0, 6))):  # small stray lesions, some below any threshold
        corner = [int(rng.integers(0, n - 3)) for n in shape]
        size = [int(rng.integers(1, 4)) for _ in shape]
        labels[tuple(slice(c, c + s) for c, s in zip(corner, size))] = int(rng.integers(1, 4))
    return labels


def perturbed(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """A plausible prediction of ``labels``: shifted, eroded or dilated by a voxel, with some lesions dropped, spurious
    blobs added, a bridge now and then from one lesion to another (one predicted component reaching two lesions) and
    labels swapped here and there."""
    out = np.roll(labels, tuple(int(v) for v in rng.integers(-1, 2, labels.ndim)), axis=tuple(range(labels.ndim)))
    tissue = out > 0
    if rng.random() < 0.5:
        grown = ndimage.binary_dilation(tissue)
        out[grown & ~tissue] = 2
    else:
        out[tissue & ~ndimage.binary_erosion(tissue)] = 0
    cc, n = ndimage.label(out > 0)
    if n >= 2 and rng.random() < 0.5:
        a, b = (np.argwhere(cc == k)[0] for k in rng.choice(np.arange(1, n + 1), 2, replace=False))
        for f in np.linspace(0.0, 1.0, 64):
            out[tuple(np.round(a + f * (b - a)).astype(int))] = 3
    for k in range(1, n + 1):
        if rng.random() < 0.2:
            out[cc == k] = 0
    for _ in range(int(rng.integers(0, 3))):
        corner = [int(rng.integers(0, s - 4)) for s in labels.shape]
        out[tuple(slice(c, c + int(rng.integers(1, 5))) for c in corner)] = int(rng.integers(1, 4))
    swap = (rng.random(labels.shape) < 0.01) & (out > 0)
    out[swap] = rng.integers(1, 4, int(swap.sum()))
    return out.astype(np.uint8)


def separated_boxes(rng: np.random.Generator, shape: tuple[int, int, int] = (48, 48, 48)) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) label volumes (label 3 only) of boxes on a coarse grid, cells 16 voxels apart: each reference
    box is found (overlapping predicted box), missed, or absent; some cells hold a predicted box alone (false positive).
    Every box is > 50 voxels and at least 8 voxels from other cells, so dilation merges and matches nothing across
    cells, and the 2023 and panoptica definitions coincide."""
    pred, ref = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    for cell in np.ndindex(*(s // 16 for s in shape)):
        base = [16 * c + 4 for c in cell]
        what = rng.choice(["hit", "miss", "false_positive", "empty"], p=[0.45, 0.2, 0.15, 0.2])
        size = [int(rng.integers(4, 8)) for _ in shape]
        box = tuple(slice(b, b + s) for b, s in zip(base, size))
        if what in ("hit", "miss"):
            ref[box] = 3
        if what == "hit":
            pred[tuple(slice(b + int(rng.integers(0, 2)), b + s + int(rng.integers(-1, 1))) for b, s in zip(base, size))] = 3
        if what == "false_positive":
            pred[box] = 3
    return pred, ref


# ------------------------------------------------------------------------------------------------ scorers
def our_scores(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...],
               challenge: str = "BraTS-GLI") -> dict[str, tuple[float, float]]:
    """Our BraTS 2023 lesion-wise (Dice, HD95) per region of two label volumes."""
    params = BRATS2023_CHALLENGES[challenge]
    out = {}
    for name, values in REGIONS.items():
        case = lesionwise_case(np.isin(pred, values), np.isin(ref, values), spacing, dilation=params.dilation,
                               volume_threshold=params.volume_threshold)
        out[name] = (case.score_dice, case.score_hd95)
    return out


#: Runs the official BraTS 2023 ``get_LesionWiseResults`` in its own interpreter: argv = clone, JSON list of
#: [prediction file, reference file, challenge]; prints a JSON list of {region: [Dice, HD95]}. What pandas 2 and NumPy 2
#: removed and the 2023 code uses is supplied where missing; on its requirements.txt versions nothing changes.
_RUNNER = r"""
import importlib.util, json, os, sys
import numpy as np, pandas as pd
repo, jobs = sys.argv[1], json.loads(sys.argv[2])
if not hasattr(pd.DataFrame, "append"):  # removed in pandas 2
    pd.DataFrame.append = lambda self, other, ignore_index=False: pd.concat([self, other], ignore_index=ignore_index)
for name, value in (("Inf", np.inf), ("NaN", np.nan)):  # removed in NumPy 2
    if name not in np.__dict__:
        setattr(np, name, value)
# The code's DataFrame.replace(np.inf, 374) also meets a column holding arrays (matched component ids). On its
# requirements.txt versions (NumPy 1.24, pandas 1.3.4) comparing that column with inf fails quietly and the column is
# left alone; NumPy 2 raises, and pandas 1.5 chokes on the failed comparison. Replace column by column, and leave a
# column alone when its comparison fails, as those versions do.
original = pd.DataFrame.replace
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
script = os.path.join(repo, "metrics.py" if os.path.exists(os.path.join(repo, "metrics.py")) else "eval.py")
spec = importlib.util.spec_from_file_location("brats2023_official_metrics", script)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
out = []
for pred, ref, challenge in jobs:
    rows = module.get_LesionWiseResults(pred, ref, challenge).set_index("Labels")
    out.append({k: [float(rows.loc[k, "LesionWise_Score_Dice"]), float(rows.loc[k, "LesionWise_Score_HD95"])] for k in ("WT", "TC", "ET")})
print(json.dumps(out))
"""


def official_brats2023_scores(repo: Path, cases: list[tuple[np.ndarray, np.ndarray, tuple[float, ...], str]],
                              python: str = sys.executable) -> list[dict[str, tuple[float, float]]]:
    """The official BraTS 2023 ``get_LesionWiseResults`` (Dice, HD95) per region for each (prediction, reference,
    spacing, challenge) case: label volumes written as NIfTI with that voxel size, scored by the clone ``repo``
    (rachitsaluja/BraTS-2023-Metrics) in the interpreter ``python``, which needs nibabel, cc3d and pandas."""
    import nibabel as nib

    if not (repo / "surface_distance").is_dir() or not ((repo / "metrics.py").exists() or (repo / "eval.py").exists()):
        raise FileNotFoundError(f"{repo} is not a clone of rachitsaluja/BraTS-2023-Metrics: expected metrics.py (or eval.py) "
                                f"and surface_distance/")
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for i, (pred, ref, spacing, challenge) in enumerate(cases):
            files = [os.path.join(tmp, f"{i}-{kind}.nii.gz") for kind in ("pred", "ref")]
            for path, labels in zip(files, (pred, ref)):
                nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.diag([*spacing, 1.0])), path)
            jobs.append([*files, challenge])
        done = subprocess.run([python, "-c", _RUNNER, str(repo), json.dumps(jobs)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the official BraTS 2023 code failed ({python}):\n{done.stderr[-3000:]}")
    return [{k: (v[0], v[1]) for k, v in row.items()} for row in json.loads(done.stdout.strip().splitlines()[-1])]


#: Runs the BraTS 2025+ evaluation in its own interpreter: argv = JSON list of [prediction .npy, reference .npy,
#: spacing]; prints a JSON list of {region: {sq_dsc, tp, fp, fn}} (brats_evaluation's bundled ``gli`` config).
_PANOPTICA_RUNNER = r"""
import json, sys
import numpy as np
from brats_evaluation import config_path
from panoptica import Panoptica_Evaluator
evaluator = Panoptica_Evaluator.load_from_config(str(config_path("gli")))
out = []
for pred, ref, spacing in json.loads(sys.argv[1]):
    results = evaluator.evaluate(np.load(pred), np.load(ref), voxelspacing=tuple(spacing), verbose=False)
    out.append({k: {m: float(getattr(results[k.lower()], m)) for m in ("sq_dsc", "tp", "fp", "fn")} for k in ("WT", "TC", "ET")})
print(json.dumps(out))
"""


def panoptica_scores(cases: list[tuple[np.ndarray, np.ndarray, tuple[float, ...]]],
                     python: str = sys.executable) -> list[dict[str, dict[str, float]]]:
    """The BraTS 2025+ evaluation (``brats_evaluation``'s bundled ``gli`` panoptica config, run in the interpreter
    ``python``) per region of each (prediction, reference, spacing) label-volume pair: ``sq_dsc``, ``tp``, ``fp``, ``fn``."""
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for i, (pred, ref, spacing) in enumerate(cases):
            files = [os.path.join(tmp, f"{i}-{kind}.npy") for kind in ("pred", "ref")]
            np.save(files[0], pred.astype(np.uint8))
            np.save(files[1], ref.astype(np.uint8))
            jobs.append([*files, list(spacing)])
        done = subprocess.run([python, "-c", _PANOPTICA_RUNNER, json.dumps(jobs)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the BraTS 2025+ evaluation failed ({python}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def brats2023_from_panoptica(p: dict[str, float]) -> float:
    """BraTS 2023's lesion-wise Dice from panoptica's numbers, valid where the definitions coincide: the sum of matched
    Dice (``sq_dsc · tp``) over all lesions and false positives; 1 when there are none."""
    n = p["tp"] + p["fn"] + p["fp"]
    return 1.0 if n == 0 else (p["sq_dsc"] * p["tp"] if p["tp"] else 0.0) / n


# ------------------------------------------------------------------------------------------------ runs
def random_cases(cases: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, tuple[float, ...], str]]:
    """``cases`` (prediction, reference, spacing, challenge) label volumes: every challenge in turn, 1 mm and anisotropic
    voxels, one prediction in ten empty."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(cases):
        ref = random_label_volume(rng)
        pred = perturbed(rng, ref) if rng.random() < 0.9 else np.zeros_like(ref)
        spacing = (1.0, 1.0, 1.0) if i % 2 == 0 else (1.5, 1.0, 1.5)
        out.append((pred, ref, spacing, list(BRATS2023_CHALLENGES)[i % len(BRATS2023_CHALLENGES)]))
    return out


def compare_brats2023(repo: Path, cases: int, seed: int, python: str = sys.executable) -> float:
    """Largest absolute difference between ours and the official 2023 scores over ``cases`` random cases."""
    todo = random_cases(cases, seed)
    worst = 0.0
    for i, ((pred, ref, spacing, challenge), theirs) in enumerate(zip(todo, official_brats2023_scores(repo, todo, python))):
        ours = our_scores(pred, ref, spacing, challenge)
        for region in REGIONS:
            diff = max(abs(a - b) for a, b in zip(ours[region], theirs[region]))
            worst = max(worst, diff)
            if diff > 1e-6:
                print(f"  case {i} {challenge} {region}: ours {ours[region]} official {theirs[region]}")
    return worst


def compare_panoptica(cases: int, seed: int, python: str = sys.executable) -> float:
    """Largest difference between our 2023 Dice and the one implied by panoptica on separated boxes (1 when the lesion
    counts differ)."""
    rng = np.random.default_rng(seed)
    todo = [(*separated_boxes(rng), (1.0, 1.0, 1.0)) for _ in range(cases)]
    worst = 0.0
    for i, ((pred, ref, spacing), theirs) in enumerate(zip(todo, panoptica_scores(todo, python))):
        case = lesionwise_case(pred == 3, ref == 3, spacing)
        counts = (case.true_positives, case.false_positives, case.false_negatives)
        if counts != (theirs["ET"]["tp"], theirs["ET"]["fp"], theirs["ET"]["fn"]):
            print(f"  case {i}: counts (tp, fp, fn) ours {counts}, panoptica {theirs['ET']}")
            worst = max(worst, 1.0)
        worst = max(worst, abs(case.score_dice - brats2023_from_panoptica(theirs["ET"])))
    return worst


def time_slices(repeats: int = 3) -> float:
    """Milliseconds per 128×128 slice for Dice and HD95 together, on the embedded cohort's test masks against a copy with
    each slice's lesions dilated or eroded by one pixel."""
    from mriq_validate.cache import DiskCache, default_cache_dir
    from mriq_validate.data import load_data

    data = load_data("builtin:mni-tumour", DiskCache(default_cache_dir()))
    ref = data.region_mask(data.test.masks, "whole_tumour").numpy()
    pred = np.stack([ndimage.binary_dilation(m[0])[None] if i % 2 else ndimage.binary_erosion(m[0])[None] for i, m in enumerate(ref)])
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        lesionwise_dice_hd95(pred, ref, tuple(data.spacing_mm))
        best = min(best, time.perf_counter() - t)
    return 1000 * best / len(ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--brats2023-repo", type=Path, default=os.environ.get(BRATS2023_ENV) or None)
    parser.add_argument("--brats2023-python", default=os.environ.get(BRATS2023_PYTHON_ENV) or sys.executable,
                        help="interpreter with nibabel, cc3d and pandas to run the official code in (default: this one)")
    parser.add_argument("--panoptica-python", default=os.environ.get(PANOPTICA_PYTHON_ENV) or sys.executable,
                        help="interpreter with brats-evaluation (AGPL) to run the BraTS 2025+ evaluation in (default: this one)")
    args = parser.parse_args()
    needs = (f"needs a clone of https://github.com/rachitsaluja/BraTS-2023-Metrics (--brats2023-repo or ${BRATS2023_ENV}) "
             "and an interpreter with nibabel, cc3d and pandas")
    if args.brats2023_repo is None:
        print(f"BraTS 2023 official code: not given; skipped (the comparison {needs})")
    elif not (args.brats2023_repo / "metrics.py").is_file():
        print(f"BraTS 2023 official code: {args.brats2023_repo} has no metrics.py; skipped (the comparison {needs})")
    else:
        print(f"BraTS 2023 official code ({args.brats2023_repo}), {args.cases} random cases × 3 regions: "
              f"largest |ours - official| = {compare_brats2023(args.brats2023_repo, args.cases, args.seed, args.brats2023_python):.3g}")
    if not has_modules(args.panoptica_python, "brats_evaluation"):
        print(f"BraTS 2025+ evaluation (brats-evaluation, panoptica): not importable by {args.panoptica_python}; skipped "
              f"(the comparison needs brats-evaluation, AGPL, in that interpreter: --panoptica-python or ${PANOPTICA_PYTHON_ENV})")
    else:
        print(f"BraTS 2025+ evaluation (panoptica), {args.cases} separated-box cases: largest |ours - sq_dsc·tp/(tp+fn+fp)| = "
              f"{compare_panoptica(args.cases, args.seed, args.panoptica_python):.3g}")
    print(f"cost: {time_slices():.2f} ms per 128×128 slice (Dice and HD95 together, whole tumour)")


if __name__ == "__main__":
    main()
