"""Copy detection: the conformal NN rule on synthetic features and on the builtin MNI-tumour slices."""

from __future__ import annotations

import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mriq_validate.errors import MetricError
from mriq_validate.metrics.functional.memorisation import (CopyInvariance, conformal_flags, copy_distances, copy_embedding, copy_flags,
                                                image_embedding, nn_distances)

ALPHA_SPLIT = 0.05  # a 64-image calibration half supports α ≥ 1/65; the default α = 0.01 needs ≥ 99 held-out images
DUP_P = 0.15
INV = CopyInvariance()  # copy_fraction's default: flips, shifts up to ±4 thumbnail px (±16 px on the 128-px slices)


@pytest.fixture(scope="module")
def data(mni):
    """The T1 channel of the builtin MNI-tumour cohort (session fixture from conftest): these are measures of one grey image."""
    return mni.select(["t1"])


@pytest.fixture(scope="module")
def emb(data):
    """Copy embeddings (what copy_fraction compares), with the invariant held-out → train distances computed once."""
    out = {"train": copy_embedding(data.train.images), "test": copy_embedding(data.test.images)}
    out["d_test"], out["i_test"] = copy_distances(out["test"], out["train"], INV)
    return out


def light_augment(x: torch.Tensor, seed: int, max_deg: float = 5.0, noise_sd: float = 0.01) -> torch.Tensor:
    """Rotation U(±max_deg), intensity gain U(0.9, 1.1), additive N(0, noise_sd²), clamped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    ang = (torch.rand(n, generator=g) * 2 - 1) * max_deg * math.pi / 180
    gain = 0.9 + 0.2 * torch.rand(n, generator=g)
    cos, sin, zero = torch.cos(ang), torch.sin(ang), torch.zeros(n)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    y = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    return (y * gain[:, None, None, None] + noise_sd * torch.randn(x.shape, generator=g)).clamp(0, 1)


# ----------------------------------------------------------------------------------------------- nn_distances
def test_nn_distances_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(37, 6)), rng.normal(size=(23, 6))
    d, i = nn_distances(q, r, batch_size=5)
    full = np.linalg.norm(q[:, None] - r[None], axis=2)
    np.testing.assert_allclose(d, full.min(1), rtol=1e-12)
    np.testing.assert_array_equal(i, full.argmin(1))


def test_nn_distances_exclude_self_and_exact_copy() -> None:
    rng = np.random.default_rng(1)
    r = rng.normal(size=(30, 4))
    d0, i0 = nn_distances(r, r)
    assert np.all(d0 == 0.0) and np.array_equal(i0, np.arange(30))
    d, i = nn_distances(r, r, exclude_self=True, batch_size=7)
    full = np.linalg.norm(r[:, None] - r[None], axis=2) + np.diag(np.full(30, np.inf))
    np.testing.assert_allclose(d, full.min(1), rtol=1e-12)
    assert not np.any(i == np.arange(30))


def test_nn_distances_flattens_images() -> None:
    x = torch.rand(5, 1, 8, 8)
    d, _ = nn_distances(x, x.flatten(1).numpy())
    assert np.all(d == 0.0)


# ----------------------------------------------------------------------------------------------- calibration
def test_conformal_null_rate_is_k_over_m_plus_1() -> None:
    # exchangeable generated/held-out draws: P(flag) = k/(m+1) exactly; Monte-Carlo within 4 binomial SE
    rng = np.random.default_rng(2)
    m, reps, alpha = 99, 400, 0.03  # k = 3, rate 3/100
    train = rng.normal(size=(50, 3))
    flagged = 0
    for _ in range(reps):
        res = copy_flags(rng.normal(size=(5, 3)), train, rng.normal(size=(m, 3)), alpha=alpha)
        flagged += res["n_flagged"]
    rate = res["k"] / (m + 1)
    assert res["null_rate"] == rate and res["k"] == 3
    se = math.sqrt(rate * (1 - rate) / (5 * reps))
    assert abs(flagged / (5 * reps) - rate) < 4 * se


def test_copy_flags_fields_and_ci() -> None:
    rng = np.random.default_rng(3)
    train, null = rng.normal(size=(100, 4)), rng.normal(size=(150, 4))
    gen = np.concatenate([train[:20], rng.normal(size=(80, 4))])
    r = copy_flags(gen, train, null, alpha=0.01)
    assert r["k"] == 1 and r["threshold"] == r["d_null"].min()
    assert r["flags"][:20].all() and np.array_equal(r["nn_index"][:20], np.arange(20))
    assert r["n_flagged"] == int(r["flags"].sum()) and r["fraction"] == r["n_flagged"] / 100
    assert r["ci_low"] <= r["fraction"] <= r["ci_high"]
    assert np.all((r["p_values"] <= r["alpha"]) == r["flags"])
    assert r["p_excess"] < 1e-6 and r["null_rate"] <= r["alpha"] <= r["null_rate_high"]


def test_copy_flags_validation() -> None:
    rng = np.random.default_rng(4)
    t = rng.normal(size=(10, 3))
    with pytest.raises(MetricError, match="null_feats: alpha=0.01 needs at least 99"):
        copy_flags(t, t, rng.normal(size=(50, 3)), alpha=0.01)
    with pytest.raises(MetricError, match="alpha"):
        copy_flags(t, t, t, alpha=1.5)
    with pytest.raises(MetricError, match="dimensions differ"):
        copy_flags(t, t, rng.normal(size=(200, 4)))
    with pytest.raises(MetricError, match="duplicate a training image"):
        copy_flags(t, t, np.concatenate([t, rng.normal(size=(100, 3))]), alpha=0.05)


# ----------------------------------------------------------------------------------------------- embedding
def test_image_embedding_invariances() -> None:
    x = torch.zeros(3, 1, 64, 64)
    x[:, :, 16:48, 24:40] = torch.linspace(0.2, 0.8, 32)[None, None, :, None]
    e = image_embedding(x, size=16)
    assert e.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(image_embedding(0.5 * x + 0.1, size=16), e, atol=1e-6)  # intensity affine
    assert np.all(image_embedding(torch.full((2, 1, 32, 32), 0.3), size=8) == 0.0)
    with pytest.raises(MetricError, match="images"):
        image_embedding(torch.rand(2, 3, 32, 32))


def test_embedding_undoes_small_rotation_on_real_slices(data) -> None:
    x = data.train.images[:32]
    e, er = image_embedding(x), image_embedding(light_augment(x, seed=5, noise_sd=0.0))
    raw, rawr = image_embedding(x, pose=False), image_embedding(light_augment(x, seed=5, noise_sd=0.0), pose=False)
    assert np.median(np.linalg.norm(e - er, axis=1)) < 0.5 * np.median(np.linalg.norm(raw - rawr, axis=1))


# ----------------------------------------------------------------------------------------------- builtin data
def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return perm[: n // 2], perm[n // 2:]


def test_memoriser_is_flagged(data, emb) -> None:
    r = copy_flags(emb["train"][:128], emb["train"], emb["test"], invariance=INV)  # default α = 0.01, all 128 held-out slices
    assert r["fraction"] == 1.0 and r["ci_low"] > r["null_rate_high"] and np.all(r["d_gen"] == 0)
    aug = copy_embedding(light_augment(data.train.images[:128], seed=6))
    ra = copy_flags(aug, emb["train"], emb["test"], invariance=INV)
    assert ra["ci_low"] > r["null_rate_high"] and ra["fraction"] >= 0.9


def test_real_held_out_flagged_at_null_rate(emb) -> None:
    """Held-out real images under the invariant distance are flagged at k/(m+1) ≈ α: the minimum over flips and shifts
    lowers held-out and generated distances alike, so the conformal rate is unchanged."""
    rates = []
    for seed in range(20):
        cal, ev = _split(len(emb["test"]), seed)
        r = conformal_flags(emb["d_test"][ev], emb["i_test"][ev], emb["d_test"][cal], alpha=ALPHA_SPLIT)
        assert r["ci_low"] <= r["null_rate_high"]  # within the null range given this calibration half
        rates.append(r["fraction"])
    rate = r["null_rate"]
    se_one_split = math.sqrt(rate * (1 - rate) / len(ev))
    assert abs(np.mean(rates) - rate) < 2 * se_one_split


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` moved by (dy, dx) pixels, the uncovered border filled with 0 (background), the far border cut off."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = x[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_flipped_and_shifted_training_copies_are_flagged(data, emb) -> None:
    """Training slices flipped (left-right, up-down, both) and moved by up to ±4 thumbnail px (±16 px, any integer
    shift, border cut off): the invariant rule flags at least 90 % of each kind; the plain rule misses most of them."""
    src = data.train.images[:96]
    g = torch.Generator().manual_seed(11)
    moves = torch.randint(-16, 17, (len(src), 2), generator=g).tolist()
    shifted = torch.cat([_shift(src[i : i + 1], dy, dx) for i, (dy, dx) in enumerate(moves)])
    kinds = {"left-right": src.flip(-1), "up-down": src.flip(-2), "both": src.flip(-2, -1), "shifted": shifted,
             "shifted and flipped": shifted.flip(-1)}
    plain = {}
    for kind, x in kinds.items():
        e = copy_embedding(x)
        r = copy_flags(e, emb["train"], emb["test"], invariance=INV)  # default α = 0.01
        assert r["fraction"] >= 0.9 and r["ci_low"] > r["null_rate_high"], (kind, r["fraction"])
        assert np.mean(r["nn_index"][r["flags"]] == np.arange(len(src))[r["flags"]]) >= 0.9, kind  # found its source
        pose = slice(0, 32 * 32)  # the pose-normalised thumbnail alone: the rule without flips and shifts
        plain[kind] = copy_flags(e[:, pose], emb["train"][:, pose], emb["test"][:, pose])["fraction"]
    assert max(plain[k] for k in ("left-right", "up-down", "both", "shifted and flipped")) < 0.1, plain
    assert plain["shifted"] < 0.7, plain


def test_copy_distance_undoes_flips_and_shifts_exactly() -> None:
    """On smooth synthetic images whose shifts are whole fine-grid pixels (H/(2·size)), a flipped and shifted copy is
    at distance ~0 (the window it shares with its source matches exactly); an unrelated image is not."""
    g = torch.Generator().manual_seed(12)
    x = torch.nn.functional.avg_pool2d(torch.rand(6, 1, 72, 72, generator=g), 9, stride=1)[..., :64, :64]  # 64 px, smooth
    ref = copy_embedding(x, size=16)
    cases = [x[:3].flip(-1), _shift(x[:3], 8, -4), _shift(x[:3], -2, 6).flip(-2), _shift(x[:3].flip(-1, -2), 14, 10)]
    for q in cases:
        d, i = copy_distances(copy_embedding(q, size=16), ref, INV)
        np.testing.assert_array_equal(i, [0, 1, 2])
        assert np.all(d < 1e-5), d  # float32 pooling
    d_other, _ = copy_distances(copy_embedding(torch.rand(3, 1, 64, 64, generator=g), size=16), ref, INV)
    assert np.all(d_other > 0.3)
    with pytest.raises(MetricError, match="max_shift"):
        CopyInvariance(max_shift=-1)


@pytest.mark.parametrize("augment", [False, True], ids=["exact", "augmented"])
def test_duplication_at_15_percent_is_detected(data, emb, augment: bool) -> None:
    cal, ev = _split(len(emb["test"]), seed=7)
    n_dup = round(DUP_P * len(ev))
    rng = np.random.default_rng(8)
    where = rng.choice(len(ev), n_dup, replace=False)
    src = rng.choice(len(data.train), n_dup, replace=False)
    gen = data.test.images[torch.as_tensor(ev)].clone()
    copies = data.train.images[torch.as_tensor(src)]
    gen[torch.as_tensor(where)] = light_augment(copies, seed=9) if augment else copies
    r = copy_flags(copy_embedding(gen), emb["train"], emb["test"][cal], alpha=ALPHA_SPLIT, invariance=INV)
    assert r["flags"][where].all()
    assert r["ci_low"] > ALPHA_SPLIT and r["p_excess"] < 0.01
    assert np.array_equal(r["nn_index"][where], src)


# ----------------------------------------------------------------------------------------------- the metric
def test_copy_fraction_metric_is_flip_and_shift_invariant(data, cache_dir) -> None:
    from mriq_validate.metrics import Sample, create_metric
    from mriq_validate.session import RunContext, RunSettings

    ctx = RunContext(RunSettings(model=None, data="builtin:mni-tumour", device="cpu", seed=0, cache_dir=str(cache_dir),
                                 data_options={"contrasts": ["t1"]}), "builtin:mni-tumour")
    metric = create_metric("copy_fraction", {})
    assert metric.config()["invariance"]["max_shift_thumbnail_px"] == 4  # the range is recorded with every value
    mirrored = Sample(_shift(data.train.images[:64].flip(-1), 6, -10), None, "mirrored, moved training slices")
    assert ctx.prepare(metric, mirrored).mean() >= 0.9
    assert ctx.prepare(metric, ctx.real("test")).mean() == 0.0  # the held-out images themselves: never below τ
    plain = create_metric("copy_fraction", {"flips": False, "max_shift": 0})
    assert ctx.prepare(plain, mirrored).mean() < 0.1
    with pytest.raises(MetricError, match="copy_fraction.*'pixels' extractor"):
        create_metric("copy_fraction", {"features": {"extractor": "radiomic"}, "max_shift": 2})
    with pytest.raises(MetricError, match=r"copy_fraction': max_shift.*\[0, 8\], got 9"):
        create_metric("copy_fraction", {"max_shift": 9})
