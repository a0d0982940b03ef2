"""Perturbation registry: replay, identity, strength monotonicity, locality, set-level counts, error messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from mriq_validate.errors import MetricError
from mriq_validate.perturb import REGISTRY, Param, PerturbContext, apply, get
from mriq_validate.perturb.base import register
from mriq_validate.perturb.figure import perturbation_figure
from mriq_validate.perturb.shifts import AUGMENTATIONS, n_of
from mriq_validate.perturb.sweeps import DEFAULT_SWEEPS

FAST = settings(max_examples=20, deadline=None, database=None)
FEW = settings(max_examples=8, deadline=None, database=None)

EXPECTED = {
    "gaussian": ("global", "sigma"), "poisson": ("global", "lam"), "rician": ("global", "sigma"),
    "gaussian_blur": ("global", "sigma"), "bias_field": ("global", "coeff"), "kspace_spike": ("global", "intensity"),
    "gibbs": ("global", "alpha"), "ghosting": ("global", "intensity"),
    "boundary_blur": ("local", "sigma"), "gradient": ("local", "alpha"), "texture_flatten": ("local", "beta"),
    "lesion_erase": ("local", "amount"), "lesion_resize": ("local", "k"), "vessel_break": ("local", "gaps"),
    "vessel_prune": ("local", "min_area"), "one_contrast_erase": ("local", "amount"),
    "external_duplication": ("set", "p"), "internal_duplication": ("set", "p"), "mode_collapse": ("set", "fraction"),
    "density_shift": ("set", "weight"),
}
LOCAL = sorted(n for n, (s, _) in EXPECTED.items() if s == "local")
NOT_SET = sorted(n for n, (s, _) in EXPECTED.items() if s != "set")
VESSEL = {"vessel_break", "vessel_prune"}
# Strong, non-identity settings used to probe locality (the allowed change region is checked separately).
STRONG = {
    "boundary_blur": {"sigma": 3.0, "width": 3}, "gradient": {"alpha": 0.8}, "texture_flatten": {"beta": 1.0},
    "lesion_erase": {"amount": 1.0}, "lesion_resize": {"k": 3}, "vessel_break": {"gaps": 4, "length": 4},
    "vessel_prune": {"min_area": 60}, "one_contrast_erase": {"amount": 1.0, "halo": 1},
}


# ---------------------------------------------------------------------------------------------- synthetic data


def blobs(seed: int, size: int, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """n slices: smooth textured tissue with 1-2 elliptical lesions (oedema 2 around a core 1 or 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images, masks = [], []
    for _ in range(n):
        img = 0.35 + 0.15 * ndimage.gaussian_filter(rng.standard_normal((size, size)), 2.0) * 3
        lab = np.zeros((size, size), np.int64)
        for _ in range(int(rng.integers(1, 3))):
            cy, cx = rng.uniform(size * 0.25, size * 0.75, 2)
            ry, rx = rng.uniform(3, size / 5, 2)
            d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            lab[d <= 1] = 2
            lab[d <= 0.35] = int(rng.choice([1, 3]))
        img = img + 0.3 * (lab == 3) - 0.2 * (lab == 1) + 0.1 * (lab == 2) + rng.normal(0, 0.02, img.shape)
        images.append(np.clip(img, 0, 1))
        masks.append(lab)
    return torch.from_numpy(np.stack(images)[:, None]).float(), torch.from_numpy(np.stack(masks)[:, None])


def vessels(seed: int, size: int, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """n slices with a bright branching polyline 'vessel' (width 1-3 px, label 1) on dim tissue."""
    import cv2

    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        lab = np.zeros((size, size), np.uint8)
        pts = [tuple(int(v) for v in rng.integers(4, size - 4, 2))]
        for _ in range(6):
            start = pts[int(rng.integers(len(pts)))]
            end = tuple(int(v) for v in np.clip(np.array(start) + rng.integers(-size // 3, size // 3, 2), 2, size - 3))
            cv2.line(lab, start, end, 1, thickness=int(rng.integers(1, 4)))
            pts.append(end)
        img = 0.2 + 0.05 * ndimage.gaussian_filter(rng.standard_normal((size, size)), 2.0) + 0.6 * lab + rng.normal(0, 0.02, lab.shape)
        images.append(np.clip(img, 0, 1))
        masks.append(lab.astype(np.int64))
    return torch.from_numpy(np.stack(images)[:, None]).float(), torch.from_numpy(np.stack(masks)[:, None])


def data_for(name: str, seed: int, size: int, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return vessels(seed, size, n) if name in VESSEL else blobs(seed, size, n)


def set_context(seed: int, size: int, n: int) -> PerturbContext:
    """Training items distinct from the evaluated ones, and a site covariate with every site present."""
    train_i, train_m = blobs(seed + 10_000, size, 12)
    sites = np.random.default_rng(seed).integers(0, 3, n)
    sites[:3] = [0, 1, 2]
    return PerturbContext(train_i, train_m, {"site": sites}, lesion_labels=(1, 2, 3))


def ctx_for(name: str, seed: int, size: int, n: int) -> PerturbContext:
    if REGISTRY[name].scope == "set":
        return set_context(seed, size, n)
    return PerturbContext(lesion_labels=(1,) if name in VESSEL else (1, 2, 3))


def allowed_region(name: str, params: dict, region: np.ndarray) -> np.ndarray:
    """Where a local edit may change pixels (documented in each perturbation's docstring)."""
    if name == "boundary_blur":
        r = int(params["width"])
        y, x = np.mgrid[-r : r + 1, -r : r + 1]
        return ndimage.binary_dilation(region, x * x + y * y <= r * r)
    if name == "lesion_resize" and params["k"] > 0:
        return ndimage.binary_dilation(region, np.ones((3, 3), bool), iterations=params["k"])
    if name in VESSEL:
        return ndimage.binary_dilation(region, np.ones((3, 3), bool))
    if name == "one_contrast_erase":
        r = int(params.get("halo", get(name).param("halo").default))
        y, x = np.mgrid[-r : r + 1, -r : r + 1]
        return ndimage.binary_dilation(region, x * x + y * y <= r * r)
    return region


# ---------------------------------------------------------------------------------------------- registry


def test_registry_holds_every_perturbation_with_documented_params() -> None:
    assert set(REGISTRY) == set(EXPECTED)
    for name, (scope, strength) in EXPECTED.items():
        pert = get(name)
        assert (pert.scope, pert.strength) == (scope, strength), name
        assert pert.doc, f"{name} has no docstring"
        assert pert.changes_mask == (scope == "set"), name
        for p in pert.params:
            assert p.doc and p.low <= p.default <= p.high, (name, p)
            assert p.identity is None or p.low <= p.identity <= p.high, (name, p)
            assert p.identity is None or p.name == strength, (name, p)  # only the strength has an identity value
    assert get("poisson").param("lam").identity is None  # no identity: the strength is 1/lam


def test_importing_the_package_registers_every_perturbation() -> None:
    """The package ``__init__`` imports the implementation modules, which register on import; the registry module
    itself loads nothing on demand. A fresh interpreter that imports only the registry module sees all of them."""
    code = "import json, mriq_validate.perturb.base as base; print(json.dumps(sorted(base.REGISTRY)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == sorted(EXPECTED)


@pytest.fixture
def scratch_registry():
    """Register test-only perturbations with the public decorator; they are removed afterwards."""
    added: list[str] = []

    def add(name: str, fn, **declared) -> None:
        register(name, **declared)(fn)
        added.append(name)

    yield add
    for name in added:
        REGISTRY.pop(name, None)


def test_identity_strength_is_handled_by_apply_without_calling_the_edit(scratch_registry) -> None:
    def edit(images, masks, rng, ctx, *, amount):
        raise AssertionError("called")

    scratch_registry("test_never_at_identity", edit, params=(Param("amount", 0.5, 0.0, 1.0, identity=0.0, doc="d"),),
                     scope="global", strength="amount")
    images, masks = blobs(0, 32)
    out = apply("test_never_at_identity", images, masks, seed=0, amount=0.0)
    assert torch.equal(out.images, images) and torch.equal(out.masks, masks)
    assert out.images.data_ptr() != images.data_ptr() and out.masks.data_ptr() != masks.data_ptr()
    with pytest.raises(AssertionError, match="called"):  # any other strength runs the edit
        apply("test_never_at_identity", images, masks, seed=0, amount=0.1)


def test_an_undeclared_mask_change_is_an_error(scratch_registry) -> None:
    def relabel(images, masks, rng, ctx, *, k):
        return images, masks + 1

    param = (Param("k", 1, 0, 2, identity=0, doc="d", integer=True),)
    scratch_registry("test_relabel_undeclared", relabel, params=param, scope="global", strength="k")
    scratch_registry("test_relabel_declared", relabel, params=param, scope="set", strength="k", changes_mask=True)
    images, masks = blobs(0, 32)
    with pytest.raises(MetricError, match=r"'test_relabel_undeclared' is declared not to change masks \(changes_mask=False\)"):
        apply("test_relabel_undeclared", images, masks, seed=0)
    assert torch.equal(apply("test_relabel_declared", images, masks, seed=0).masks, masks + 1)


def test_only_the_strength_parameter_may_declare_an_identity() -> None:
    params = (Param("a", 0.5, 0.0, 1.0, identity=0.0, doc="d"), Param("b", 1.0, 0.0, 2.0, identity=1.0, doc="d"))
    with pytest.raises(ValueError, match="only the strength parameter 'a'"):
        register("test_two_identities", params=params, scope="global", strength="a")(lambda *a, **k: a[:2])
    assert "test_two_identities" not in REGISTRY


def test_default_sweeps_cover_every_perturbation_with_valid_levels() -> None:
    assert set(DEFAULT_SWEEPS) == set(REGISTRY)
    for name, levels in DEFAULT_SWEEPS.items():
        pert = get(name)
        assert 3 <= len(levels) <= 5, name
        for level in levels:
            pert.resolve({pert.strength: level})
            assert level != pert.param(pert.strength).identity, name


# ---------------------------------------------------------------------------------------------- replay and identity


@pytest.mark.parametrize("name", sorted(EXPECTED))
@FEW
@given(seed=st.integers(0, 2**16), size=st.sampled_from([32, 48]))
def test_same_seed_gives_identical_output(name: str, seed: int, size: int) -> None:
    images, masks = data_for(name, seed, size, n=6)
    ctx = ctx_for(name, seed, size, 6)
    a = apply(name, images, masks, seed=seed, ctx=ctx)
    b = apply(name, images, masks, seed=seed, ctx=ctx)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert type(a.images) is torch.Tensor and a.images.dtype == images.dtype and a.images.shape == images.shape
    assert a.masks.shape == masks.shape and a.masks.dtype == masks.dtype
    assert float(a.images.min()) >= 0.0 and float(a.images.max()) <= 1.0
    assert a.record == {"name": name, "params": get(name).resolve({}), "seed": seed, "scope": EXPECTED[name][0]}


@pytest.mark.parametrize("name", ["gaussian", "poisson", "rician", "bias_field", "kspace_spike", "ghosting",
                                  "gradient", "lesion_erase", "vessel_break", "internal_duplication"])
def test_different_seeds_give_different_draws(name: str) -> None:
    images, masks = data_for(name, 3, 48, n=8)
    ctx = ctx_for(name, 3, 48, 8)
    a = apply(name, images, masks, seed=1, ctx=ctx)
    b = apply(name, images, masks, seed=2, ctx=ctx)
    assert not torch.equal(a.images, b.images)


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if get(n).param(EXPECTED[n][1]).identity is not None))
@FEW
@given(seed=st.integers(0, 2**16))
def test_identity_strength_returns_an_exact_copy(name: str, seed: int) -> None:
    images, masks = data_for(name, seed, 32, n=5)
    pert = get(name)
    out = apply(name, images, masks, seed=seed, ctx=ctx_for(name, seed, 32, 5), **{pert.strength: pert.param(pert.strength).identity})
    assert torch.equal(out.images, images) and torch.equal(out.masks, masks)
    assert out.images.data_ptr() != images.data_ptr()  # a copy, never the caller's tensor


@pytest.mark.parametrize("name", sorted(n for n, (s, _) in EXPECTED.items() if s != "set"))
def test_default_strength_changes_the_images(name: str) -> None:
    images, masks = data_for(name, 5, 48, n=3)
    out = apply(name, images, masks, seed=0, ctx=ctx_for(name, 5, 48, 3))
    assert not torch.equal(out.images, images)


# ---------------------------------------------------------------------------------------------- noise strength


@pytest.mark.parametrize("name", ["gaussian", "rician"])
def test_noise_variance_grows_with_sigma(name: str) -> None:
    flat = torch.full((4, 1, 64, 64), 0.5)
    masks = torch.zeros_like(flat, dtype=torch.long)
    variances = [float(apply(name, flat, masks, seed=0, sigma=s).images.var()) for s in (0.01, 0.02, 0.05, 0.1)]
    assert variances == sorted(variances) and variances[-1] > 10 * variances[0]
    if name == "gaussian":
        assert variances[2] == pytest.approx(0.05**2, rel=0.1)


def test_poisson_variance_grows_with_one_over_lam() -> None:
    flat = torch.full((4, 1, 64, 64), 0.5)
    masks = torch.zeros_like(flat, dtype=torch.long)
    lams = (1000.0, 300.0, 100.0, 30.0)
    variances = [float(apply("poisson", flat, masks, seed=0, lam=lam).images.double().var()) for lam in lams]
    assert variances == sorted(variances)
    for lam, v in zip(lams, variances):
        assert v == pytest.approx(0.5 / lam, rel=0.15)  # Var[Poisson(lam·I)/lam] = I/lam


def test_poisson_mean_is_preserved() -> None:
    flat = torch.full((2, 1, 64, 64), 0.3)
    out = apply("poisson", flat, torch.zeros_like(flat, dtype=torch.long), seed=1, lam=50.0)
    assert float(out.images.mean()) == pytest.approx(0.3, abs=0.01)


# ---------------------------------------------------------------------------------------------- localised edits


@pytest.mark.parametrize("name", LOCAL)
@FAST
@given(seed=st.integers(0, 2**16), size=st.sampled_from([32, 48, 64]))
def test_local_edits_change_nothing_outside_the_lesion(name: str, seed: int, size: int) -> None:
    images, masks = data_for(name, seed, size)
    params = STRONG[name]
    ctx = ctx_for(name, seed, size, 3)
    out = apply(name, images, masks, seed=seed, ctx=ctx, **params)
    assert torch.equal(out.masks, masks)
    region = (masks > 0).numpy()
    for i in range(images.shape[0]):
        outside = ~allowed_region(name, params, region[i, 0])
        assert np.array_equal(out.images[i, 0].numpy()[outside], images[i, 0].numpy()[outside]), f"{name} changed pixels outside the lesion"


@FAST
@given(seed=st.integers(0, 2**16), k=st.integers(-5, 5))
def test_lesion_resize_stays_in_its_documented_region(seed: int, k: int) -> None:
    images, masks = blobs(seed, 48)
    out = apply("lesion_resize", images, masks, seed=seed, k=k)
    region = (masks > 0).numpy()
    for i in range(images.shape[0]):
        outside = ~allowed_region("lesion_resize", {"k": k}, region[i, 0])
        assert np.array_equal(out.images[i, 0].numpy()[outside], images[i, 0].numpy()[outside])
    assert torch.equal(out.masks, masks)


def test_lesion_labels_restrict_the_edited_region() -> None:
    images, masks = blobs(7, 48)
    ctx = PerturbContext(lesion_labels=(2,))
    out = apply("texture_flatten", images, masks, seed=0, ctx=ctx, beta=1.0)
    changed = (out.images != images).numpy()
    assert changed.any() and not changed[(masks != 2).numpy()].any()


def test_texture_flatten_keeps_the_lesion_mean_and_removes_its_spread() -> None:
    images, masks = blobs(11, 48)
    out = apply("texture_flatten", images, masks, seed=0, beta=1.0)
    for i in range(3):
        m = masks[i, 0] > 0
        assert float(out.images[i, 0][m].mean()) == pytest.approx(float(images[i, 0][m].mean()), abs=1e-5)
        assert float(out.images[i, 0][m].std()) < 1e-5


def test_gradient_is_a_signed_ramp_of_the_requested_amplitude() -> None:
    images, masks = blobs(2, 48)
    out = apply("gradient", images, masks, seed=0, alpha=0.5)
    ratio = (out.images / images.clamp_min(1e-6))[masks > 0]
    assert float(ratio.min()) >= 0.5 - 1e-4 and float(ratio.max()) <= 1.5 + 1e-4
    assert float(ratio.min()) < 0.8 and float(ratio.max()) > 1.2


def test_lesion_erase_removes_lesion_contrast() -> None:
    images, masks = blobs(4, 64)
    out = apply("lesion_erase", images, masks, seed=0, amount=1.0)
    for i in range(3):
        m = (masks[i, 0] > 0).numpy()
        ring = ndimage.binary_dilation(m, iterations=4) & ~m
        before = abs(images[i, 0].numpy()[m].mean() - images[i, 0].numpy()[ring].mean())
        after = abs(out.images[i, 0].numpy()[m].mean() - out.images[i, 0].numpy()[ring].mean())
        assert after < before


@pytest.mark.parametrize("name", LOCAL)
def test_local_edit_on_an_empty_mask_names_the_perturbation_and_the_mask(name: str) -> None:
    images, masks = data_for(name, 0, 32)
    masks = masks.clone()
    masks[1] = 0
    with pytest.raises(MetricError, match=rf"{name}.*\[1\]"):
        apply(name, images, masks, seed=0, ctx=ctx_for(name, 0, 32, 3), **STRONG[name])
    strength = get(name).strength  # a local edit needs its lesion even at the identity strength (scope is enforced first)
    with pytest.raises(MetricError, match=rf"{name}.*\[1\]"):
        apply(name, images, masks, seed=0, ctx=ctx_for(name, 0, 32, 3), **{strength: get(name).param(strength).identity})


# ---------------------------------------------------------------------------------------------- set-level shifts


def _equal_rows(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """eq[i, j]: item i of a equals item j of b exactly."""
    return (a.flatten(1)[:, None, :] == b.flatten(1)[None, :, :]).all(-1).numpy()


@FAST
@given(seed=st.integers(0, 2**16), n=st.integers(4, 20), p=st.floats(0.0, 1.0))
def test_external_duplication_replaces_exactly_round_p_n_items(seed: int, n: int, p: float) -> None:
    images, masks = blobs(seed, 32, n)
    ctx = set_context(seed, 32, n)
    out = apply("external_duplication", images, masks, seed=seed, ctx=ctx, p=p)
    from_train = _equal_rows(out.images, ctx.train_images)
    k = n_of(p, n)
    copied = from_train.any(1)
    assert int(copied.sum()) == k
    for i in np.flatnonzero(copied):  # the mask came along with its training image
        assert torch.equal(out.masks[i], ctx.train_masks[int(np.flatnonzero(from_train[i])[0])])
    kept = ~copied
    assert torch.equal(out.images[kept], images[kept]) and torch.equal(out.masks[kept], masks[kept])


def test_n_of_rounds_halves_up() -> None:
    assert [n_of(p, 10) for p in (0.05, 0.15, 0.25, 0.3, 0.45)] == [1, 2, 3, 3, 5]
    assert n_of(0.0, 7) == 0 and n_of(1.0, 7) == 7


@FEW
@given(seed=st.integers(0, 2**16), n=st.integers(6, 16), p=st.sampled_from([0.05, 0.15, 0.3, 0.45]))
def test_external_duplication_with_augmentation_disguises_the_copies(seed: int, n: int, p: float) -> None:
    images, masks = blobs(seed, 32, n)
    ctx = set_context(seed, 32, n)
    out = apply("external_duplication", images, masks, seed=seed, ctx=ctx, p=p, augment=1)
    changed = ~(out.images == images).flatten(1).all(1).numpy()
    assert int(changed.sum()) == n_of(p, n)
    assert not _equal_rows(out.images, ctx.train_images).any()  # every copy is disguised
    kept = ~changed
    assert torch.equal(out.images[kept], images[kept]) and torch.equal(out.masks[kept], masks[kept])


def test_each_disguise_is_the_documented_light_augmentation() -> None:
    noise, rotate, scale, blend = AUGMENTATIONS
    rng = np.random.default_rng(0)
    images, masks = blobs(3, 64, 2)
    img, other, mask = images[0, 0].double().numpy(), images[1, 0].double().numpy(), masks[0, 0].numpy()
    out, m = noise(img, mask, other, rng)
    assert np.std(out - img) == pytest.approx(0.01, rel=0.1) and m is mask
    out, m = scale(img, mask, other, rng)
    ratio = out / img
    assert np.allclose(ratio, ratio.flat[0]) and 0.9 <= ratio.flat[0] <= 1.1
    out, m = blend(img, mask, other, rng)
    a = float(((out - other) * (img - other)).sum() / ((img - other) ** 2).sum())
    assert 0.6 <= a <= 0.8 and np.allclose(out, a * img + (1 - a) * other) and m is mask
    out, m = rotate(img, mask, other, rng)
    best = max(range(-10, 11), key=lambda deg: (ndimage.rotate(mask, deg, reshape=False, order=0) == m).mean())
    assert (ndimage.rotate(mask, best, reshape=False, order=0) == m).mean() > 0.99 and not np.array_equal(m, mask)
    assert set(np.unique(m)) <= set(np.unique(mask))


@FAST
@given(seed=st.integers(0, 2**16), n=st.integers(3, 20), p=st.floats(0.0, 0.95))
def test_internal_duplication_overwrites_exactly_round_p_n_items_with_other_items(seed: int, n: int, p: float) -> None:
    images, masks = blobs(seed, 32, n)
    k = n_of(p, n)
    if k >= n:
        with pytest.raises(MetricError, match="no item to copy"):
            apply("internal_duplication", images, masks, seed=seed, p=p)
        return
    out = apply("internal_duplication", images, masks, seed=seed, p=p)
    changed = ~(out.images == images).flatten(1).all(1).numpy()
    assert int(changed.sum()) == k
    eq = _equal_rows(out.images, out.images)
    np.fill_diagonal(eq, False)
    for i in np.flatnonzero(changed):  # a copy of an item that is still in the set, mask included
        j = int(np.flatnonzero(eq[i] & ~changed)[0])
        assert torch.equal(out.masks[i], out.masks[j])
    assert len({bytes(x.numpy().tobytes()) for x in out.images}) == n - k


@FAST
@given(seed=st.integers(0, 2**16), n=st.integers(6, 20), fraction=st.floats(0.0, 1.0), category=st.sampled_from([1, 2]))
def test_mode_collapse_cuts_the_category_share_by_the_fraction(seed: int, n: int, fraction: float, category: int) -> None:
    images, masks = blobs(seed, 32, n)
    label = {1: 1, 2: 3}[category]
    member = (masks == label).flatten(1).any(1).numpy()
    n_cat = int(member.sum())
    if member.all() and n_of(fraction, n_cat) > 0:
        with pytest.raises(MetricError, match=f"every image is in category {category}"):
            apply("mode_collapse", images, masks, seed=seed, fraction=fraction, category=category)
        return
    out = apply("mode_collapse", images, masks, seed=seed, fraction=fraction, category=category)
    after = (out.masks == label).flatten(1).any(1).numpy()
    assert int(after.sum()) == n_cat - n_of(fraction, n_cat)
    assert len(out.images) == n


def test_mode_collapse_uses_covariates_when_given() -> None:
    images, masks = blobs(5, 32, 10)
    px = np.arange(10) * 100  # items 5..9 are 'large'
    out = apply("mode_collapse", images, masks, seed=0, ctx=PerturbContext(covariates={"tumour_px": px}), fraction=1.0, category=0)
    eq = _equal_rows(out.images, images)
    sources = eq.argmax(1)
    assert eq.any(1).all() and (px[sources] <= np.median(px)).all()


@FAST
@given(seed=st.integers(0, 2**16), n=st.integers(6, 20), weight=st.floats(0.0, 1.0), site=st.integers(0, 2))
def test_density_shift_sets_the_share_of_the_site(seed: int, n: int, weight: float, site: int) -> None:
    images, masks = blobs(seed, 32, n)
    ctx = set_context(seed, 32, n)
    sites = ctx.covariates["site"]
    out = apply("density_shift", images, masks, seed=seed, ctx=ctx, weight=weight, site=site)
    eq = _equal_rows(out.images, images)
    assert eq.any(1).all()  # every output item is an input item
    src = eq.argmax(1)
    assert int((sites[src] == site).sum()) == n_of(weight, n)
    assert torch.equal(out.masks, masks[torch.as_tensor(src)])
    untouched = src == np.arange(n)
    assert int((~untouched).sum()) == abs(n_of(weight, n) - int((sites == site).sum()))


def test_set_level_errors_say_what_is_missing() -> None:
    images, masks = blobs(0, 32, 6)
    with pytest.raises(MetricError, match="training images"):
        apply("external_duplication", images, masks, seed=0, p=0.5)
    with pytest.raises(MetricError, match="covariate 'site'"):
        apply("density_shift", images, masks, seed=0, weight=0.5)
    with pytest.raises(MetricError, match="has 2 values but the set has 6"):
        apply("density_shift", images, masks, seed=0, ctx=PerturbContext(covariates={"site": np.array([0, 1])}), weight=0.5)
    with pytest.raises(MetricError, match="none"):
        apply("density_shift", images, masks, seed=0, ctx=PerturbContext(covariates={"site": np.zeros(6, int)}), weight=0.5, site=2)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_out_of_range_strength_names_the_value(name: str) -> None:
    pert = get(name)
    p = pert.param(pert.strength)
    images, masks = data_for(name, 0, 32)
    for bad in (p.low - 1, p.high + 1):
        with pytest.raises(MetricError, match=rf"{name}.*{p.name}={re.escape(str(bad))} is out of range"):
            apply(name, images, masks, seed=0, ctx=ctx_for(name, 0, 32, 3), **{p.name: bad})


def test_unknown_perturbation_and_parameter_are_named() -> None:
    images, masks = blobs(0, 32)
    with pytest.raises(MetricError, match="unknown perturbation 'salt_pepper'"):
        apply("salt_pepper", images, masks, seed=0)
    with pytest.raises(MetricError, match=r"unknown parameter\(s\) \['std'\]"):
        apply("gaussian", images, masks, seed=0, std=0.1)
    with pytest.raises(MetricError, match="sigma=nan"):
        apply("gaussian", images, masks, seed=0, sigma=float("nan"))


# ---------------------------------------------------------------------------------------------- figure


def test_perturbation_figure_writes_a_png(tmp_path) -> None:
    images, masks = blobs(1, 48, 1)
    sweeps = {"gaussian": [0.05, 0.1], "lesion_erase": [1.0], "vessel_break": [3], "internal_duplication": [0.1]}
    out = perturbation_figure(images[0], masks[0], tmp_path / "fig" / "perturbations.png", sweeps=sweeps, seed=3)
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="one 2D slice"):
        perturbation_figure(*blobs(1, 48, 2), tmp_path / "bad.png", sweeps=sweeps)


# ---------------------------------------------------------------------------------------------- several contrasts

NOISE = {"gaussian", "rician", "poisson"}
ONE_CONTRAST = {"one_contrast_erase"}  # edits one contrast of each item on purpose (tests/test_constraint.py)


def widen(images: torch.Tensor) -> torch.Tensor:
    """Three distinct contrasts with the same anatomy: the slice, its square and its negative."""
    return torch.cat([images, images**2, 1 - images], 1)


def contrast_ctx(name: str, seed: int, size: int, n: int, grow=widen) -> PerturbContext:
    """``ctx_for`` with the training images given the same contrasts as the evaluated ones."""
    ctx = ctx_for(name, seed, size, n)
    if ctx.train_images is None:
        return ctx
    return PerturbContext(grow(ctx.train_images), ctx.train_masks, ctx.covariates, ctx.lesion_labels)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_several_contrasts_replay_keep_masks_and_identity(name: str) -> None:
    """C = 3: same seed → same output; masks kept unless declared; identity strength → exact copy; set-level edits move
    whole items (every contrast with its mask)."""
    images, masks = data_for(name, 11, 32, n=6)
    x = widen(images)
    ctx = contrast_ctx(name, 11, 32, 6)
    pert = get(name)
    a, b = (apply(name, x, masks, seed=4, ctx=ctx) for _ in range(2))
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert a.images.shape == x.shape and a.images.dtype == x.dtype and a.masks.shape == masks.shape
    if not pert.changes_mask:
        assert torch.equal(a.masks, masks)
    if pert.param(pert.strength).identity is not None:
        same = apply(name, x, masks, seed=4, ctx=ctx, **{pert.strength: pert.param(pert.strength).identity})
        assert torch.equal(same.images, x) and torch.equal(same.masks, masks)
    if pert.scope == "set":
        pool = [(img, m) for img, m in zip(x, masks)] + [(img, m) for img, m in zip(ctx.train_images, ctx.train_masks)] \
            if ctx.train_images is not None else list(zip(x, masks))
        for img, m in zip(a.images, a.masks):
            assert any(torch.equal(img, pi) and torch.equal(m, pm) for pi, pm in pool), f"{name} split an item"


@pytest.mark.parametrize("name, params", [(n, {}) for n in sorted(set(EXPECTED) - NOISE - ONE_CONTRAST)] + [("external_duplication", {"augment": 1, "p": 0.5})])
def test_every_contrast_gets_the_same_edit(name: str, params: dict) -> None:
    """Identical contrasts stay identical, and each equals the one-contrast result of the same seed: the edit's
    parameters and per-slice draws (field, spike, ghosts, ramp, gaps, fill, disguise) are the same for every contrast."""
    images, masks = data_for(name, 12, 32, n=6)
    x = images.repeat(1, 3, 1, 1)
    one = apply(name, images, masks, seed=9, ctx=contrast_ctx(name, 12, 32, 6, grow=lambda t: t), **params)
    out = apply(name, x, masks, seed=9, ctx=contrast_ctx(name, 12, 32, 6, grow=lambda t: t.repeat(1, 3, 1, 1)), **params)
    for k in range(3):
        assert torch.equal(out.images[:, k:k + 1], one.images), f"{name}: contrast {k} differs from the one-contrast edit"
    assert torch.equal(out.masks, one.masks)


@pytest.mark.parametrize("name, params", [("gaussian", {"sigma": 0.05}), ("rician", {"sigma": 0.05}), ("poisson", {"lam": 100.0})])
def test_noise_is_drawn_per_contrast_at_the_same_strength(name: str, params: dict) -> None:
    """Each contrast is its own acquisition: independent noise of the same variance in every channel, equal to the
    one-contrast variance."""
    flat = torch.full((4, 3, 64, 64), 0.5)
    masks = torch.zeros((4, 1, 64, 64), dtype=torch.long)
    resid = (apply(name, flat, masks, seed=2, **params).images.double() - 0.5).transpose(0, 1).flatten(1)  # 3 × pixels
    one = float((apply(name, flat[:, :1], masks, seed=2, **params).images.double() - 0.5).var())
    variances = resid.var(1)
    assert all(float(v) == pytest.approx(one, rel=0.1) for v in variances), (variances, one)
    corr = torch.corrcoef(resid)
    assert float((corr - torch.eye(3, dtype=corr.dtype)).abs().max()) < 0.05


@pytest.mark.parametrize("name", LOCAL)
def test_local_edits_of_several_contrasts_stay_in_the_lesion(name: str) -> None:
    images, masks = data_for(name, 13, 48)
    x = widen(images)
    params = STRONG[name]
    out = apply(name, x, masks, seed=5, ctx=ctx_for(name, 13, 48, 3), **params)
    region = (masks > 0).numpy()
    for i in range(x.shape[0]):
        outside = ~allowed_region(name, params, region[i, 0])
        for k in range(3):
            assert np.array_equal(out.images[i, k].numpy()[outside], x[i, k].numpy()[outside]), f"{name} changed contrast {k} outside"


def test_texture_flatten_uses_each_contrasts_own_lesion_mean() -> None:
    images, masks = blobs(14, 48)
    x = widen(images)
    out = apply("texture_flatten", x, masks, seed=0, beta=1.0).images
    lesion = (masks > 0).expand_as(x)
    for i in range(x.shape[0]):
        for k in range(3):
            inside = lesion[i, k]
            assert float(out[i, k][inside].std()) < 1e-6
            assert float(out[i, k][inside].mean()) == pytest.approx(float(x[i, k][inside].mean()), abs=1e-5)


def test_images_and_masks_of_other_shapes_are_refused() -> None:
    images, masks = blobs(15, 32)
    with pytest.raises(MetricError, match=r"perturbation 'gaussian': images \(3, 3, 32, 32\) and masks \(3, 3, 32, 32\); expected images "
                                          r"N×C×H×W \(one channel per contrast\) and masks N×1×H×W"):
        apply("gaussian", widen(images), masks.repeat(1, 3, 1, 1), seed=0)


def test_perturbation_figure_shows_a_chosen_contrast(tmp_path) -> None:
    images, masks = blobs(16, 48, 1)
    out = perturbation_figure(widen(images)[0], masks[0], tmp_path / "c.png", sweeps={"gaussian_blur": [1.0], "lesion_erase": [1.0]},
                              channel=2, contrast="flair")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="channel 3 of an image with 3 channel"):
        perturbation_figure(widen(images)[0], masks[0], tmp_path / "d.png", sweeps={"gaussian_blur": [1.0]}, channel=3)
