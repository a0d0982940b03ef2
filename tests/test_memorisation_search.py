"""copy_distances' branch-and-bound shift search against the exhaustive search it replaced (kept below, verbatim, as the
known-answer oracle): the same distance and nearest training image for every query, hence the same flags, on real
slices (held-out ones, flipped and shifted training copies up to the ±16 px edge) and on seeded random images and
volumes; and the copy_fraction message for an alpha its held-out data cannot support."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mriq_validate.errors import MetricError
from mriq_validate.metrics.functional import copy_search_cache
from mriq_validate.metrics.functional.memorisation import (CopyInvariance, _null_size, conformal_flags, copy_distances,
                                                           copy_embedding, nn_distances)

INV = CopyInvariance()  # copy_fraction's default: flips, shifts up to ±4 thumbnail px (±16 px on the 128-px slices)


# ------------------------------------------------------------------ the exhaustive search, as it was (the oracle)
def _unit_rows(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return np.where(norm > 1e-12 * np.sqrt(a.shape[1]), a / np.maximum(norm, 1e-300), 0.0)


def _flips(x: np.ndarray, flips: bool) -> list[np.ndarray]:
    return [x, x[..., ::-1], x[..., ::-1, :], x[..., ::-1, ::-1]] if flips else [x]


def _overlap(shift: int, length: int) -> tuple[int, int, int]:
    lo = max(shift, 0)
    return lo, lo - shift, (length - abs(shift)) // 2 * 2


def _phases(x: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
    nd = x.ndim - 1
    cells = [o[::-1] for o in itertools.product((0, 1), repeat=nd)]
    out = {}
    for phase in itertools.product((0, 1), repeat=nd):
        y = x[(slice(None),) + tuple(slice(p, n - p) for p, n in zip(phase, x.shape[1:]))]
        parts = [y[(slice(None),) + tuple(slice(o, None, 2) for o in c)] for c in cells]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        out[phase] = total / len(cells)
    return out


def _cells(phases: dict[tuple[int, ...], np.ndarray], starts: tuple[int, ...], counts: tuple[int, ...]) -> np.ndarray:
    g = phases[tuple(a % 2 for a in starts)]
    window = g[(slice(None),) + tuple(slice(a // 2, a // 2 + c // 2) for a, c in zip(starts, counts))]
    return _unit_rows(window.reshape(g.shape[0], -1))


def reference_copy_distances(query: np.ndarray, reference: np.ndarray, invariance: CopyInvariance = INV,
                             spatial_dims: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """copy_distances before the branch and bound: one nearest-neighbour search per flip and shift, in order, a later
    variant replacing the best only when strictly nearer (inputs assumed valid)."""
    q, r, nd = np.asarray(query, np.float64), np.asarray(reference, np.float64), spatial_dims
    parts = 1 + 2**nd if invariance.max_shift else 1
    size = round((q.shape[1] // parts) ** (1 / nd))
    n = q.shape[0]
    best, best_idx = np.full(n, np.inf), np.zeros(n, dtype=np.int64)

    def keep(dist: np.ndarray, idx: np.ndarray) -> None:
        dist, idx = dist.reshape(-1, n), idx.reshape(-1, n)
        k, cols = dist.argmin(0), np.arange(n)
        better = dist[k, cols] < best
        best[better], best_idx[better] = dist[k, cols][better], idx[k, cols][better]

    thumb = size**nd
    pose = q[:, :thumb].reshape(n, *(size,) * nd)
    keep(*nn_distances(np.concatenate([f.reshape(n, -1) for f in _flips(pose, invariance.flips)]), r[:, :thumb]))
    if invariance.max_shift:
        fine_q = [_phases(f) for f in _flips(q[:, thumb:].reshape(n, *(2 * size,) * nd), invariance.flips)]
        fine_r = _phases(r[:, thumb:].reshape(-1, *(2 * size,) * nd))
        reach = 2 * invariance.max_shift
        for shift in itertools.product(range(-reach, reach + 1), repeat=nd):
            qs, rs, counts = zip(*(_overlap(a, 2 * size) for a in shift))
            keep(*nn_distances(np.concatenate([_cells(f, qs, counts) for f in fine_q]), _cells(fine_r, rs, counts)))
    return best, best_idx


def assert_same_search(query: np.ndarray, reference: np.ndarray, invariance: CopyInvariance = INV,
                       spatial_dims: int = 2) -> tuple[np.ndarray, ...]:
    """copy_distances and the oracle agree: distances to rtol 1e-5 (in practice bit for bit) and the same nearest
    index. Returns both: distances, indices, the oracle's distances, its indices."""
    d, i = copy_distances(query, reference, invariance, spatial_dims=spatial_dims)
    d_ref, i_ref = reference_copy_distances(query, reference, invariance, spatial_dims)
    np.testing.assert_allclose(d, d_ref, rtol=1e-5, atol=1e-12)
    np.testing.assert_array_equal(i, i_ref)
    return d, i, d_ref, i_ref


# ------------------------------------------------------------------ real slices
def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` moved by (dy, dx) pixels, the uncovered border filled with 0 (background), the far border cut off."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = x[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


@pytest.fixture(scope="module")
def data(mni):
    """The T1 channel of the builtin MNI-tumour cohort (session fixture from conftest)."""
    return mni.select(["t1"])


def test_same_distances_and_flags_as_the_exhaustive_search_on_real_slices(data) -> None:
    """Held-out slices (the calibration) and training copies flipped, moved to the ±16 px edge of the search (corners
    included), by odd and interior amounts, and both: the same distances and sources, so the same threshold and flags."""
    train = copy_embedding(data.train.images)
    held_out = copy_embedding(data.test.images[:40])
    src = data.train.images[:12]
    moves = [(16, 16), (-16, 16), (16, -16), (-16, -16), (16, 0), (0, -16), (-14, 2), (6, -10), (1, 15), (-3, -7), (8, 8), (0, 0)]
    copies = torch.cat([src.flip(-1), src.flip(-2), src.flip(-2, -1)]
                       + [torch.cat([_shift(src[i:i + 1], dy, dx) for i, (dy, dx) in enumerate(moves)])]
                       + [torch.cat([_shift(src[i:i + 1], dy, dx).flip(-1) for i, (dy, dx) in enumerate(moves)])])
    d_null, _, d_null_ref, _ = assert_same_search(held_out, train)
    d_gen, i_gen, d_gen_ref, i_gen_ref = assert_same_search(copy_embedding(copies), train)
    new, old = (conformal_flags(dg, ig, dn, alpha=0.05) for dg, ig, dn in ((d_gen, i_gen, d_null), (d_gen_ref, i_gen_ref, d_null_ref)))
    assert new["threshold"] == pytest.approx(old["threshold"], rel=1e-12) and new["k"] == old["k"] == 2
    np.testing.assert_array_equal(new["flags"], old["flags"])
    assert new["fraction"] >= 0.9 and np.mean(i_gen == np.tile(np.arange(12), 5)) >= 0.9  # flagged, their source found


# ------------------------------------------------------------------ seeded random images and volumes
def _smooth(n: int, side: int, nd: int, seed: int) -> torch.Tensor:
    """n smooth random images (n × 1 × side^nd) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, *(side + 4,) * nd, generator=g)
    pool = torch.nn.functional.avg_pool2d if nd == 2 else torch.nn.functional.avg_pool3d
    return pool(x, 5, stride=1)


def _faint(side: int, nd: int) -> torch.Tensor:
    """A texture of amplitude 3e-5 on 0.5 beside one bright pixel: windows whose float32 DCT coefficients are too coarse
    to bound (ε > 1/4), so every pair with them is screened."""
    x = 0.5 + 3e-5 * torch.rand(1, 1, *(side,) * nd, generator=torch.Generator().manual_seed(5))
    x[(0, 0) + (0,) * nd] = 1.0
    return x


def _awkward(ref: torch.Tensor, nd: int) -> torch.Tensor:
    """Queries that hit the search's corners: a copy, a copy of a duplicated reference (3 and 7), flipped copies, copies
    rolled by a quarter of the image and flipped, an all-zero image, a constant one, a nearly constant one (too flat for
    the float32 bound: computed exactly), one half black and the faint reference (8) flipped."""
    g = torch.Generator().manual_seed(99)
    side = ref.shape[-1]
    edge = side // 4
    moved = torch.roll(ref[:3], shifts=(edge,) * nd, dims=tuple(range(2, 2 + nd)))
    flat = torch.full_like(ref[:1], 0.5) + 1e-6 * torch.rand(ref[:1].shape, generator=g)
    half = ref[3:4].clone()
    half[..., : side // 2] = 0
    return torch.cat([ref[:1], ref[7:8], ref[2:4].flip(-1), moved.flip(-2), torch.zeros_like(ref[:1]), torch.full_like(ref[:1], 0.3),
                      flat, half, ref[8:9].flip(-1)])


@pytest.mark.parametrize(("nd", "side", "size", "max_shift", "flips"), [
    (2, 32, 8, 3, True), (2, 32, 8, 7, True), (2, 32, 8, 1, False), (2, 24, 12, 2, True), (3, 16, 4, 1, True), (3, 16, 8, 2, False),
])
def test_same_result_as_the_exhaustive_search_on_random_images(nd: int, side: int, size: int, max_shift: int, flips: bool) -> None:
    """Random smooth images (and volumes) against a reference set with a duplicate (ties go to the lower index), shift
    ranges up to the largest (max_shift = size − 1: the edge windows are one cell wide), with and without flips, and the
    awkward queries above."""
    inv = CopyInvariance(flips=flips, max_shift=max_shift)
    ref = _smooth(40, side, nd, seed=side + max_shift)
    ref[7], ref[8] = ref[3], _faint(side, nd)[0]  # a duplicate (the first one is the nearest) and a faint image
    query = torch.cat([_smooth(24, side, nd, seed=1000 + side), _awkward(ref, nd)])
    embed = lambda x: copy_embedding(x, size, inv)  # noqa: E731
    d, i, _, _ = assert_same_search(embed(query), embed(ref), inv, nd)
    assert d[24] == d[25] == 0.0 and i[24] == 0 and i[25] == 3  # exact copies at 0; of a duplicate, the first one


def test_the_result_does_not_depend_on_the_thread_count(data) -> None:
    train, query = copy_embedding(data.train.images[:64]), copy_embedding(data.test.images[:16])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        copy_search_cache.clear()  # the references' windows computed anew with each thread count
        one = copy_distances(query, train)
        torch.set_num_threads(2)
        copy_search_cache.clear()
        two = copy_distances(query, train)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


def test_the_reference_cache_gives_the_same_result_and_never_serves_a_changed_block() -> None:
    """A second call finds the references' windows in the memory cache and gives the same result; a reference set that
    differs in one value (same shape, same fingerprint sample or not) is computed anew: the oracle's result again."""
    inv = CopyInvariance(flips=True, max_shift=2)
    ref = _smooth(30, 32, 2, seed=7)
    query = torch.cat([_smooth(10, 32, 2, seed=8), _shift(ref[4:5], 2, 0).flip(-1)])  # a copy, one fine pixel down
    q, r = copy_embedding(query, 8, inv), copy_embedding(ref, 8, inv)
    copy_search_cache.clear()
    cold = copy_distances(q, r, inv)
    warm = copy_distances(q, r, inv)
    np.testing.assert_array_equal(cold[0], warm[0])
    np.testing.assert_array_equal(cold[1], warm[1])
    assert cold[0][-1] < 1e-5 and cold[1][-1] == 4  # (float32 pooling of the flipped copy: not exactly 0)
    changed = r.copy()
    changed[4, 64 + 8 * 16 + 8] += 0.5  # a fine value in the compared window, outside the fingerprint's sample
    d, _, _, _ = assert_same_search(q, changed, inv)
    assert d[-1] > 1e-3
    copy_search_cache.clear()


# ------------------------------------------------------------------ copy_fraction's held-out minimum
def test_an_alpha_the_held_out_images_cannot_support_names_alpha_the_count_and_the_fixes(cache_dir) -> None:
    """alpha 0.001 on the 128 held-out slices: the message names alpha, the 128 images, the 999 needed and why, and
    the fixes, not max_items (which the user did not set)."""
    from mriq_validate.metrics import Sample, create_metric
    from mriq_validate.session import RunContext, RunSettings

    ctx = RunContext(RunSettings(model=None, data="builtin:mni-tumour", device="cpu", seed=0, cache_dir=str(cache_dir),
                                 data_options={"contrasts": ["t1"]}), "builtin:mni-tumour")
    metric = create_metric("copy_fraction", {"alpha": 0.001})
    with pytest.raises(MetricError) as err:
        ctx.prepare(metric, Sample(ctx.data.train.images[:8], None, "copies"))
    message = str(err.value)
    for part in ("alpha=0.001", "at least 999 held-out images", "α(m+1) ≥ 1", "got 128", "1/129 = 0.007752",
                 "a larger alpha", "more held-out"):
        assert part in message, (part, message)
    assert "max_items" not in message
    with pytest.raises(MetricError, match=r"alpha=0.003 needs at least 333 .*got 256.* the 1000 held-out images available are "
                                          r"cut to 256 \(copy_fraction's max_items\): raise max_items to at least 333"):
        _null_size(0.003, 256, 1000)  # when the cap, not the data, is short, the message says so
