"""Four contrasts of ``builtin:mni-tumour`` and the tissue → contrast model behind them: measured intensity orderings
of normal tissue and tumour sub-regions per contrast, channel order, determinism, n-dimensional use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from mriq_validate.data.contrasts import CANONICAL
from mriq_validate.data.mni import (
    AXIAL_RANGE_MM, SIZE, VOXEL_MM, Template, cohort_case, load_template, split_in_memory, template_paths, tumour_labels,
)
from mriq_validate.data.mri_contrast import CONTRASTS, TissueMaps, simulate_contrasts
from mriq_validate.data.preprocess import axial_to_display, centre_crop
from mriq_validate.errors import DataError

NC, ED, ET = 1, 2, 3


@pytest.fixture(scope="module")
def tpl() -> Template:
    return load_template(template_paths())


def _slice_maps(tpl: Template, z: int) -> TissueMaps:
    return TissueMaps(*(centre_crop(axial_to_display(v[:, :, z]), SIZE) for v in (tpl.t1, tpl.gm, tpl.wm, tpl.csf)))


@pytest.fixture(scope="module")
def simulated(tpl: Template) -> list[tuple[TissueMaps, np.ndarray, dict[str, np.ndarray]]]:
    """24 template slices with a tumour each, through the contrast model only (no deformation, bias or noise), so
    tissue classes are known exactly."""
    out = []
    lo, hi = (round(v / VOXEL_MM) for v in AXIAL_RANGE_MM)
    for i in range(24):
        rng = np.random.default_rng([7, i])
        maps = _slice_maps(tpl, int(rng.integers(lo, hi)))
        labels, _ = tumour_labels(maps.t1 > 0.05, maps.wm, rng)
        out.append((maps, labels, simulate_contrasts(maps, labels, rng, voxel_mm=VOXEL_MM)))
    return out


def _tissue(maps: TissueMaps, labels: np.ndarray) -> dict[str, np.ndarray]:
    away = ~ndimage.binary_dilation(labels > 0, iterations=3)
    return {"wm": (maps.wm > 0.9) & away, "gm": (maps.gm > 0.7) & away, "csf": (maps.csf > 0.7) & away}


def test_normal_tissue_ordering_per_contrast(simulated) -> None:
    """T1/T1c: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: GM > WM > CSF (CSF nulled). Pooled medians over 24 slices."""
    pooled = {c: {t: [] for t in ("wm", "gm", "csf")} for c in CONTRASTS}
    for maps, labels, images in simulated:
        for t, region in _tissue(maps, labels).items():
            for c in CONTRASTS:
                pooled[c][t].append(images[c][region])
    med = {c: {t: float(np.median(np.concatenate(v))) for t, v in d.items()} for c, d in pooled.items()}
    for c in ("t1", "t1c"):
        assert med[c]["wm"] > med[c]["gm"] > med[c]["csf"], med[c]
    assert med["t2"]["csf"] > med["t2"]["gm"] > med["t2"]["wm"], med["t2"]
    assert med["flair"]["gm"] > med["flair"]["wm"] > med["flair"]["csf"], med["flair"]
    assert med["flair"]["csf"] < 0.5 * med["flair"]["wm"]  # suppressed, not merely darker


def test_tumour_subregion_ordering_in_every_case(simulated) -> None:
    """Per case, medians of each sub-region (eroded by one pixel, away from partial-volume edges) against the case's
    white matter: the BraTS protocol's description of each sub-region on each contrast."""
    checked = {"et": 0, "nc": 0}
    for maps, labels, images in simulated:
        wm = _tissue(maps, labels)["wm"]
        reg = {v: ndimage.binary_erosion(labels == v) for v in (NC, ED, ET)}
        has = {v: int(reg[v].sum()) >= 5 for v in reg}
        rel = {c: {v: float(np.median(images[c][reg[v]])) / float(np.median(images[c][wm])) for v in reg if has[v]} for c in CONTRASTS}
        assert has[ED]
        assert rel["t2"][ED] > 1.3 and rel["flair"][ED] > 1.3  # oedema bright on T2 and FLAIR
        assert rel["t1"][ED] < 0.85  # and hypo-intense on T1
        if has[ET]:
            checked["et"] += 1
            assert rel["t1c"][ET] > 1.15 and rel["t1"][ET] < 1.0  # enhancing: clearly above WM on T1c only
            assert rel["t2"][ED] > rel["t2"][ET] > 1.0 and rel["flair"][ED] > rel["flair"][ET] > 1.0
        if has[NC]:
            checked["nc"] += 1
            assert rel["t2"][NC] > rel["t2"][ED]  # fluid-like necrosis brightest on T2
            assert rel["flair"][NC] < rel["flair"][ED] and rel["t1"][NC] < rel["t1"][ED]
            assert rel["t1c"][NC] < rel["t1"][NC]  # necrosis hypo-intense on T1c compared with T1
    assert checked["et"] >= 10 and checked["nc"] >= 5  # the mix of tumour kinds reached both branches


def test_cohort_has_four_channels_in_canonical_order(mni) -> None:
    assert mni.contrasts == CANONICAL == CONTRASTS
    assert mni.image_shape == (4, *SIZE) and mni.train.images.shape == (256, 4, *SIZE) and mni.test.images.shape == (128, 4, *SIZE)
    x = mni.test.images[:8]
    for a in range(4):
        for b in range(a + 1, 4):
            assert float((x[:, a] - x[:, b]).abs().mean()) > 0.02  # four different contrasts, not copies


def _cohort_contrasts(images: np.ndarray, masks: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Per slice and channel: median(region) - median(normal WM) for CSF, oedema and enhancing tumour. Normal WM is the
    brightest quarter of the tumour-free brain on channel 0 and CSF its darkest 5 % (WM is brightest and CSF darkest
    on T1); regions are eroded by one pixel."""
    out: dict[str, list[np.ndarray]] = {"csf": [], "ed": [], "et": []}
    for x, m in zip(images, masks):
        brain = ndimage.binary_erosion(x[0] > 0.15, iterations=3) & ~ndimage.binary_dilation(m > 0, iterations=3)
        wm = brain & (x[0] >= np.quantile(x[0][brain], 0.75))
        csf = brain & (x[0] <= np.quantile(x[0][brain], 0.05))
        wm_med = np.array([np.median(ch[wm]) for ch in x])
        out["csf"].append(np.array([np.median(ch[csf]) for ch in x]) - wm_med)
        for key, v in (("ed", ED), ("et", ET)):
            r = ndimage.binary_erosion(m == v)
            if r.sum() >= 10:
                out[key].append(np.array([np.median(ch[r]) for ch in x]) - wm_med)
    return out


def test_cohort_intensity_orderings_per_slice(mni) -> None:
    """On the final cohort (deformed, biased, noisy, normalised): in every test slice oedema is brighter than normal
    WM on T2 and FLAIR, enhancing tumour brighter than WM on T1c but not on T1, CSF darker than WM on FLAIR and
    brighter on T2."""
    idx = {c: i for i, c in enumerate(mni.contrasts)}
    d = {k: np.stack(v) for k, v in _cohort_contrasts(mni.test.images.numpy(), mni.test.masks[:, 0].numpy()).items()}
    assert len(d["ed"]) > 100 and len(d["et"]) > 50
    assert (d["ed"][:, idx["t2"]] > 0).all() and (d["ed"][:, idx["flair"]] > 0).all()
    assert (d["et"][:, idx["t1c"]] > 0).all() and (d["et"][:, idx["t1"]] < 0).all()
    assert (d["csf"][:, idx["flair"]] < 0).all() and (d["csf"][:, idx["t2"]] > 0).all()


def test_channel_order_is_recoverable_from_the_images(mni) -> None:
    """Channel identities measured from the images alone match ``contrasts``. Each contrast has its own sign pattern
    of (CSF, oedema, enhancing) against white matter: T1 (-, -, -), T1c (-, -, +), T2 (+, +, +), FLAIR (-, +, +)."""
    patterns = {(-1, -1, -1): "t1", (-1, -1, 1): "t1c", (1, 1, 1): "t2", (-1, 1, 1): "flair"}
    d = {k: np.median(np.stack(v), axis=0) for k, v in _cohort_contrasts(mni.test.images.numpy(), mni.test.masks[:, 0].numpy()).items()}
    found = tuple(patterns.get(tuple(int(np.sign(d[k][i])) for k in ("csf", "ed", "et")), "?") for i in range(4))
    assert found == mni.contrasts


def test_cohort_is_deterministic_and_independent_of_the_run(tpl: Template, mni) -> None:
    again = split_in_memory(cohort_case, tpl, 3, "test")  # DATA_SEED only: nothing of a run's seed reaches the data
    assert torch.equal(again.images, mni.test.images[:3]) and torch.equal(again.masks, mni.test.masks[:3])
    assert all(np.array_equal(v, mni.test.covariates[k][:3]) for k, v in again.covariates.items())


def test_simulation_is_seeded(simulated) -> None:
    maps, labels, images = simulated[0]
    same = simulate_contrasts(maps, labels, np.random.default_rng(1), voxel_mm=VOXEL_MM)
    again = simulate_contrasts(maps, labels, np.random.default_rng(1), voxel_mm=VOXEL_MM)
    other = simulate_contrasts(maps, labels, np.random.default_rng(2), voxel_mm=VOXEL_MM)
    assert all(np.array_equal(same[c], again[c]) for c in CONTRASTS)
    assert all(not np.array_equal(same[c], other[c]) for c in CONTRASTS)
    far = ~ndimage.binary_dilation(labels > 0, iterations=8)  # the tumour changes nothing far from it
    assert all(np.array_equal(same[c][far], other[c][far]) for c in CONTRASTS)


def test_model_is_n_dimensional_and_handles_a_resection_cavity(tpl: Template) -> None:
    """A 3D block of the template with a spherical resection cavity (BraTS 2024 label 4): fluid, so dark on T1 and
    FLAIR and bright on T2."""
    block = (slice(30, 90), slice(40, 110), slice(40, 80))
    maps = TissueMaps(*(v[block] for v in (tpl.t1, tpl.gm, tpl.wm, tpl.csf)))
    core_wm = np.argwhere(maps.wm > 0.9)
    centre = core_wm[len(core_wm) // 2]
    dist2 = sum((ax - c) ** 2 for ax, c in zip(np.indices(maps.t1.shape), centre))
    labels = (dist2 < 36).astype(np.uint8) * 4
    images = simulate_contrasts(maps, labels, np.random.default_rng(0), voxel_mm=VOXEL_MM)
    assert all(images[c].shape == maps.t1.shape and images[c].dtype == np.float32 for c in CONTRASTS)
    core = ndimage.binary_erosion(labels > 0)
    wm = (maps.wm > 0.9) & ~ndimage.binary_dilation(labels > 0, iterations=3)
    rel = {c: float(np.median(images[c][core]) / np.median(images[c][wm])) for c in CONTRASTS}
    assert rel["t1"] < 0.5 and rel["flair"] < 0.5 and rel["t2"] > 2.0, rel


def test_model_errors_name_the_problem(tpl: Template) -> None:
    maps = _slice_maps(tpl, 60)
    labels = np.zeros(maps.t1.shape, np.uint8)
    labels[60:64, 60:64] = 7
    with pytest.raises(DataError, match=r"label values \[7\] have no simulated MRI signal"):
        simulate_contrasts(maps, labels, np.random.default_rng(0), voxel_mm=VOXEL_MM)
    with pytest.raises(DataError, match="differ in shape"):
        simulate_contrasts(maps, labels[:10], np.random.default_rng(0), voxel_mm=VOXEL_MM)
    with pytest.raises(DataError, match="cannot be simulated"):
        simulate_contrasts(maps, labels * 0, np.random.default_rng(0), voxel_mm=VOXEL_MM, contrasts=("dwi",))
    with pytest.raises(DataError, match="different shapes"):
        TissueMaps(maps.t1, maps.gm, maps.wm, maps.csf[:5])
