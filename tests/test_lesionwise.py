"""BraTS 2023 lesion-wise Dice and HD95: hand-built cases whose answers follow from the official rules, an independent
naive port of the official per-case loop compared on random masks, the registered metrics through the metric API, and
the official code's own answers: DeepMind's surface-distance (vendored, Apache 2.0) run here, and the official BraTS 2023
scores of random label volumes as a fixture (tests/data/brats2023_known_answers.json; its metrics.py has no licence, so
it is a reference, never a dependency or a copy). The BraTS 2025+ evaluation (brats-evaluation, AGPL) is compared by
benchmarks/lesionwise_reference.py where it is installed."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from mriq_validate.errors import MetricError
from mriq_validate.metrics import METRICS, Sample, create_metric
from mriq_validate.metrics.downstream import DiceLesionwise, Hd95Lesionwise
from mriq_validate.metrics.functional.downstream import BRATS_EMPTY_HD95_MM, hd95_per_image, surface_hd95
from mriq_validate.metrics.functional.lesionwise import BRATS2023_CHALLENGES, lesionwise_case, lesionwise_dice_hd95

MISS = BRATS_EMPTY_HD95_MM  # 374 mm
ONE_MM_2D, ONE_MM_3D = (1.0, 1.0), (1.0, 1.0, 1.0)


def boxes(shape: tuple[int, ...], *corners_sizes: tuple[tuple[int, ...], tuple[int, ...]]) -> np.ndarray:
    """A boolean mask of ``shape`` with a box per (corner, size)."""
    m = np.zeros(shape, bool)
    for corner, size in corners_sizes:
        m[tuple(slice(c, c + s) for c, s in zip(corner, size))] = True
    return m


DATA = Path(__file__).resolve().parent / "data"
KNOWN_ANSWERS = DATA / "brats2023_known_answers.json"


def digest(labels: np.ndarray) -> str:
    """SHA-256 of a label volume as C-ordered uint8 bytes (as tests/data/make_brats_known_answers.py records it)."""
    return hashlib.sha256(np.ascontiguousarray(labels, np.uint8).tobytes()).hexdigest()


def deepmind_surface_distance() -> Any:
    """DeepMind's surface-distance as vendored under tests/data/brats2023_metrics/, imported under a name of its own."""
    package = DATA / "brats2023_metrics" / "surface_distance"
    spec = importlib.util.spec_from_file_location("brats2023_surface_distance", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its relative imports look the package up by name
    spec.loader.exec_module(module)
    return module


def reference_module() -> Any:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "lesionwise_reference.py"
    spec = importlib.util.spec_from_file_location("lesionwise_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------- known answers, 2D and 3D
LESION_2D, LESION_3D = ((4, 4), (8, 8)), ((4, 4, 4), (6, 6, 6))  # 64 px, 216 voxels: above every BraTS threshold
FAR_2D, FAR_3D = ((28, 28), (3, 3)), ((24, 24, 24), (3, 3, 3))  # far outside any dilation of the lesion


@pytest.mark.parametrize("shape, lesion, spacing", [((40, 40), LESION_2D, ONE_MM_2D), ((32, 32, 32), LESION_3D, ONE_MM_3D)])
def test_one_lesion_found_exactly_scores_dice_1_and_hd95_0(shape: tuple[int, ...], lesion: Any, spacing: tuple[float, ...]) -> None:
    t = boxes(shape, lesion)
    case = lesionwise_case(t, t, spacing)
    assert case.dice.tolist() == [1.0] and case.hd95.tolist() == [0.0] and case.false_positives == 0
    assert (case.score_dice, case.score_hd95, case.true_positives, case.false_negatives) == (1.0, 0.0, 1, 0)


@pytest.mark.parametrize("shape, lesion, other, spacing", [((40, 40), LESION_2D, ((24, 24), (8, 8)), ONE_MM_2D),
                                                           ((32, 32, 32), LESION_3D, ((20, 20, 20), (6, 6, 6)), ONE_MM_3D)])
def test_one_of_two_lesions_missed_scores_the_mean_of_found_and_penalty(shape: tuple[int, ...], lesion: Any, other: Any,
                                                                        spacing: tuple[float, ...]) -> None:
    case = lesionwise_case(boxes(shape, lesion), boxes(shape, lesion, other), spacing)
    assert case.dice.tolist() == [1.0, 0.0] and case.hd95.tolist() == [0.0, MISS]
    assert (case.true_positives, case.false_negatives, case.false_positives) == (1, 1, 0)
    assert (case.score_dice, case.score_hd95) == ((1 + 0) / 2, (0 + MISS) / 2)


@pytest.mark.parametrize("shape, lesion, far, spacing", [((40, 40), LESION_2D, FAR_2D, ONE_MM_2D), ((32, 32, 32), LESION_3D, FAR_3D, ONE_MM_3D)])
def test_a_spurious_component_counts_as_a_lesion_scoring_0_and_374(shape: tuple[int, ...], lesion: Any, far: Any,
                                                                   spacing: tuple[float, ...]) -> None:
    t = boxes(shape, lesion)
    case = lesionwise_case(boxes(shape, lesion, far), t, spacing)
    assert case.false_positives == 1 and (case.score_dice, case.score_hd95) == (0.5, MISS / 2)
    # no lesion at all: every predicted component is a false positive, however many
    empty = np.zeros(shape, bool)
    two = boxes(shape, lesion, far)
    assert lesionwise_case(two, empty, spacing).false_positives == 2
    assert (lesionwise_case(two, empty, spacing).score_dice, lesionwise_case(two, empty, spacing).score_hd95) == (0.0, MISS)


@pytest.mark.parametrize("shape", [(1, 1, 16, 16), (1, 1, 8, 8, 8)])
def test_both_empty_score_dice_1_and_hd95_0(shape: tuple[int, ...]) -> None:
    empty = torch.zeros(shape, dtype=torch.bool)
    dice, hd95 = lesionwise_dice_hd95(empty, empty, (1.0,) * (len(shape) - 2))
    assert dice.tolist() == [1.0] and hd95.tolist() == [0.0] and dice.dtype == hd95.dtype == np.float64


def test_a_lesion_at_or_below_the_volume_threshold_is_ignored() -> None:
    """A 3×3 px lesion at 1.5 mm is 20.25 mm²: ignored at threshold 20.25 (the official ``<=``), counted at 20."""
    big, small = LESION_2D, ((30, 30), (3, 3))
    t = boxes((40, 40), big, small)
    found_big = boxes((40, 40), big)
    ignored = lesionwise_case(found_big, t, (1.5, 1.5), volume_threshold=20.25)
    assert ignored.volume.tolist() == [64 * 2.25, 9 * 2.25] and ignored.kept.tolist() == [True, False]
    assert (ignored.score_dice, ignored.score_hd95, ignored.false_negatives) == (1.0, 0.0, 0)
    counted = lesionwise_case(found_big, t, (1.5, 1.5), volume_threshold=20.0)
    assert (counted.score_dice, counted.score_hd95, counted.false_negatives) == (0.5, MISS / 2, 1)
    # a predicted blob on an ignored lesion is neither scored nor a false positive
    assert lesionwise_case(t, t, (1.5, 1.5), volume_threshold=20.25).false_positives == 0
    only_small = boxes((40, 40), small)
    blob_on_small = lesionwise_case(only_small, only_small, (1.5, 1.5), volume_threshold=20.25)
    assert (blob_on_small.score_dice, blob_on_small.score_hd95, blob_on_small.false_positives) == (1.0, 0.0, 0)


def test_the_volume_threshold_is_in_mm3_at_the_voxel_spacing() -> None:
    small = boxes((16, 16, 16), ((4, 4, 4), (3, 3, 3)))  # 27 voxels: 27 mm³ at 1 mm, 54 mm³ at 1×1×2 mm
    assert not lesionwise_case(np.zeros_like(small), small, ONE_MM_3D, volume_threshold=50).kept.any()
    assert lesionwise_case(np.zeros_like(small), small, (1.0, 1.0, 2.0), volume_threshold=50).kept.all()


def test_two_predicted_blobs_inside_one_dilated_lesion_are_one_match() -> None:
    """Two strips inside an 8×8 lesion (16 + 24 px): one match whose Dice is that of their union, 2·40 / (40 + 64); a
    blob 2 px outside the lesion lies in its 3 px dilation and joins the match; one 5 px outside is a false positive."""
    lesion = ((10, 10), (8, 8))
    t = boxes((40, 40), lesion)
    strips = boxes((40, 40), ((10, 10), (2, 8)), ((15, 10), (3, 8)))
    case = lesionwise_case(strips, t, ONE_MM_2D)
    assert case.false_positives == 0 and case.dice.tolist() == [pytest.approx(80 / 104)]
    near = lesionwise_case(boxes((40, 40), lesion, ((19, 12), (1, 1))), t, ONE_MM_2D)  # 2 px below the lesion's last row
    assert near.false_positives == 0 and near.dice.tolist() == [pytest.approx(128 / 129)]
    far = lesionwise_case(boxes((40, 40), lesion, ((22, 12), (1, 1))), t, ONE_MM_2D)  # 5 px below
    assert far.false_positives == 1 and far.dice.tolist() == [1.0] and far.score_dice == 0.5


def test_lesions_closer_than_the_dilation_merge_into_one() -> None:
    close = boxes((40, 40), ((10, 10), (4, 4)), ((10, 16), (4, 4)))  # 2 px apart
    apart = boxes((40, 40), ((10, 10), (4, 4)), ((10, 24), (4, 4)))  # 10 px apart
    assert lesionwise_case(close, close, ONE_MM_2D, volume_threshold=0).volume.tolist() == [32.0]
    assert lesionwise_case(apart, apart, ONE_MM_2D, volume_threshold=0).volume.tolist() == [16.0, 16.0]
    assert lesionwise_case(close, close, ONE_MM_2D, dilation=0, volume_threshold=0).volume.tolist() == [16.0, 16.0]
    # merged, one half missed: one lesion, found, Dice of half of it
    half = lesionwise_case(boxes((40, 40), ((10, 10), (4, 4))), close, ONE_MM_2D, volume_threshold=0)
    assert half.dice.tolist() == [pytest.approx(2 * 16 / (16 + 32))] and half.false_negatives == 0


def test_a_predicted_component_reaching_two_lesions_counts_whole_for_both() -> None:
    """The official matching is not one-to-one: a bridge joining two lesions is one component, matched to both, and
    each lesion's Dice takes the whole component (both lesions and the bridge: 64 + 64 + 8 px)."""
    a, b = ((10, 4), (8, 8)), ((10, 20), (8, 8))
    t = boxes((40, 40), a, b)
    bridged = boxes((40, 40), a, b, ((13, 12), (1, 8)))
    case = lesionwise_case(bridged, t, ONE_MM_2D)
    assert case.false_positives == 0 and case.dice.tolist() == [pytest.approx(2 * 64 / (136 + 64))] * 2


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.5, 1.5)])
def test_a_shifted_lesion_scores_its_overlap_and_the_shift_in_mm(spacing: tuple[float, float]) -> None:
    """An 8×8 lesion predicted 2 px to the right: overlap 6×8, Dice 96/128; half of each surface (the vertical sides) lies
    2 px from the other, so the 95th percentile of either direction is 2 px."""
    t = boxes((40, 40), ((10, 10), (8, 8)))
    case = lesionwise_case(np.roll(t, 2, axis=1), t, spacing)
    assert case.dice.tolist() == [0.75] and case.hd95.tolist() == [pytest.approx(2 * spacing[1])]


def test_a_one_slice_volume_and_its_slice_have_the_same_lesions_and_dice() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        pred, target = random_pair(rng, (24, 24))
        flat, thick = lesionwise_case(pred, target, ONE_MM_2D), lesionwise_case(pred[None], target[None], ONE_MM_3D)
        np.testing.assert_array_equal(flat.dice, thick.dice)
        assert (flat.false_positives, flat.volume.tolist()) == (thick.false_positives, thick.volume.tolist())


def test_the_batch_function_takes_tensors_and_arrays_alike() -> None:
    rng = np.random.default_rng(4)
    pairs = [random_pair(rng, (24, 24)) for _ in range(4)]
    pred, target = np.stack([p for p, _ in pairs])[:, None], np.stack([t for _, t in pairs])[:, None]
    dice, hd95 = lesionwise_dice_hd95(torch.from_numpy(pred), torch.from_numpy(target).long(), (1.5, 1.5), volume_threshold=5)
    np.testing.assert_array_equal(dice, [lesionwise_case(p, t, (1.5, 1.5), volume_threshold=5).score_dice for p, t in pairs])
    np.testing.assert_array_equal(lesionwise_dice_hd95(pred, target, (1.5, 1.5), volume_threshold=5)[1], hd95)


@pytest.mark.parametrize("call, message", [
    (lambda: lesionwise_dice_hd95(np.zeros((2, 1, 8, 8)), np.zeros((2, 1, 8, 9)), ONE_MM_2D),
     r"lesionwise: prediction \(2, 1, 8, 8\) and target \(2, 1, 8, 9\) must be equal N×1×\(D×\)H×W"),
    (lambda: lesionwise_dice_hd95(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), ONE_MM_2D), r"must be equal N×1×\(D×\)H×W"),
    (lambda: lesionwise_case(np.zeros((8, 8)), np.zeros((8, 8)), ONE_MM_3D), r"spacing \(1.0, 1.0, 1.0\) mm; expected 2 positive numbers"),
    (lambda: lesionwise_case(np.zeros((8, 8)), np.zeros((8, 8)), (1.0, 0.0)), r"expected 2 positive numbers"),
    (lambda: lesionwise_case(np.zeros((8, 8)), np.zeros((8, 8)), ONE_MM_2D, dilation=-1), r"dilation must be an integer >= 0 \(voxels\), got -1"),
    (lambda: lesionwise_case(np.zeros((8, 8)), np.zeros((8, 8)), ONE_MM_2D, volume_threshold=math.inf), r"volume_threshold must be a finite"),
    (lambda: lesionwise_case(np.zeros((8, 8)), np.zeros((8, 8)), ONE_MM_2D, connectivity=3), r"connectivity must be an integer in \[1, 2\]"),
    (lambda: lesionwise_case(np.zeros((2, 2, 8, 8)), np.zeros((2, 2, 8, 8)), ONE_MM_2D), r"must be one H×W or D×H×W shape"),
    (lambda: surface_hd95(np.zeros((8, 8)), np.ones((8, 8)), ONE_MM_2D), r"a mask is empty"),
])
def test_bad_inputs_are_metric_errors_naming_the_value(call: Any, message: str) -> None:
    with pytest.raises(MetricError, match=message):
        call()


# ------------------------------------------------------------------------------------------- the surface HD95 (BraTS 2023)
def test_the_brats2023_hd95_definition_is_the_surface_hd95_with_brats_empty_rules() -> None:
    t = torch.zeros(3, 1, 32, 32, dtype=torch.bool)
    t[:2, :, 8:16, 8:16] = True
    p = t.clone()
    p[1] = p[1].roll(3, dims=-1)
    got = hd95_per_image(torch.cat([p, t[:1]]), torch.cat([t, torch.zeros_like(t[:1])]), (1.5, 1.0), "brats2023")
    np.testing.assert_allclose(got, [0.0, 3.0, 0.0, MISS])  # exact, shifted 3 px along the 1 mm axis, both empty, one empty
    assert create_metric("hd95", {"definition": "brats2023"}).config()["definition"] == "brats2023"


def test_surface_elements_are_those_of_monai_get_mask_edges_with_spacing() -> None:
    """The NumPy neighbourhood codes give MONAI's subvoxel edges and areas exactly (the same corner grid and table)."""
    import warnings

    from monai.metrics.utils import get_mask_edges

    from mriq_validate.metrics.functional.downstream import _edges_and_areas

    rng = np.random.default_rng(1)
    for shape, spacing in [((20, 22), (1.5, 1.0)), ((9, 10, 11), (1.0, 2.0, 1.5))]:
        for _ in range(5):
            a, b = rng.random(shape) < 0.2, rng.random(shape) < 0.3
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                expected = get_mask_edges(torch.from_numpy(a), torch.from_numpy(b), crop=True, spacing=list(spacing))
            for got, want in zip(_edges_and_areas(a, b, spacing), expected):
                np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.filterwarnings("ignore:Please import `:DeprecationWarning")  # scipy.ndimage.morphology / .filters: the vendored 2018 code
def test_surface_hd95_matches_deepmind_surface_distance(monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepMind's surface-distance (Apache 2.0), as the BraTS 2023 code vendors it and as vendored unchanged under
    tests/data/brats2023_metrics/ (that copy is 3D only), agrees exactly with surface_hd95 on random 3D masks at
    isotropic and anisotropic spacing."""
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)  # the 2018 code spells np.Inf, which NumPy 2 removed
    sd = deepmind_surface_distance()
    rng = np.random.default_rng(0)
    for shape, spacing in [((10, 12, 14), (1.0, 2.0, 1.5)), ((8, 16, 12), (1.0, 1.0, 1.0)), ((12, 10, 9), (1.5, 1.0, 1.5))]:
        for _ in range(10):
            a, b = rng.random(shape) < 0.2, rng.random(shape) < 0.2
            expected = sd.compute_robust_hausdorff(sd.compute_surface_distances(b, a, spacing), 95)
            assert surface_hd95(a, b, spacing) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------- an independent naive port
def _contour_length(tl: bool, tr: bool, bl: bool, br: bool, s0: float, s1: float) -> float:
    """Marching-squares contour length in the cell between four pixel centres (2D surface-distance, by reasoning): a cut
    corner is half a cell diagonal; two pixels sharing a row are separated by a line along axis 1 (length s1), sharing
    a column by one along axis 0 (s0); a diagonal pair by two corner cuts."""
    n = tl + tr + bl + br
    if n in (0, 4):
        return 0.0
    half_diagonal = 0.5 * math.hypot(s0, s1)
    if n in (1, 3):
        return half_diagonal
    if tl == tr:
        return s1
    if tl == bl:
        return s0
    return 2 * half_diagonal


def _naive_surface(mask: np.ndarray, spacing: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Positions (mm) and contour lengths of the surface points on the pixel-corner grid, one loop per corner."""
    p = np.pad(mask, 1)
    points, lengths = [], []
    for i in range(mask.shape[0] + 1):
        for j in range(mask.shape[1] + 1):
            length = _contour_length(bool(p[i, j]), bool(p[i, j + 1]), bool(p[i + 1, j]), bool(p[i + 1, j + 1]), *spacing)
            if length > 0:
                points.append((i * spacing[0], j * spacing[1]))
                lengths.append(length)
    return np.array(points), np.array(lengths)


def _naive_hd95_2d(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float]) -> float:
    """Brute-force all-pairs distances between the two surfaces; per direction the first distance (sorted, ties by
    length) at which 95 % of the contour length is reached; the larger direction."""
    (pa, wa), (pb, wb) = _naive_surface(a, spacing), _naive_surface(b, spacing)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))

    def percentile(dist: np.ndarray, w: np.ndarray) -> float:
        order = np.lexsort((w, dist))
        reached = np.cumsum(w[order]) / np.sum(w) >= 0.95
        return float(dist[order][int(np.argmax(reached)) if reached.any() else -1])

    return max(percentile(d.min(1), wa), percentile(d.min(0), wb))


def naive_brats2023(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...], dilation: int, threshold: float,
                    hd95: Any = _naive_hd95_2d) -> tuple[float, float, int]:
    """The official per-case loop of BraTS-2023-Metrics ``get_LesionWiseScores`` + ``get_LesionWiseResults``, step by
    step (scipy labelling in place of cc3d; dilation 0 = none): (Dice score, HD95 score, false positives)."""
    full = ndimage.generate_binary_structure(gt.ndim, gt.ndim)  # cc3d connectivity=26 (8 in 2D)
    struct = ndimage.generate_binary_structure(gt.ndim, 2)

    def dilate(m: np.ndarray) -> np.ndarray:
        return ndimage.binary_dilation(m, structure=struct, iterations=dilation) if dilation else m.copy()

    gt_cc, _ = ndimage.label(gt, full)
    pred_cc, _ = ndimage.label(pred, full)
    dilated_cc, n_dilated = ndimage.label(dilate(gt), full)
    combined = np.zeros_like(dilated_cc)  # get_GTseg_combinedByDilation
    for comp in range(1, n_dilated + 1):
        tmp = gt_cc * (dilated_cc == comp)
        combined[tmp > 0] = comp
    tp: list[int] = []
    rows = []
    for comp in range(1, int(combined.max()) + 1):
        lesion = combined == comp
        hits = np.unique(pred_cc * dilate(lesion))
        hits = hits[hits != 0]
        tp.extend(int(h) for h in hits)
        found = np.isin(pred_cc, hits)
        dice = 2.0 * (found & lesion).sum() / (found.sum() + lesion.sum())
        rows.append((lesion.sum() * float(np.prod(spacing)), dice, hd95(found, lesion, spacing) if hits.size else math.inf))
    fp = int(np.unique(pred_cc[~np.isin(pred_cc, tp + [0])]).size)
    kept = [(d, MISS if math.isinf(h) else h) for v, d, h in rows if v > threshold]
    n = len(kept) + fp
    if n == 0:
        return 1.0, 0.0, fp
    return sum(d for d, _ in kept) / n, (sum(h for _, h in kept) + MISS * fp) / n, fp


def random_pair(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, target): target boxes of 1-6 px, some close enough to merge; the prediction shifted, holed (split
    components), with stray blobs, or empty."""
    target = np.zeros(shape, bool)
    for _ in range(int(rng.integers(0, 5))):
        corner = [int(rng.integers(0, n)) for n in shape]
        target[tuple(slice(c, c + int(rng.integers(1, 7))) for c in corner)] = True
    pred = np.roll(target, tuple(int(v) for v in rng.integers(-2, 3, len(shape))), axis=tuple(range(len(shape))))
    pred &= rng.random(shape) > rng.uniform(0.0, 0.3)
    for _ in range(int(rng.integers(0, 4))):
        corner = [int(rng.integers(0, n)) for n in shape]
        pred[tuple(slice(c, c + int(rng.integers(1, 4))) for c in corner)] = True
    if rng.random() < 0.15:
        pred[:] = False
    return pred, target


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), dilation=st.integers(0, 3), threshold=st.sampled_from([0.0, 4.0, 9.0, 20.0]),
       spacing=st.sampled_from([(1.0, 1.0), (1.5, 1.5), (1.0, 2.0)]))
def test_matches_a_naive_port_of_the_official_loop_on_random_2d_masks(seed: int, dilation: int, threshold: float,
                                                                       spacing: tuple[float, float]) -> None:
    pred, target = random_pair(np.random.default_rng(seed), (24, 24))
    case = lesionwise_case(pred, target, spacing, dilation=dilation, volume_threshold=threshold)
    dice, hd95, fp = naive_brats2023(pred, target, spacing, dilation, threshold)
    assert case.false_positives == fp
    assert case.score_dice == pytest.approx(dice, abs=1e-12) and case.score_hd95 == pytest.approx(hd95, abs=1e-9)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), dilation=st.integers(0, 3), threshold=st.sampled_from([0.0, 8.0, 50.0]))
def test_matches_the_naive_port_on_random_3d_masks(seed: int, dilation: int, threshold: float) -> None:
    """3D: lesions, matching, Dice and false positives by the naive loop (its HD95 through surface_hd95, which the 2D
    test and the official comparisons check)."""
    pred, target = random_pair(np.random.default_rng(seed), (12, 14, 16))
    case = lesionwise_case(pred, target, (1.0, 1.5, 1.0), dilation=dilation, volume_threshold=threshold)
    dice, hd95, fp = naive_brats2023(pred, target, (1.0, 1.5, 1.0), dilation, threshold, hd95=surface_hd95)
    assert (case.false_positives, case.score_dice, case.score_hd95) == (fp, pytest.approx(dice, abs=1e-12), pytest.approx(hd95, abs=1e-9))


# ------------------------------------------------------------------------------------------- the registered metrics
def test_the_metrics_are_registered_with_their_direction_range_and_settings() -> None:
    assert METRICS["dice_lesionwise"] is DiceLesionwise and METRICS["hd95_lesionwise"] is Hd95Lesionwise
    dice, hd95 = create_metric("dice_lesionwise"), create_metric("hd95_lesionwise", {"challenge": "BraTS-MET"})
    assert dice.higher_is_better and not hd95.higher_is_better
    assert dice.valid_range == (0.0, 1.0) and hd95.valid_range == (0.0, math.inf) and dice.needs == hd95.needs == ("masks",)
    assert dice.functional is hd95.functional is lesionwise_dice_hd95
    assert "BraTS 2023" in dice.summary and "BraTS 2023" in hd95.summary
    assert (dice.config()["dilation"], dice.config()["volume_threshold"]) == (3, 50.0)  # BraTS-GLI
    assert (hd95.config()["dilation"], hd95.config()["volume_threshold"]) == (1, 2.0)  # BraTS-MET
    assert create_metric("dice_lesionwise", {"dilation": 0, "volume_threshold": 10}).config()["volume_threshold"] == 10.0
    assert all(len(t) > 40 for t in dice.limitations) and any("374 mm" in t for t in hd95.limitations)
    assert {k: (v.dilation, v.volume_threshold) for k, v in BRATS2023_CHALLENGES.items()} == {
        "BraTS-GLI": (3, 50.0), "BraTS-SSA": (3, 50.0), "BraTS-MEN": (1, 50.0), "BraTS-PED": (3, 50.0), "BraTS-MET": (1, 2.0)}


@pytest.mark.parametrize("params, message", [
    ({"challenge": "BraTS-2024"}, "metric 'dice_lesionwise': challenge 'BraTS-2024' unknown; expected one of ['BraTS-GLI', "),
    ({"dilation": 1.5}, "metric 'dice_lesionwise': dilation must be an integer >= 0, got 1.5"),
    ({"volume_threshold": -1}, "metric 'dice_lesionwise': volume_threshold must be a number >= 0 (mm³ on volumes, mm² on slices), got -1"),
    ({"region": ""}, "metric 'dice_lesionwise': region must be a region or label name, got ''"),
])
def test_bad_metric_parameters_fail_at_construction(params: dict[str, Any], message: str) -> None:
    with pytest.raises(MetricError) as exc:
        create_metric("dice_lesionwise", params)
    assert str(exc.value).startswith(message)


class _Oracle:
    """``RunContext.predict`` stand-in: a fixed label map per image content (no segmenter is trained)."""

    def __init__(self) -> None:
        self.answers: dict[bytes, torch.Tensor] = {}

    def add(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.answers[images.numpy().tobytes()] = labels

    def __call__(self, cfg: Any, images: torch.Tensor) -> torch.Tensor:
        return self.answers[images.numpy().tobytes()]


@pytest.fixture
def oracle_ctx(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A real run context on the embedded data whose segmenter is an oracle: the true masks on the real test images."""
    from mriq_validate.session import RunContext, RunSettings

    ctx = RunContext(RunSettings(model=None, data="builtin:mni-tumour", device="cpu", cache_dir=str(cache_dir)), "builtin:mni-tumour")
    oracle = _Oracle()
    oracle.add(ctx.data.test.images, ctx.data.test.masks)
    monkeypatch.setattr(ctx, "predict", oracle)
    ctx.oracle = oracle
    return ctx


def test_the_metrics_run_through_the_metric_api(oracle_ctx: Any) -> None:
    """Eight test slices 'generated' again (images offset) and segmented as the true masks plus a 3×3 oedema blob in a
    corner far from every lesion: whole tumour, each slice's one lesion is found exactly and the blob is a false
    positive, (1 + 0)/2 and (0 + 374)/2; enhancing tumour ignores the oedema blob: 1 and 0 (0 also for slices without
    enhancement: both empty)."""
    ctx, test = oracle_ctx, oracle_ctx.data.test
    images, masks = (test.images[:8] * 0.5).contiguous(), test.masks[:8]
    whole = ctx.data.region_mask(masks, "whole_tumour")[:, 0].numpy()
    far = ndimage.binary_dilation(whole.any(0), iterations=8)
    assert not far[:5, :5].any()  # the corner is more than 3 px from every lesion
    assert all(ndimage.label(m, np.ones((3, 3)))[1] == 1 for m in whole)  # one whole-tumour lesion per slice
    predicted = masks.clone()
    predicted[:, 0, 1:4, 1:4] = 2
    ctx.oracle.add(images, predicted)
    sample = Sample(images, masks, "generated")
    for region, dice_expected, hd95_expected in (("whole_tumour", 0.5, MISS / 2), ("enhancing_tumour", 1.0, 0.0)):
        dice, hd95 = create_metric("dice_lesionwise", {"region": region}), create_metric("hd95_lesionwise", {"region": region})
        np.testing.assert_array_equal(ctx.prepare(dice, sample), [dice_expected] * 8)
        np.testing.assert_array_equal(ctx.prepare(hd95, sample), [hd95_expected] * 8)
        assert dice.value(ctx.prepare(dice, sample), np.arange(8)) == dice_expected
    assert ctx.prepare(create_metric("dice_lesionwise"), ctx.real("test")).tolist() == [1.0] * len(test)


def test_the_metrics_refuse_an_incompetent_segmenter(oracle_ctx: Any) -> None:
    test = oracle_ctx.data.test
    oracle_ctx.oracle.add(test.images, torch.zeros_like(test.masks))  # predicts nothing on the real test images
    with pytest.raises(MetricError, match=r"reaches only Dice 0.000 on the real test images \(< min_real_dice 0.5\)"):
        oracle_ctx.prepare(create_metric("hd95_lesionwise"), Sample(test.images[:4] * 0.5, test.masks[:4], "generated"))


# ------------------------------------------------------------------------------------------- the official code's answers
def test_matches_the_official_brats2023_scores() -> None:
    """The random 3D label volumes of benchmarks/lesionwise_reference.py (every challenge's settings, 1 mm and
    1.5×1×1.5 mm voxels, merging, tiny lesions, misses, bridges, false positives) scored region by region as the official
    BraTS 2023 code scored them (tests/data/brats2023_known_answers.json, made from a checkout of
    rachitsaluja/BraTS-2023-Metrics by tests/data/make_brats_known_answers.py; its "how" says how the official code was
    run): Dice, HD95 and the lesion counts agree to the last digits."""
    known = json.loads(KNOWN_ANSWERS.read_text())
    ref = reference_module()
    cases = ref.random_cases(known["cases"], known["seed"])
    assert len(known["results"]) == len(cases) == known["cases"]
    compared = 0
    for i, ((pred, target, spacing, challenge), want) in enumerate(zip(cases, known["results"])):
        stale = "random_cases changed: regenerate the fixture with tests/data/make_brats_known_answers.py"
        assert (digest(pred), digest(target)) == (want["pred_sha256"], want["ref_sha256"]), stale
        assert (challenge, list(spacing)) == (want["challenge"], want["spacing"]), stale
        params = BRATS2023_CHALLENGES[challenge]
        for region, values in ref.REGIONS.items():
            case = lesionwise_case(np.isin(pred, values), np.isin(target, values), spacing, dilation=params.dilation,
                                   volume_threshold=params.volume_threshold)
            theirs = want["regions"][region]
            where = (i, challenge, region)
            assert case.score_dice == pytest.approx(theirs["dice"], abs=1e-12), where
            assert case.score_hd95 == pytest.approx(theirs["hd95"], abs=1e-12), where
            assert (case.true_positives, case.false_positives, case.false_negatives) == (theirs["tp"], theirs["fp"], theirs["fn"]), where
            compared += 1
    # the cases exercise what the rules are about: false positives, missed lesions, a region with no lesion at all
    regions = [r for case in known["results"] for r in case["regions"].values()]
    assert compared == 3 * len(cases) and {c["challenge"] for c in known["results"]} == set(BRATS2023_CHALLENGES)
    assert any(r["fp"] for r in regions) and any(r["fn"] for r in regions) and any(r["tp"] + r["fp"] + r["fn"] == 0 for r in regions)
