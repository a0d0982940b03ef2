"""The shift search of :func:`.memorisation.copy_distances`, exact, by branch and bound on DCT coefficients.

At one shift and flip, a query and a reference image are compared on the window of 2 × 2 (× 2)-pooled cells they share
(:func:`window_units`): each window is centred and unit-normalised to ``u`` (0 if constant), and their distance is
``‖u_q − u_r‖``. Trying all 4·(4·max_shift + 1)^d shifted flips of every pair costs ~1 M multiply-adds a pair at the
defaults (1156 windows of ~900 cells). Here each window is also written in the orthonormal DCT-II basis (Ahmed,
Natarajan & Rao 1974), which keeps dot products: with ``a``, ``b`` the first k^d (low-frequency) coefficients of
``u_q``, ``u_r`` and ``e_q``, ``e_r`` the norms of the rest, Cauchy–Schwarz on the rest gives ``⟨u_q, u_r⟩ ≤ a·b +
e_q·e_r``, so

    ‖u_q − u_r‖² ≥ |u_q|² + |u_r|² − 2 (a·b + e_q·e_r),

the bounded partial correlation of Di Stefano, Mattoccia & Tombari 2005 (Pattern Recognit. Lett. 26, 2129). Image energy
sits in low frequencies, so the bound is tight. Every (flip, shift, query, reference) gets the bound on PRINCIPAL
principal coordinates of ``a`` (the norm of ``a``'s other coordinates bounds their part alike: level 1); the query
windows with a survivor get it on all of ``a`` against every reference (level 2); a survivor's distance is then
screened in float32 from the windows, and only a distance that may equal or beat the best so far is computed as the
exhaustive search computed it (:func:`window_units`, ‖u_q − u_r‖). A pair is dropped only when its bound exceeds the
best squared distance by MARGIN, far above the rounding of the float32 bounds (each carries its own error term ε, see
:func:`_side`), so no variant that could be nearer, or as near, is skipped: the result, ties included (the earlier
variant, then the lower reference index), is the exhaustive search's. On 256 held-out × 2048 training slices level 1
leaves ~8 % of the (query window, shift) rows to level 2, ~0.04 % of the variants pass level 2 and about one a query
needs the exact distance.

No nearest-neighbour library fits a distance that is a minimum over windows normalised each on its own (FAISS, Annoy
and the like index fixed vectors), so the search is written here, on torch's matrix products.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import torch

# Low-frequency DCT coefficients per axis (slices, volumes): level 2 bounds with all k^d of them, level 1 with their
# PRINCIPAL leading principal coordinates (taken from the first query windows; any rotation keeps the bound valid).
LOW = {2: 8, 3: 5}
PRINCIPAL = 8
# A pair is pruned only when its bound exceeds the best squared distance by this: the float32 rounding of a bound (at
# most 128 terms whose |products| sum to at most 7, Higham 2002, §3.1) is below 128·2⁻²⁴·7 ≈ 5e-5.
MARGIN = 1e-3
# Added under the square roots of the residual norms sqrt(|u|² − |a|²) and sqrt(|a|² − |lead|²): above the float32
# rounding of |a|² and |lead|² (< 1e-5), so that the norms are never underestimated.
SLACK = 1e-4
UNSURE = -1e6  # a window too close to constant to bound (or with ε > 1/4): none of its pairs is pruned
# Survivors are screened by a float32 distance² (off by < 7e-4: a window is centred in float32 only when its spread is
# at least 1e-3 of its root mean square); those within this of the best get the exact distance.
SCREEN = 2e-3


def unit_rows(a: np.ndarray) -> np.ndarray:
    """Each row minus its mean, divided by its norm (a constant row becomes 0): the z-normalisation of ``image_embedding``."""
    a = a - a.mean(1, keepdims=True)
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return np.where(norm > 1e-12 * np.sqrt(a.shape[1]), a / np.maximum(norm, 1e-300), 0.0)


def flips_of(x: np.ndarray, flips: bool) -> list[np.ndarray]:
    """``x`` (n × s × s, or n × s × s × s) and, with ``flips``, its in-plane left-right, up-down and double flips."""
    return [x, x[..., ::-1], x[..., ::-1, :], x[..., ::-1, ::-1]] if flips else [x]


def overlap(shift: int, length: int) -> tuple[int, int, int]:
    """Where the query's and the reference's pixels face each other when the query's content lies ``shift`` pixels
    further along an axis of ``length`` pixels: their first pixels and the shared count, cut to an even number.

    >>> overlap(3, 8), overlap(-2, 8)
    ((3, 0, 4), (0, 2, 6))
    """
    lo = max(shift, 0)
    return lo, lo - shift, (length - abs(shift)) // 2 * 2


def phases(x: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
    """n × 2s × 2s (× 2s) → its 2 × 2 (× 2) average pools starting at pixel offset p ∈ {0, 1}^d (the half-pixel phases of
    the thumbnail grid; an odd phase has one cell fewer)."""
    nd = x.ndim - 1
    cells = [o[::-1] for o in itertools.product((0, 1), repeat=nd)]  # the first axis varies fastest (2D: 00, 10, 01, 11)
    out = {}
    for phase in itertools.product((0, 1), repeat=nd):
        y = x[(slice(None),) + tuple(slice(p, n - p) for p, n in zip(phase, x.shape[1:]))]
        parts = [y[(slice(None),) + tuple(slice(o, None, 2) for o in c)] for c in cells]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        out[phase] = total / len(cells)
    return out


def window_units(grids: dict[tuple[int, ...], np.ndarray], starts: tuple[int, ...], counts: tuple[int, ...],
                 rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """The 2 × 2 (× 2) pools of the pixels [start, start + count) along each axis (counts even) of the images ``rows``,
    unit-normalised rows: the ``u`` that the distance compares."""
    g = grids[tuple(a % 2 for a in starts)]
    window = g[(rows,) + tuple(slice(a // 2, a // 2 + c // 2) for a, c in zip(starts, counts))]
    return unit_rows(window.reshape(window.shape[0], -1))


def _dct(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix (n × n): row k is sqrt(2/n)·cos(π(2j+1)k/2n), row 0 the constant 1/sqrt(n)."""
    c = np.sqrt(2 / n) * np.cos(np.pi * np.outer(np.arange(n), 2 * np.arange(n) + 1) / (2 * n))
    c[0] = 1 / np.sqrt(n)
    return c


class _Maps(NamedTuple):
    """Per axis, on the 2s − 1 pooled cells of both phases (phase 0's s cells, then phase 1's s − 1), per shift: the
    window's indicator (one row), its first k DCT rows (zero beyond the window), its first cell and its cell count."""

    indicator: torch.Tensor
    dct: torch.Tensor
    first: np.ndarray
    count: np.ndarray


def _axis_maps(size: int, reach: int, k: int, query: bool) -> _Maps:
    """:class:`_Maps` of the query's (``query``) or the reference's windows for shifts −reach … reach."""
    shifts = range(-reach, reach + 1)
    ind, dct = np.zeros((len(shifts), 2 * size - 1)), np.zeros((len(shifts) * k, 2 * size - 1))
    first, count = np.zeros(len(shifts), dtype=np.int64), np.zeros(len(shifts), dtype=np.int64)
    for row, a in enumerate(shifts):
        start, n = max(a, 0) if query else max(-a, 0), (2 * size - abs(a)) // 2
        first[row], count[row] = (0 if start % 2 == 0 else size) + start // 2, n
        ind[row, first[row]:first[row] + n] = 1
        dct[row * k:row * k + min(k, n), first[row]:first[row] + n] = _dct(n)[:k]
    return _Maps(torch.from_numpy(ind), torch.from_numpy(dct), first, count)


def _along(x: torch.Tensor, mat: torch.Tensor, nd: int) -> torch.Tensor:
    """``mat`` applied along each of the ``nd`` spatial axes of the batch ``x`` (B × ...), one matrix product per axis."""
    x = x @ mat.T  # the last axis
    for axis in range(nd - 1, 0, -1):  # the others, moved next to last
        x = torch.movedim(mat @ torch.movedim(x, axis, -2), -2, axis)
    return x


def _pooled(x: torch.Tensor, nd: int) -> torch.Tensor:
    """The 2-pixel means along each spatial axis of both phases, phase 0's s then phase 1's s − 1 (B × (2s − 1)^d)."""
    for axis in range(1, nd + 1):
        cut = lambda a, b, step=2: x[(slice(None),) * axis + (slice(a, b, step),)]  # noqa: E731
        x = 0.5 * torch.cat([cut(0, None) + cut(1, None), cut(1, -1) + cut(2, None)], axis)
    return x


class _Side(NamedTuple):
    """Every shift's window of a set of images (rows: the queries' flips, flip-major, or the references)."""

    level1: torch.Tensor  # V × R × K1, float32: the level-1 bound rows
    level2: torch.Tensor  # V × R × K2, float32: the level-2 bound rows
    sums: np.ndarray  # V × R: Σ w over each window
    inverse: np.ndarray  # V × R: 1/‖w − mean‖, 0 for a constant window, NaN when too close to constant to tell
    cells: np.ndarray  # R × (2s − 1)^d, float32: the pooled cells of both phases, where the windows are cut
    views: list[np.ndarray]  # the plain images (2s)^d, one array of n per flip (rows f·n + i), for the exact distance


def _side(views: list[np.ndarray], maps: _Maps, nd: int, query: bool, rot: torch.Tensor | None = None,
          chunk: int = 16) -> tuple[_Side, torch.Tensor]:
    """The :class:`_Side` of the images ``views`` (arrays of n × 2s × 2s (× 2s), float64; rows flip-major), and the
    rotation used (``rot``, or one made from the first windows).

    Level 2 holds the first k^d DCT coefficients ``a`` of each window's ``u`` (the DC one is 0) and the norm ``e`` of
    the rest of ``u``; level 1 holds ``a``'s first PRINCIPAL coordinates along ``rot``, the norm ``o`` of its others and
    ``e``. A query row is [−2x, |u|² − 3ε, 1] and a reference's [y, 1, |u|² − 3ε], so that their dot product is the
    bound |u_q|² + |u_r|² − 2 x·y − 3(ε_q + ε_r).

    The coefficients are computed in float32 from the cells minus the image's mid-range c, so each is off by at most
    (d·(2s − 1) + 2d + 2)·2⁻²⁴·max|cells − c|·sqrt(N) (Higham 2002, §3.5: d matrix products of inner size 2s − 1, with
    float32 DCT rows of 1-norm ≤ sqrt(n)) before the scaling to ``u``; that makes ‖â − a‖ ≤ ε. Hence
    a·b ≤ â·b̂ + ε_q + ε_r + ε_q·ε_r, and ``o`` + ε and sqrt(|u|² − |â|² + 3ε) are never below the true norms
    (ε ≤ 1/4; a window with a larger ε, or too close to constant to centre, puts UNSURE in place of |u|²).
    """
    shifts, k = len(maps.count), maps.dct.shape[0] // len(maps.count)
    count = torch.from_numpy(np.prod(np.stack(np.meshgrid(*[maps.count] * nd, indexing="ij")), 0).reshape(-1, 1).astype(np.float64))
    factor, size_a, n, windows = (-2.0 if query else 1.0), k**nd, len(views[0]), shifts**nd
    level1 = torch.empty(windows, n * len(views), PRINCIPAL + 4, dtype=torch.float32)
    level2 = torch.empty(windows, n * len(views), size_a + 3, dtype=torch.float32)
    sums, inverse = np.empty((windows, n * len(views))), np.empty((windows, n * len(views)))
    cells_all = np.empty((n * len(views), *(views[0].shape[-1] - 1,) * nd), dtype=np.float32)
    blocks = level2.view(*(shifts,) * nd, n * len(views), -1)  # the level-2 rows as shift × … × image × value
    dct, error = maps.dct.to(torch.float32), k ** (nd / 2) * (nd * (views[0].shape[-1] + 1) + 2) * 2.0**-24 * 1.01
    for f, c0 in itertools.product(range(len(views)), range(0, n, chunk)):
        cells = _pooled(torch.from_numpy(np.ascontiguousarray(views[f][c0:c0 + chunk])), nd)
        b, dims = cells.shape[0], tuple(range(1, nd + 1))
        part = slice(f * n + c0, f * n + c0 + b)
        cells_all[part] = cells.numpy()
        total, energy = (_along(x, maps.indicator, nd).reshape(b, -1).T for x in (cells, cells * cells))  # Σ w, Σ w² (V × b)
        centred = energy - total * total / count  # ‖w − mean‖²
        sure = (centred >= 1e-6 * energy) & (centred >= 4e-24 * count)  # u ≠ 0 and its norm accurate
        inv = torch.where(sure, centred.clamp(min=1e-300).rsqrt(), 0.0)
        low, high = cells.amin(dims, keepdim=True), cells.amax(dims, keepdim=True)
        eps = error * ((high - low) / 2).reshape(1, b) * count.sqrt() * inv + 2.0**-22  # ‖â − a‖ ≤ ε
        unsure = (~sure & (energy > 0)) | (eps > 0.25)  # energy 0: an all-zero window, u = 0 exactly
        sums[:, part], inverse[:, part] = total.numpy(), torch.where(~sure & (energy > 0), torch.nan, inv).numpy()
        coef = _along((cells - (low + high) / 2).to(torch.float32), dct, nd).reshape(b, *(shifts, k) * nd)
        out = blocks[(Ellipsis, part, slice(0, size_a))].unflatten(-1, (k,) * nd)
        _ = out.copy_(coef.permute(*range(1, 2 * nd, 2), 0, *range(2, 2 * nd + 1, 2)))  # shifts …, image, frequencies …
        out[(Ellipsis,) + (0,) * nd] = 0.0  # centring removes the DC coefficient; the others are unchanged
        out *= (factor * inv).to(torch.float32).reshape(*(shifts,) * nd, b, *(1,) * nd)  # factor·â
        a = level2[:, part, :size_a]
        if rot is None:
            flat = a.reshape(-1, size_a).double()
            rot = torch.linalg.eigh(flat.T @ flat)[1].flip(1)[:, :PRINCIPAL].to(torch.float32).contiguous()
        norm2 = sure.to(torch.float64)
        lead = a @ rot  # factor·(â's principal coordinates)
        low2 = torch.linalg.vector_norm(a, dim=-1).double() ** 2 / factor**2
        other = (low2 - torch.linalg.vector_norm(lead, dim=-1).double() ** 2 / factor**2 + SLACK).clamp(min=0).sqrt() + eps
        rest = (norm2 - low2 + 3 * eps + SLACK).clamp(min=0).sqrt()
        last, one = torch.where(unsure, UNSURE, norm2 - 3 * eps), torch.ones_like(norm2)
        tail = [last, one] if query else [one, last]
        level1[:, part, :PRINCIPAL] = lead
        level1[:, part, PRINCIPAL:] = torch.stack([other * factor, rest * factor, *tail], -1)
        level2[:, part, size_a:] = torch.stack([rest * factor, *tail], -1)
    assert rot is not None
    return _Side(level1, level2, sums, inverse, cells_all, views), rot


def _candidates(q: _Side, r: _Side, v0: int, v1: int, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shift, query row, reference) of the pairs at shifts v0 … v1 − 1 whose bounds are ≤ ``thr`` (per query row), by
    shift: level 1 on every pair, a cache-sized block of rows at a time, then level 2 on the rows with a survivor."""
    m = r.level1.shape[1]
    rows_per, near = max(1, (1 << 18) // m), np.empty((v1 - v0, q.level1.shape[1]), dtype=bool)
    for j0 in range(0, q.level1.shape[1], rows_per):
        bound = torch.bmm(q.level1[v0:v1, j0:j0 + rows_per], r.level1[v0:v1].transpose(1, 2))
        near[:, j0:j0 + rows_per] = bound.amin(2).numpy() <= thr[j0:j0 + rows_per]
    found = [(np.zeros(0, np.int64),) * 3]
    for j in np.flatnonzero(near.any(1)):
        rows = np.flatnonzero(near[j])
        bound = q.level2[v0 + j].index_select(0, torch.from_numpy(rows)) @ r.level2[v0 + j].T
        i, c = np.divmod(np.flatnonzero(bound.numpy() <= thr[rows][:, None]), m)
        found.append((np.full(len(i), v0 + j), rows[i], c))
    return tuple(np.concatenate(x) for x in zip(*found))  # type: ignore[return-value]


def _units(side: _Side, v: int, rows: np.ndarray, window: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The windows ``u`` of ``rows`` at shift ``v`` (float32, from the float32 cells: ‖δu‖ ≤ (2·sqrt(Σw²/‖w − mean‖²) + 3)
    ·2⁻²⁴ < 1.3e-4) and their |u|², NaN where the window is too close to constant for that (those pairs are kept for
    the exact distance)."""
    u = side.cells[(rows,) + window].reshape(len(rows), -1)  # a copy: centred and scaled in place
    inv = side.inverse[v, rows]
    u -= (side.sums[v, rows] / u.shape[1]).astype(np.float32)[:, None]
    u *= np.nan_to_num(inv).astype(np.float32)[:, None]
    return u, np.where(np.isnan(inv), np.nan, inv > 0)


def _screen(q: _Side, r: _Side, v: int, windows: tuple[tuple[slice, ...], tuple[slice, ...]], rows: np.ndarray,
            refs: np.ndarray, limit: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Of the pairs (rows[i], refs[i]) at shift v, those whose float32 distance² is ≤ limit[i] + SCREEN (and those with a
    window too close to constant to tell)."""
    (uq, iq), (ur, ir) = (np.unique(x, return_inverse=True) for x in (rows, refs))
    (a, na), (b, nb) = _units(q, v, uq, windows[0]), _units(r, v, ur, windows[1])
    if len(uq) * len(ur) <= 32 * len(rows):  # dense enough for one matrix product
        dots = (torch.from_numpy(a) @ torch.from_numpy(b).T).numpy()[iq, ir]
    else:  # a dot product per pair, a cache-sized chunk of pairs at a time
        dots = np.concatenate([np.einsum("ij,ij->i", a[iq[c:c + chunk]], b[ir[c:c + chunk]]) for c in range(0, len(iq), chunk)])
    return np.flatnonzero(~(na[iq] + nb[ir] - 2 * dots > limit + SCREEN))  # NaN: kept


def _exact(q: _Side, r: _Side, plan: tuple[tuple[int, ...], ...], rows: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """The distances of the pairs (rows[i], refs[i]) at one shift (``plan``: query starts, reference starts, counts),
    computed exactly as the exhaustive search did: :func:`window_units` of the images' :func:`phases`, ‖u_q − u_r‖."""
    units = []
    for side, idx, starts in ((q, rows, plan[0]), (r, refs, plan[1])):
        n, (used, back) = len(side.views[0]), np.unique(idx, return_inverse=True)
        images = np.stack([side.views[i // n][i % n] for i in used])
        units.append(window_units(phases(images), starts, plan[2])[back])
    diff = units[0] - units[1]
    return np.sqrt((diff * diff).sum(1))


def _better(d: np.ndarray, variant: np.ndarray, ref: np.ndarray, q: np.ndarray,
            best: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The running best (distance, variant, reference) per query updated with candidates (d, variant, ref) of queries q:
    the smallest distance, ties to the earlier variant, then the lower reference index (the exhaustive loop's order)."""
    if not len(d):
        return best
    order = np.lexsort((ref, variant, d, q))
    first = order[np.r_[True, q[order][1:] != q[order][:-1]]]
    qq, dist, var, idx = q[first], d[first], variant[first], ref[first]
    bd, bv, bi = (b.copy() for b in best)
    win = (dist < bd[qq]) | ((dist == bd[qq]) & ((var < bv[qq]) | ((var == bv[qq]) & (idx < bi[qq]))))
    bd[qq[win]], bv[qq[win]], bi[qq[win]] = dist[win], var[win], idx[win]
    return bd, bv, bi


def shift_search(query: np.ndarray, reference: np.ndarray, size: int, nd: int, max_shift: int, flips: bool,
                 best: tuple[np.ndarray, np.ndarray, np.ndarray], ref_block: int = 512,
                 query_block: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nearest reference to each query over every flip and shift (module docstring), given the best so far.

    ``query`` (n × (2s)^d) and ``reference`` (m × (2s)^d) are the plain twice-resolution images of
    :func:`.memorisation.copy_embedding`; ``best`` is (distance, variant, reference index) per query from the pose
    thumbnails (variants 0 … F−1, F flips); shift ``j`` (in ``itertools.product`` order) and flip ``f`` are variant
    F + j·F + f. Returns the updated ``best``: the exhaustive search's minimum with its ties.
    """
    reach, views = 2 * max_shift, 4 if flips else 1
    shifts = list(itertools.product(range(-reach, reach + 1), repeat=nd))
    plans = [tuple(zip(*(overlap(a, 2 * size) for a in s))) for s in shifts]  # query starts, reference starts, counts
    maps = [_axis_maps(size, reach, LOW[nd], side) for side in (True, False)]
    cuts = [[tuple(slice(mp.first[i], mp.first[i] + mp.count[i]) for i in idx)
             for idx in itertools.product(range(2 * reach + 1), repeat=nd)] for mp in maps]  # each shift's window, per side
    grid = lambda x: np.ascontiguousarray(x).reshape(len(x), *(2 * size,) * nd)  # noqa: E731
    out, rot = tuple(b.copy() for b in best), None
    for q0 in range(0, len(query), query_block):
        q, rot = _side(flips_of(grid(query[q0:q0 + query_block]), flips), maps[0], nd, True, rot)
        n = len(q.views[0])
        part = tuple(b[q0:q0 + n] for b in out)
        for r0 in range(0, len(reference), ref_block):
            r, _ = _side([grid(reference[r0:r0 + ref_block])], maps[1], nd, False, rot)
            m = len(r.views[0])
            step = max(1, (1 << 18) // (views * n * m))  # shifts per step: the level-1 products stay in the cache
            for v0 in range(0, len(shifts), step):
                thr = np.tile(part[0] ** 2 + MARGIN, views).astype(np.float32)  # per query row: the best so far
                v, row, ri = _candidates(q, r, v0, min(v0 + step, len(shifts)), thr)
                limit, hits = part[0][row % n] ** 2, []  # the exact distance only where it may equal or beat the best
                bounds = np.flatnonzero(np.r_[True, v[1:] != v[:-1], True]) if len(v) else [0]
                for s, e in zip(bounds[:-1], bounds[1:]):  # one shift at a time
                    hit = s + _screen(q, r, v[s], (cuts[0][v[s]], cuts[1][v[s]]), row[s:e], ri[s:e], limit[s:e])
                    if len(hit):
                        hits.append((hit, _exact(q, r, plans[v[s]], row[hit], ri[hit])))
                if hits:
                    hit, d = (np.concatenate(x) for x in zip(*hits))
                    part = _better(d, views + v[hit] * views + row[hit] // n, ri[hit] + r0, row[hit] % n, part)
        for b, p in zip(out, part):
            b[q0:q0 + n] = p
    return out
