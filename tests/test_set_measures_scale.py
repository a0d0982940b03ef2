"""Set-level measures at scale: pairwise maths in row blocks (never an n × n matrix), quadratic measures on a
seeded subset of at most ``max_items`` items, values unchanged at the embedded sizes."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

from mriq_validate.errors import MetricError
from mriq_validate.metrics import create_metric
from mriq_validate.metrics import distribution as metric_module
from mriq_validate.metrics.functional import distribution as D


def _feats(seed: int, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc=shift, size=(n, d))


def _unblocked_prdc(x: np.ndarray, y: np.ndarray, k: int) -> dict[str, float]:
    """The whole-matrix PRDC the blocked one replaced (Naeem et al. 2020's formulas on full distance matrices)."""
    dxx, dyy, dxy = D._dists(x, x), D._dists(y, y), D._dists(x, y)
    np.fill_diagonal(dxx, 0.0)
    np.fill_diagonal(dyy, 0.0)
    rx, ry = np.partition(dxx, k, axis=1)[:, k], np.partition(dyy, k, axis=1)[:, k]
    inside = dxy < rx[:, None]
    return {"precision": float(inside.any(axis=0).mean()), "recall": float((dxy < ry[None, :]).any(axis=1).mean()),
            "density": float(inside.sum(axis=0).mean() / k), "coverage": float((dxy.min(axis=1) < rx).mean())}


def _unblocked_mmd2(a: np.ndarray, b: np.ndarray) -> float:
    z = np.concatenate([a, b])
    d = np.sqrt(D._sq_dists(z, z)[np.triu_indices(len(z), 1)])
    sigma = float(np.median(d[d > 0]))
    k = lambda x, y: np.exp(-D._sq_dists(x, y) / (2.0 * sigma * sigma))  # noqa: E731
    return D._mmd2_unbiased(k(a, a), k(b, b), k(a, b))


# ------------------------------------------------------------------------------------------ (a) blocking changes nothing
def test_at_the_embedded_sizes_one_block_gives_the_whole_matrix_values_bit_for_bit() -> None:
    own, ref = _feats(1, 102, 64), _feats(2, 256, 64, shift=0.3)  # an 80 % subsample of 128 test slices vs 256 train
    assert D.prdc(ref, own, k=5) == _unblocked_prdc(ref, own, 5)
    assert D.mmd2(own, ref) == _unblocked_mmd2(own, ref)


@pytest.mark.parametrize("block_rows", [1, 7, 64])
def test_blocked_values_equal_the_whole_matrix_values(block_rows: int) -> None:
    own, ref = _feats(3, 150, 16), _feats(4, 200, 16, shift=0.5)
    assert D.prdc(ref, own, k=5, block_rows=block_rows) == _unblocked_prdc(ref, own, 5)  # counts: exact
    # kernel sums add block by block, and BLAS may round a product of a few rows in another order: equal to rounding
    assert D.mmd2(own, ref, block_rows=block_rows) == pytest.approx(_unblocked_mmd2(own, ref), rel=1e-12, abs=1e-15)
    assert D.median_bandwidth(own, ref, block_rows=block_rows) == pytest.approx(D.median_bandwidth(own, ref), rel=1e-14)


# --------------------------------------------------------------------------------- (c) memory and cost bounds, by count
def test_prdc_never_holds_an_n_by_n_matrix() -> None:
    n, d = 12000, 64
    x, y = _feats(5, n, d), _feats(6, n, d, shift=0.1)
    tracemalloc.start()
    try:
        D.prdc(x, y, k=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    whole = n * n * 8  # one n × n float64 distance matrix: 1.15 GB
    # a block is BLOCK_BYTES; _dists holds a few block-sized temporaries at once (product, sum, root, comparison)
    assert peak < 6 * D.BLOCK_BYTES < whole / 5, (peak, whole)


def test_a_capped_measure_does_not_cost_more_beyond_max_items(monkeypatch: pytest.MonkeyPatch) -> None:
    rows_seen: list[int] = []
    real = D._dists

    def counting(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        rows_seen.append(a.shape[0] * b.shape[0])
        return real(a, b)

    monkeypatch.setattr(D, "_dists", counting)
    metric = create_metric("precision", {"max_items": 100})
    evaluations = []
    for n in (100, 400, 1600):
        own = metric.capped(_feats(7, n, 8), 0, "evaluated")
        ref = metric.capped(_feats(8, n, 8), 0, "reference")
        rows_seen.clear()
        metric.value((own, ref), np.arange(len(own)))
        evaluations.append(sum(rows_seen))
    assert evaluations == [3 * 100 * 100] * 3  # real→real, fake→fake, real→fake: 100 × 100 each, whatever n


# ------------------------------------------------------------------------ (b) the subset is seeded and in the config
class _Ctx(SimpleNamespace):
    pass


def _prepared(metric, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    return metric.capped(_feats(9, n, 16), seed, "evaluated"), metric.capped(_feats(10, n, 16, shift=0.2), seed, "reference")


@pytest.mark.parametrize("name", ["mmd", "precision", "recall", "density", "coverage"])
def test_a_capped_measure_is_deterministic_and_records_its_cap(name: str) -> None:
    metric = create_metric(name, {"max_items": 60})
    a, b = _prepared(metric, 0, 500), _prepared(metric, 0, 500)
    assert a[0].shape == (60, 16) and a[1].shape == (60, 16)
    idx = np.arange(60)
    assert metric.value(a, idx) == metric.value(b, idx)
    other = _prepared(metric, 1, 500)  # another run seed draws another subset
    assert not np.array_equal(other[0], a[0])
    assert metric.config()["max_items"] == 60 and "seeded" in metric.config()["subset"]
    small = _prepared(metric, 0, 50)  # at most max_items: every item, untouched
    assert np.array_equal(small[0], _feats(9, 50, 16))


def test_the_default_cap_leaves_the_embedded_sizes_whole() -> None:
    for name in ("mmd", "precision", "coverage"):
        assert create_metric(name, {}).config()["max_items"] >= 256
    assert create_metric("copy_fraction", {}).config()["max_items"] >= 256


def test_prepare_caps_the_features_with_the_run_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    feats = {"own": _feats(11, 300, 8), "ref": _feats(12, 400, 8)}
    monkeypatch.setattr(metric_module, "make_extractor", lambda ctx, params, where="": None)
    monkeypatch.setattr(metric_module, "features", lambda ctx, ext, images, masks: feats[images])
    metric = create_metric("mmd", {"max_items": 50})
    ctx = _Ctx(seed=3, data=_Ctx(train=_Ctx(images="ref", masks=None)))
    sample = _Ctx(images="own", masks=None, __len__=lambda: 300)
    monkeypatch.setattr(metric, "check_sample", lambda s: None)
    own, ref = metric.prepare(ctx, sample)  # type: ignore[arg-type]
    assert own.shape == (50, 8) and ref.shape == (50, 8)
    again = metric.prepare(ctx, sample)  # type: ignore[arg-type]
    assert np.array_equal(own, again[0]) and np.array_equal(ref, again[1])


# ------------------------------------------------------------------------------- (d) a cap below the minimum is refused
@pytest.mark.parametrize(("name", "params", "message"), [
    ("precision", {"k": 5, "max_items": 5}, "max_items must be more than k = 5"),
    ("coverage", {"max_items": 1}, "max_items must be an integer >= 2, got 1"),
    ("mmd", {"max_items": 1}, "max_items must be an integer >= 2, got 1"),
    ("copy_fraction", {"max_items": 50}, "max_items must be an integer >= 99, got 50"),
    ("copy_fraction", {"alpha": 0.1, "max_items": 8}, "max_items must be an integer >= 9, got 8"),
])
def test_a_cap_below_the_measures_minimum_is_refused(name: str, params: dict, message: str) -> None:
    with pytest.raises(MetricError, match=f"metric '{name}': {message}"):
        create_metric(name, params)


def test_copy_fraction_cap_keeps_pairing_and_is_seeded() -> None:
    import torch

    from mriq_validate.metrics.base import Sample

    metric = create_metric("copy_fraction", {"max_items": 120})
    images = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    gen, real = Sample(images, None, "generated"), Sample(images.flip(-1), None, "real")
    a, b = metric.capped(gen, 0, "evaluated"), metric.capped(real, 0, "evaluated")
    assert len(a) == len(b) == 120 and torch.equal(a.images.flip(-1), b.images)  # same rows: still paired
    assert torch.equal(metric.capped(gen, 0, "evaluated").images, a.images)
    assert metric.capped(Sample(images[:100], None, "few"), 0, "evaluated").images.shape[0] == 100
