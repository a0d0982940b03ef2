"""Every registered perturbation on volumes N×C×D×H×W (masks N×1×D×H×W): seeded replay, identity, range, masks,
locality measured from the parameters, strength monotone, draws shared across contrasts, and edits that are 3D (k-space
artefacts in 3D k-space, morphology with 3D structuring elements, vessel gaps through the whole cross-section)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from mriq_validate.data.mni3d import synthesise_volume
from mriq_validate.data.volumes import display_volume
from mriq_validate.errors import MetricError
from mriq_validate.perturb import REGISTRY, PerturbContext, apply, get
from mriq_validate.perturb.figure import perturbation_figure, shown_slice
from mriq_validate.perturb.morphology import dilate_ball, erode_ball
from mriq_validate.perturb.vessels import _vessel_gaps, skeletonize
from mriq_validate.perturb.sweeps import DEFAULT_SWEEPS

FEW = settings(max_examples=5, deadline=None, database=None)
VESSEL = {"vessel_break", "vessel_prune"}

# One strong, non-identity setting per registered perturbation, in 3D. A new family without an entry fails
# test_every_registered_perturbation_is_covered_in_3d.
STRONG: dict[str, dict[str, float]] = {
    "gaussian": {"sigma": 0.1}, "poisson": {"lam": 30.0}, "rician": {"sigma": 0.1},
    "gaussian_blur": {"sigma": 1.5}, "bias_field": {"coeff": 0.6}, "kspace_spike": {"intensity": 0.5},
    "gibbs": {"alpha": 0.6}, "ghosting": {"intensity": 0.8},
    "boundary_blur": {"sigma": 2.0, "width": 2}, "gradient": {"alpha": 0.8}, "texture_flatten": {"beta": 1.0},
    "lesion_erase": {"amount": 1.0}, "lesion_resize": {"k": 2}, "vessel_break": {"gaps": 2, "length": 4},
    "vessel_prune": {"min_area": 60}, "one_contrast_erase": {"amount": 1.0, "halo": 1},
    "external_duplication": {"p": 0.5, "augment": 1}, "internal_duplication": {"p": 0.5},
    "mode_collapse": {"fraction": 1.0}, "density_shift": {"weight": 1.0},
}


# ---------------------------------------------------------------------------------------------- volumes



@functools.cache
def _brains(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = [], []
    for k in range(n):
        case = synthesise_volume(np.random.default_rng(seed * 100 + k), voxel_mm=6.0, shape=(32, 40, 32))
        chans = [display_volume(case.images[c]) for c in ("t1", "t1c", "t2", "flair")]
        images.append(np.stack([np.clip(v / np.percentile(v, 99.5), 0, 1) for v in chans]))
        masks.append(display_volume(case.labels)[None].astype(np.int64))
    return torch.from_numpy(np.stack(images)).float(), torch.from_numpy(np.stack(masks))


def brains(seed: int = 0, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """n synthetic brain volumes, 4 contrasts, D×H×W = 32×40×32 (6 mm voxels), labels 1-3 (copies)."""
    images, masks = _brains(seed, n)
    return images.clone(), masks.clone()


def tube(shape: tuple[int, int, int], a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """Voxels within ``radius`` of the segment a-b."""
    grid = np.indices(shape).reshape(3, -1).T.astype(float)
    ab = b - a
    t = np.clip((grid - a) @ ab / (ab @ ab), 0, 1)
    return (np.linalg.norm(grid - (a + t[:, None] * ab), axis=1) <= radius).reshape(shape)


@functools.cache
def _tree() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape = (28, 28, 40)
    trunk = tube(shape, np.array([8.0, 14, 3]), np.array([8.0, 14, 36]), 1.6)
    twig = tube(shape, np.array([8.0, 14, 25]), np.array([8.0, 19, 25]), 1.2)  # short side branch, ~5 voxels long
    bough = tube(shape, np.array([8.0, 14, 14]), np.array([24.0, 14, 14]), 1.4)  # long branch along D
    return trunk, twig, bough


def vessel_volumes(n: int = 2) -> tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]:
    """n volumes of a bright 3D vessel tree (label 1; a trunk, a long branch along D and a short twig) on dim
    textured tissue, 2 contrasts."""
    trunk, twig, bough = _tree()
    v = trunk | twig | bough
    rng = np.random.default_rng(5)
    images = []
    for _ in range(n):
        base = 0.25 + 0.05 * ndimage.gaussian_filter(rng.standard_normal(v.shape), 1.5) + rng.normal(0, 0.02, v.shape)
        images.append(np.stack([np.clip(base + g * v, 0, 1) for g in (0.6, 0.4)]))
    masks = np.broadcast_to(v[None, None], (n, 1, *v.shape)).astype(np.int64)
    return torch.from_numpy(np.stack(images)).float(), torch.from_numpy(masks.copy()), {"trunk": trunk, "twig": twig, "bough": bough}


def data_for(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return vessel_volumes()[:2] if name in VESSEL else brains()


def ctx_for(name: str, images: torch.Tensor, masks: torch.Tensor) -> PerturbContext:
    if get(name).scope == "set":
        train_i, train_m = brains(seed=1, n=3)
        return PerturbContext(train_i, train_m, {"site": np.array([0, 1])[: len(images)]}, lesion_labels=(1, 2, 3))
    return PerturbContext(lesion_labels=(1,) if name in VESSEL else (1, 2, 3))


def reach(name: str, params: dict[str, float], region: np.ndarray) -> np.ndarray:
    """Where a local edit may change voxels, from its parameters (each docstring's bound), in 3D."""
    if name == "boundary_blur":
        return ndimage.distance_transform_edt(~region) <= params["width"]
    if name == "lesion_resize" and params["k"] > 0:
        return ndimage.distance_transform_cdt(~region, metric="chessboard") <= params["k"]
    if name in VESSEL:
        return ndimage.binary_dilation(region, np.ones((3, 3, 3), bool))
    if name == "one_contrast_erase":
        return ndimage.distance_transform_edt(~region) <= params["halo"]
    return region


def changed(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return (a != b).numpy()


# ---------------------------------------------------------------------------------------------- every family


def test_every_registered_perturbation_is_covered_in_3d() -> None:
    assert set(STRONG) == set(REGISTRY), "a perturbation family without a 3D case: add it to STRONG (and make it n-D)"
    assert set(DEFAULT_SWEEPS) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_volume_edit_replays_keeps_shape_range_and_masks(name: str) -> None:
    images, masks = data_for(name)
    ctx = ctx_for(name, images, masks)
    pert = get(name)
    a = apply(name, images, masks, seed=7, ctx=ctx, **STRONG[name])
    b = apply(name, images, masks, seed=7, ctx=ctx, **STRONG[name])
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert a.images.shape == images.shape and a.images.dtype == images.dtype
    assert a.masks.shape == masks.shape and a.masks.dtype == masks.dtype
    assert float(a.images.min()) >= 0.0 and float(a.images.max()) <= 1.0
    assert not torch.equal(a.images, images), f"{name} at a strong setting left the volumes unchanged"
    if not pert.changes_mask:
        assert torch.equal(a.masks, masks)
    identity = pert.param(pert.strength).identity
    if identity is not None:
        same = apply(name, images, masks, seed=7, ctx=ctx, **{**STRONG[name], pert.strength: identity})
        assert torch.equal(same.images, images) and torch.equal(same.masks, masks)


@pytest.mark.parametrize("name", sorted(n for n, p in REGISTRY.items() if p.scope == "local"))
def test_local_volume_edits_stay_within_their_reach(name: str) -> None:
    images, masks = data_for(name)
    ctx = ctx_for(name, images, masks)
    out = apply(name, images, masks, seed=3, ctx=ctx, **STRONG[name])
    diff = changed(out.images, images)
    for i in range(len(images)):
        region = np.isin(masks[i, 0].numpy(), ctx.lesion_labels)
        allowed = reach(name, STRONG[name], region)
        assert diff[i].any(), f"{name}: volume {i} unchanged"
        outside = diff[i] & ~allowed[None]
        assert not outside.any(), f"{name}: {int(outside.sum())} voxels changed beyond the documented reach"


@pytest.mark.parametrize("name", sorted(n for n, p in REGISTRY.items() if p.scope == "global"))
def test_global_volume_edits_grow_with_strength(name: str) -> None:
    """Along its default sweep (mildest first), each global family moves a volume further from the clean one."""
    images, masks = brains(n=1)
    pert = get(name)
    dist = [float((apply(name, images, masks, seed=2, **{pert.strength: lev}).images - images).abs().mean())
            for lev in DEFAULT_SWEEPS[name]]
    assert all(a < b for a, b in zip(dist, dist[1:])), f"{name}: mean |change| {dist} not increasing"


def test_erase_lowers_the_lesion_contrast_in_3d() -> None:
    """Lesion contrast: Σ over contrasts of |mean(lesion) - mean(the 1-voxel shell around it)|; the 3D in-painting
    brings it near 0 (measured: 0.91 → 0.07 on this volume, where per-slice Telea in-painting left 0.22)."""
    images, masks = brains(n=1)
    les = (masks[0, 0] > 0).numpy()
    lesion, ring = torch.from_numpy(les), torch.from_numpy(dilate_ball(les, 1) & ~les)

    def contrast(x: torch.Tensor) -> float:
        return sum(float((x[0, c][lesion].mean() - x[0, c][ring].mean()).abs()) for c in range(x.shape[1]))

    c = [contrast(apply("lesion_erase", images, masks, seed=1, amount=a).images) for a in (0.0, 0.25, 0.5, 1.0)]
    assert all(a > b for a, b in zip(c, c[1:])), c
    assert c[-1] < 0.2 * c[0], c


# ---------------------------------------------------------------------------------------------- noise and draws


@FEW
@given(sigma=st.floats(0.02, 0.2), seed=st.integers(0, 2**16))
def test_rician_on_volumes_has_the_rician_statistics_per_contrast(sigma: float, seed: int) -> None:
    """Zero voxels become Rayleigh: mean sigma·sqrt(pi/2) (clipped at 1, negligible here) in every contrast; the
    noise is independent across contrasts (each is its own acquisition) and across voxels."""
    images = torch.zeros(1, 3, 16, 24, 24)
    out = apply("rician", images, torch.zeros(1, 1, 16, 24, 24, dtype=torch.int64), seed=seed, sigma=sigma).images[0]
    means = out.flatten(1).mean(1).numpy()
    assert np.allclose(means, sigma * np.sqrt(np.pi / 2), rtol=0.05)
    assert not torch.equal(out[0], out[1])
    centred = out.flatten(1) - out.flatten(1).mean(1, keepdim=True)
    corr = float((centred[0] * centred[1]).mean() / (centred[0].std() * centred[1].std()))
    assert abs(corr) < 0.06


@pytest.mark.parametrize("name", ["gaussian", "rician", "poisson"])
def test_voxel_noise_variance_grows_with_strength_in_3d(name: str) -> None:
    images = torch.full((1, 2, 16, 24, 24), 0.5)
    masks = torch.zeros(1, 1, 16, 24, 24, dtype=torch.int64)
    levels = DEFAULT_SWEEPS[name]
    var = [float(apply(name, images, masks, seed=0, **{get(name).strength: lev}).images.var()) for lev in levels]
    assert all(a < b for a, b in zip(var, var[1:])), var


@pytest.mark.parametrize("name", ["gaussian_blur", "bias_field", "kspace_spike", "gibbs", "ghosting",
                                  "boundary_blur", "gradient", "texture_flatten", "lesion_erase", "lesion_resize"])
def test_contrasts_of_a_volume_share_its_draws(name: str) -> None:
    """Identical contrasts stay identical: the field, spike, ghosting axis, ramp direction and fill noise are drawn
    once per volume; two volumes get different draws."""
    images, masks = brains(n=2)
    images = images[:, :1].expand(-1, 3, -1, -1, -1).contiguous()
    images[1] = images[0]
    masks[1] = masks[0]
    out = apply(name, images, masks, seed=11, ctx=PerturbContext(lesion_labels=(1, 2, 3)), **STRONG[name]).images
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 0], out[0, 2])
    if name not in {"gaussian_blur", "gibbs", "texture_flatten", "boundary_blur"}:  # the deterministic ones
        assert not torch.equal(out[0], out[1]), f"{name}: two volumes got the same draw"


# ---------------------------------------------------------------------------------------------- 3D, not slice by slice


@pytest.mark.parametrize("name", ["kspace_spike", "gibbs", "ghosting", "gaussian_blur", "bias_field"])
def test_artefacts_act_across_slices(name: str) -> None:
    """In 3D k-space (and with a 3D kernel or field) an artefact reaches slices that are empty in the input; a
    per-slice edit would leave them at 0 (the bias field multiplies, so it is checked on a constant volume)."""
    images = torch.zeros(1, 1, 16, 24, 24)
    images[0, 0, 6:10, 6:18, 6:18] = 0.8
    if name == "bias_field":
        images[:] = 0.5
    masks = torch.zeros(1, 1, 16, 24, 24, dtype=torch.int64)
    hits = []
    for seed in range(12):  # ghosting: the phase-encode axis is D for about a third of the seeds
        out = apply(name, images, masks, seed=seed, **STRONG[name]).images[0, 0]
        if name == "bias_field":
            per_slice = out.flatten(1).mean(1)
            hits.append(float(per_slice.max() - per_slice.min()) > 0.01)  # the field varies along D
        else:
            hits.append(bool(out[:5].abs().max() > 1e-3 or out[11:].abs().max() > 1e-3))
    assert any(hits), f"{name} never reached beyond the non-empty slices"


def ball(shape: tuple[int, int, int], centre: tuple[float, float, float], r: float) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= r * r


def test_morphology_is_3d_edits_reach_above_the_top_slice() -> None:
    """A ball lesion: the grown rim and the boundary band include the slices just above its top slice (a per-slice
    edit would stop at the lesion's last slice), and shrinking changes the top slices whole."""
    shape = (20, 24, 24)
    lesion = ball(shape, (9, 12, 12), 5)
    top = int(np.nonzero(lesion.any((1, 2)))[0].max())
    rng = np.random.default_rng(0)
    img = np.clip(0.4 + 0.3 * lesion + rng.normal(0, 0.02, shape), 0, 1)
    images = torch.from_numpy(img[None, None]).float()
    masks = torch.from_numpy(lesion[None, None].astype(np.int64))
    for name, params in (("lesion_resize", {"k": 2}), ("boundary_blur", {"sigma": 2.0, "width": 2})):
        diff = changed(apply(name, images, masks, seed=0, **params).images, images)[0, 0]
        assert diff[top + 1].any() and diff[top + 2].any(), name
        assert not diff[top + 3 :].any(), f"{name} reached beyond its 2-voxel bound"
    shrunk = changed(apply("lesion_resize", images, masks, seed=0, k=-2).images, images)[0, 0]
    assert shrunk[top].sum() == lesion[top].sum()  # the top cap lies within 2 voxels of the lesion's surface


def test_ball_morphology_matches_scipy_with_a_ball_footprint() -> None:
    rng = np.random.default_rng(4)
    m = ndimage.binary_opening(rng.random((14, 16, 18)) > 0.55, iterations=1)
    m[0, 3:8, 3:8] = True  # a face on the border: beyond the edge counts as background
    for r in (1, 2, 3):
        fp = ball((2 * r + 1,) * 3, (r, r, r), r)
        assert np.array_equal(dilate_ball(m, r), ndimage.binary_dilation(m, fp))
        assert np.array_equal(erode_ball(m, r), ndimage.binary_erosion(m, fp))


def test_vessel_gap_cuts_the_whole_cross_section_in_3d() -> None:
    trunk, _, _ = _tree()
    for seed in range(4):
        cut = _vessel_gaps(trunk, 1, 4, np.random.default_rng(seed))
        assert cut.any()
        assert ndimage.label(trunk & ~cut, structure=np.ones((3, 3, 3)))[1] == 2  # the tube falls apart


def test_vessel_break_on_volumes_breaks_the_tree_apart() -> None:
    images, masks, _ = vessel_volumes(1)
    tree = masks[0, 0].numpy() > 0
    for seed in range(3):  # two gaps: one that lands on a branch tip only shortens the branch
        out = apply("vessel_break", images, masks, seed=seed, gaps=2, length=4).images
        intact = tree & ~changed(out, images)[0].any(0)
        assert ndimage.label(intact, structure=np.ones((3, 3, 3)))[1] >= 2


def test_3d_skeleton_is_a_thin_connected_centreline() -> None:
    trunk, twig, bough = _tree()
    skel = skeletonize(trunk | twig | bough)
    assert (skel <= (trunk | twig | bough)).all()
    assert ndimage.label(skel, structure=np.ones((3, 3, 3)))[1] == 1
    assert 0.8 * 33 <= skel[trunk].sum() <= 33 + 6  # about one voxel per unit of length (plus junction stubs)
    on_axis = np.hypot(*(np.argwhere(skel & trunk & ~dilate_ball(twig | bough, 2))[:, :2] - [8, 14]).T)
    assert on_axis.max() <= 1.0  # along the trunk's axis
    nb = ndimage.convolve(skel.astype(int), np.ones((3, 3, 3), int), mode="constant") - 1
    assert (nb[skel] <= 4).all()  # thin: no voxel with a full neighbourhood


def test_vessel_prune_removes_the_short_twig_and_keeps_the_long_branches() -> None:
    images, masks, parts = vessel_volumes(1)
    out = apply("vessel_prune", images, masks, seed=0, min_area=60).images
    diff = changed(out, images)[0].any(0)
    twig_only = parts["twig"] & ~dilate_ball(parts["trunk"] | parts["bough"], 1)
    assert diff[twig_only].mean() > 0.9
    assert not diff[erode_ball(parts["trunk"], 1) & ~dilate_ball(parts["twig"], 3)].any()
    assert not diff[parts["bough"] & ~dilate_ball(parts["trunk"], 3)].any()


# ---------------------------------------------------------------------------------------------- set level


def test_set_shifts_move_whole_volumes() -> None:
    images, masks = brains(n=2)
    ctx = ctx_for("external_duplication", images, masks)
    items = [*images, *ctx.train_images]
    for name in ("external_duplication", "internal_duplication", "mode_collapse", "density_shift"):
        params = {**STRONG[name], **({"augment": 0} if name == "external_duplication" else {})}
        out = apply(name, images, masks, seed=5, ctx=ctx, **params)
        assert out.images.shape == images.shape
        for i in range(len(images)):
            assert any(torch.equal(out.images[i], x) for x in items), f"{name}: item {i} is not a whole volume of the sets"


def test_duplication_disguise_rotates_volumes_in_the_axial_plane() -> None:
    from mriq_validate.perturb.shifts import _aug_rotate

    vol = np.zeros((6, 20, 20))
    vol[2, 4:16, 9:11] = 1.0
    mask = (vol > 0).astype(np.int64)
    img, msk = _aug_rotate(vol, mask, vol, np.random.default_rng(0))
    assert img.shape == vol.shape and msk.shape == mask.shape
    assert np.abs(img[[0, 1, 3, 4, 5]]).max() == 0  # no slice mixing: the rotation is about the D axis
    assert img[2].sum() == pytest.approx(vol[2].sum(), rel=0.05) and not np.allclose(img[2], vol[2])


def test_set_shift_needs_training_volumes_of_the_same_shape() -> None:
    images, masks = brains(n=2)
    train = PerturbContext(images[:, :, :16].clone(), masks[:, :, :16].clone())
    with pytest.raises(MetricError, match="do not match"):
        apply("external_duplication", images, masks, seed=0, ctx=train, p=0.5)


# ---------------------------------------------------------------------------------------------- figure


def test_volume_figure_shows_the_lesion_centroid_slice(tmp_path) -> None:
    images, masks = brains(n=1)
    d = shown_slice(masks)
    depth = (masks[0, 0] > 0).flatten(1).sum(1).double()
    assert d == round(float((depth * torch.arange(len(depth))).sum() / depth.sum()))
    assert depth[d] > 0
    assert shown_slice(torch.zeros_like(masks)) == masks.shape[2] // 2
    out = perturbation_figure(images[0], masks[0, 0], tmp_path / "vol.png",
                              sweeps={"gaussian_blur": [1.0], "lesion_erase": [1.0], "mode_collapse": [0.5]}, channel=1)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="does not match"):
        perturbation_figure(images[0], masks[0, 0, :8], tmp_path / "bad.png", sweeps={"gaussian_blur": [1.0]})
