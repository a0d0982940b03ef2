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
sits in low frequencies, so the bound is tight. The bound is applied in levels, each on what the previous one left:
level 0 drops a (query flip, reference) pair for a whole group of 3 × 3 neighbouring shifts at once (a bounding-ball
test on the level-1 rows, :mod:`.copy_search_groups`); level 1 takes PRINCIPAL principal coordinates of ``a`` (the norm
of ``a``'s other coordinates bounds their part alike) at each shift, for the query rows level 0 kept; level 2 all of
``a``, for the rows with a level-1 survivor, against every reference; a survivor's distance is then screened in float32
from the windows, and only a distance that may equal or beat the best so far is computed as the exhaustive search
computed it (:func:`window_units`, ‖u_q − u_r‖). A pair is dropped only when its bound exceeds the best squared
distance by MARGIN, far above the rounding of the float32 bounds (each carries its own error term ε, see
:mod:`.copy_search_side`), so no variant that could be nearer, or as near, is skipped: the result, ties included (the
earlier variant, then the lower reference index), is the exhaustive search's, whatever the order the shifts are
searched in. On 256 held-out × 2048 training slices level 0 leaves ~15 % of the pairs (~36 % of the query rows) of a
group to level 1, ~8 % of the (query window, shift) rows have a level-1 survivor, ~0.05 % of the variants pass level 2
and one or two a query need the exact distance.

The queries' four flips cost about one image's windows (their coefficients are signed copies, see
:mod:`.copy_search_side`), and a reference block's windows are computed once per content and kept in memory
(:mod:`.copy_search_cache`): a run searches one training set for the held-out and for every evaluated set.

No nearest-neighbour library fits a distance that is a minimum over windows normalised each on its own (FAISS, Annoy
and the like index fixed vectors), so the search is written here, on torch's matrix products.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .copy_search_cache import reference_side_cached
from .copy_search_groups import GROUP, query_rows, shift_groups
from .copy_search_side import LOW, QuerySide, ReferenceSide, axis_family

# A pair is pruned only when its bound exceeds the best squared distance by this: the float32 rounding of a bound (at
# most 128 terms whose |products| sum to at most 7, Higham 2002, §3.1) is below 128·2⁻²⁴·7 ≈ 5e-5.
MARGIN = 1e-3
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


def phases(x: np.ndarray, only: tuple[int, ...] | None = None) -> dict[tuple[int, ...], np.ndarray]:
    """n × 2s × 2s (× 2s) → its 2 × 2 (× 2) average pools starting at pixel offset p ∈ {0, 1}^d (the half-pixel phases of
    the thumbnail grid; an odd phase has one cell fewer); with ``only``, that phase alone."""
    nd = x.ndim - 1
    cells = [o[::-1] for o in itertools.product((0, 1), repeat=nd)]  # the first axis varies fastest (2D: 00, 10, 01, 11)
    out = {}
    for phase in itertools.product((0, 1), repeat=nd) if only is None else [only]:
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


def _candidates(q: QuerySide, r: ReferenceSide, groups: list[np.ndarray], g: int,
                thr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shift, query row, reference) of the pairs at the shifts of ``groups[g]`` whose bounds are ≤ ``thr`` (per
    query row), by shift: level 0 over the group, then at each shift level 1 on the rows it kept and level 2 on the
    rows with a survivor; a cache-sized block of rows at a time."""
    m, level1 = r.level1.shape[1], q.for_rotation(r.rot, r.classes, groups)
    rows_per, zero = max(1, (1 << 18) // m), query_rows(q.stats, g, thr)
    keep = np.concatenate([~((zero[j0:j0 + rows_per] @ r.level0[g].T).amin(1).numpy() > MARGIN)
                           for j0 in range(0, len(zero), rows_per)])
    rows0 = torch.from_numpy(np.flatnonzero(keep))
    found = [(np.zeros(0, np.int64),) * 3]
    for v in groups[g]:
        sub, thr0 = level1[v].index_select(0, rows0), thr[rows0.numpy()]
        near = np.concatenate([np.zeros(0, bool)] + [(sub[j0:j0 + rows_per] @ r.level1[v].T).amin(1).numpy() <= thr0[j0:j0 + rows_per]
                                                     for j0 in range(0, len(sub), rows_per)])
        rows = rows0.numpy()[near]
        if not len(rows):
            continue
        bound = q.level2(v, rows) @ r.level2(v).T
        i, c = np.divmod(np.flatnonzero(bound.numpy() <= thr[rows][:, None]), m)
        found.append((np.full(len(i), v), rows[i], c))
    return tuple(np.concatenate(x) for x in zip(*found))  # type: ignore[return-value]


def _units(side: QuerySide | ReferenceSide, v: int, rows: np.ndarray, window: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The windows ``u`` of ``rows`` at shift ``v`` (float32, from the float32 cells: ‖δu‖ ≤ (2·sqrt(Σw²/‖w − mean‖²) + 3)
    ·2⁻²⁴ < 1.3e-4) and their |u|², NaN where the window is too close to constant for that (those pairs are kept for
    the exact distance)."""
    u = side.cells[(rows,) + window].reshape(len(rows), -1)  # a copy: centred and scaled in place
    inv = side.inverse[v, rows]
    u -= (side.sums[v, rows] / u.shape[1]).astype(np.float32)[:, None]
    u *= np.nan_to_num(inv).astype(np.float32)[:, None]
    return u, np.where(np.isnan(inv), np.nan, inv > 0)


def _screen(q: QuerySide, r: ReferenceSide, v: int, windows: tuple[tuple[slice, ...], tuple[slice, ...]], rows: np.ndarray,
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


def _exact(q: QuerySide, r: ReferenceSide, plan: tuple[tuple[int, ...], ...], rows: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """The distances of the pairs (rows[i], refs[i]) at one shift (``plan``: query starts, reference starts, counts),
    computed exactly as the exhaustive search did: :func:`window_units` of the images' :func:`phases`, ‖u_q − u_r‖."""
    units = []
    for side, idx, starts in ((q, rows, plan[0]), (r, refs, plan[1])):
        n, (used, back) = len(side.views[0]), np.unique(idx, return_inverse=True)
        images = np.stack([side.views[i // n][i % n] for i in used])
        units.append(window_units(phases(images, tuple(a % 2 for a in starts)), starts, plan[2])[back])
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
                 best: tuple[np.ndarray, np.ndarray, np.ndarray], ref_block: int = 2048,
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
    fams = [axis_family(size, reach, LOW[nd], side, flips and side) for side in (True, False)]
    cuts = [[tuple(slice(f.first[f.index[0, i]], f.first[f.index[0, i]] + f.count[f.index[0, i]]) for i in idx)
             for idx in itertools.product(range(2 * reach + 1), repeat=nd)] for f in fams]  # each shift's window, per side
    groups = shift_groups(reach, nd)
    grid = lambda x: np.ascontiguousarray(x).reshape(len(x), *(2 * size,) * nd)  # noqa: E731
    out = tuple(b.copy() for b in best)
    for q0 in range(0, len(query), query_block):
        q = QuerySide(grid(query[q0:q0 + query_block]), fams[0], nd, flips)
        n = q.n
        part = tuple(b[q0:q0 + n] for b in out)
        for r0 in range(0, len(reference), ref_block):
            r = reference_side_cached(grid(reference[r0:r0 + ref_block]), fams[1], nd, groups, (size, reach, LOW[nd], GROUP))
            for g in range(len(groups)):
                thr = np.tile(part[0] ** 2 + MARGIN, views).astype(np.float32)  # per query row: the best so far
                v, row, ri = _candidates(q, r, groups, g, thr)
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
