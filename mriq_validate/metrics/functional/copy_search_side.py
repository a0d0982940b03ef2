"""The bound rows of :mod:`.copy_search`: every window's DCT coefficients, for the queries (all flips) and a reference block.

A flip along an axis maps the 2 × 2-pooled cells of either phase onto themselves in reverse, so the window of a flipped
image is a window of the image itself, read backwards; and the DCT-II (Ahmed, Natarajan & Rao 1974) of a reversed
sequence is the DCT-II with the sign of every odd frequency flipped, c_k(x reversed) = (−1)^k c_k(x), as
cos(π(2(n − 1 − j) + 1)k / 2n) = (−1)^k cos(π(2j + 1)k / 2n). So the coefficients of a query's four flips at every shift
are signed copies of the coefficients of the image itself on the windows of the shifts and their mirror images (16
windows an axis instead of 4 × 17 at the defaults; shifts that share a window share its row), and the level-1 rotation
is a principal-component basis within each parity class of frequencies (the covariance of a flip-symmetric set has no
entries across classes), so its coordinates only change sign under a flip.
Only the level-2 rows of the query windows that reach level 2 are ever built (:meth:`QuerySide.level2`).

The float32 error terms are those of the module :mod:`.copy_search` (see :func:`_windows`): a flip changes neither a
window's cells nor its range, count or norm, and a sign flip is exact.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import torch

from .copy_search_groups import group_stats, reference_rows

# Low-frequency DCT coefficients per axis (slices, volumes): level 2 bounds with all k^d of them, level 1 with their
# PRINCIPAL leading principal coordinates (taken from the reference block's first windows; any rotation keeps the bound valid).
LOW = {2: 8, 3: 5}
PRINCIPAL = 8
# Added under the square roots of the residual norms sqrt(|u|² − |a|²) and sqrt(|a|² − |lead|²): above the float32
# rounding of |a|² and |lead|² (< 1e-5), so that the norms are never underestimated.
SLACK = 1e-4
UNSURE = -1e6  # a window too close to constant to bound (or with ε > 1/4): none of its pairs is pruned


def _dct(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix (n × n): row k is sqrt(2/n)·cos(π(2j+1)k/2n), row 0 the constant 1/sqrt(n).

    Orthonormal, so a window's squared distance is its coefficients'; and a window read backwards (a flip) has the
    same coefficients with the odd frequencies' signs flipped, which is how the search covers flips at no cost:

    >>> c, x = _dct(8), np.random.default_rng(0).normal(size=8)
    >>> bool(np.allclose(c @ c.T, np.eye(8))), bool(np.allclose(c @ x[::-1], (c @ x) * (-1.0) ** np.arange(8)))
    (True, True)
    """
    c = np.sqrt(2 / n) * np.cos(np.pi * np.outer(np.arange(n), 2 * np.arange(n) + 1) / (2 * n))
    c[0] = 1 / np.sqrt(n)
    return c


class Family(NamedTuple):
    """Per axis, on the 2s − 1 pooled cells of both phases (phase 0's s cells, then phase 1's s − 1): the windows (first
    cell, count), their indicators and first k DCT rows (zero beyond the window), and per flip bit (0: as is, 1:
    mirrored) and shift the window's index."""

    first: np.ndarray
    count: np.ndarray
    indicator: torch.Tensor
    dct: torch.Tensor
    index: np.ndarray  # 2 × shifts


def axis_family(size: int, reach: int, k: int, query: bool, flips: bool) -> Family:
    """The :class:`Family` of the query's (``query``) or the reference's windows for shifts −reach … reach, with their
    mirror images when ``flips``: the shifts' own windows first, in shift order."""
    windows: list[tuple[int, int]] = []
    index = np.zeros((2, 2 * reach + 1), dtype=np.int64)

    def add(w: tuple[int, int]) -> int:
        if w not in windows:
            windows.append(w)
        return windows.index(w)

    mirror = lambda c: size - 1 - c if c < size else 3 * size - 2 - c  # noqa: E731  (the cell a flip puts at c)
    for row, a in enumerate(range(-reach, reach + 1)):
        start, n = max(a, 0) if query else max(-a, 0), (2 * size - abs(a)) // 2
        index[0, row] = add(((0 if start % 2 == 0 else size) + start // 2, n))
    for row in range(2 * reach + 1):
        first, n = windows[index[0, row]]
        index[1, row] = add((mirror(first + n - 1), n)) if flips else index[0, row]
    ind, dct = np.zeros((len(windows), 2 * size - 1)), np.zeros((len(windows) * k, 2 * size - 1))
    for j, (first, n) in enumerate(windows):
        ind[j, first:first + n] = 1
        dct[j * k:j * k + min(k, n), first:first + n] = _dct(n)[:k]
    first, count = (np.array(x, dtype=np.int64) for x in zip(*windows))
    return Family(first, count, torch.from_numpy(ind), torch.from_numpy(dct), index)


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


def _flip_axes(f: int, nd: int) -> tuple[int, ...]:
    """The spatial axes (0 … nd − 1) that flip ``f`` of :func:`.copy_search.flips_of` reverses."""
    return tuple(a for a, bit in ((nd - 1, 1), (nd - 2, 2)) if f & bit)


def _parities(k: int, nd: int) -> np.ndarray:
    """k^d × nd: each coefficient's frequency parity per axis (C order, the last axis fastest)."""
    return np.array(list(itertools.product(range(k), repeat=nd))) % 2


def rotation(a: torch.Tensor, k: int, nd: int) -> tuple[torch.Tensor, np.ndarray]:
    """PRINCIPAL principal directions of the rows ``a`` (… × k^d), each within one parity class of frequencies, and their
    classes (PRINCIPAL × nd): the largest eigenvalues over the classes' covariance blocks, ties to the earlier class."""
    flat = a.reshape(-1, k**nd).double()
    cov, parity = flat.T @ flat, _parities(k, nd)
    found = []
    for c, cls in enumerate(itertools.product((0, 1), repeat=nd)):
        idx = np.flatnonzero((parity == cls).all(1))
        val, vec = torch.linalg.eigh(cov[idx][:, idx])
        for j in range(len(idx)):
            found.append((-float(val[j]), c, j, idx, vec[:, j], cls))
    found.sort(key=lambda t: t[:3])
    rot = torch.zeros(k**nd, PRINCIPAL, dtype=torch.float64)
    for col, (_, _, _, idx, vec, _) in enumerate(found[:PRINCIPAL]):
        rot[torch.from_numpy(idx), col] = vec
    return rot.to(torch.float32).contiguous(), np.array([t[5] for t in found[:PRINCIPAL]])


class Windows(NamedTuple):
    """Per window of a family (rows: J^d windows, C order) and image: what the bound rows are made of."""

    coef: torch.Tensor  # W × n × (k^d + 3), float32: the window's DCT coefficients (DC 0), before the scaling to u, and tail
    scale: torch.Tensor  # W × n, float32: factor / ‖w − mean‖ (0 for a constant window)
    # W × n × 3, float32 (a view of coef's last 3): factor·rest, then the query's [|u|² − 3ε, 1] or the reference's [1, |u|² − 3ε]
    tail: torch.Tensor
    eps: torch.Tensor  # W × n, float64: ‖â − a‖ ≤ ε
    sums: np.ndarray  # W × n: Σ w over each window
    inverse: np.ndarray  # W × n: 1/‖w − mean‖, 0 for a constant window, NaN when too close to constant to tell
    cells: np.ndarray  # n × (2s − 1)^d, float32: the pooled cells of both phases


def _windows(images: np.ndarray, fam: Family, nd: int, query: bool, chunk: int = 64) -> Windows:
    """The :class:`Windows` of ``images`` (n × (2s)^d, float64) on the windows ``fam`` (one family for every axis).

    A query row is [−2x, |u|² − 3ε, 1] and a reference's [y, 1, |u|² − 3ε], so that their dot product is the bound
    |u_q|² + |u_r|² − 2 x·y − 3(ε_q + ε_r). The coefficients are computed in float32 from the cells minus the image's
    mid-range c, so each is off by at most (d·(2s − 1) + 2d + 2)·2⁻²⁴·max|cells − c|·sqrt(N) (Higham 2002, §3.5: d
    matrix products of inner size 2s − 1, with float32 DCT rows of 1-norm ≤ sqrt(n)) before the scaling to ``u``; that
    makes ‖â − a‖ ≤ ε. Hence a·b ≤ â·b̂ + ε_q + ε_r + ε_q·ε_r, and ``o`` + ε and sqrt(|u|² − |â|² + 3ε) are never below
    the true norms (ε ≤ 1/4; a window with a larger ε, or too close to constant to centre, puts UNSURE in place of |u|²).
    """
    jn, k = len(fam.count), fam.dct.shape[0] // len(fam.count)
    count = torch.from_numpy(np.prod(np.stack(np.meshgrid(*[fam.count] * nd, indexing="ij")), 0).reshape(-1, 1).astype(np.float64))
    factor, size_a, n, nw = (-2.0 if query else 1.0), k**nd, len(images), jn**nd
    coef_all = torch.empty(nw, n, size_a + 3, dtype=torch.float32)
    scale, tail = torch.empty(nw, n, dtype=torch.float32), coef_all[..., size_a:]
    eps_all = torch.empty(nw, n, dtype=torch.float64)
    sums, inverse = np.empty((nw, n)), np.empty((nw, n))
    cells_all = np.empty((n, *(images.shape[-1] - 1,) * nd), dtype=np.float32)
    dct, error = fam.dct.to(torch.float32), k ** (nd / 2) * (nd * (images.shape[-1] + 1) + 2) * 2.0**-24 * 1.01
    for c0 in range(0, n, chunk):
        cells = _pooled(torch.from_numpy(np.ascontiguousarray(images[c0:c0 + chunk])), nd)
        b, dims, part = cells.shape[0], tuple(range(1, nd + 1)), slice(c0, c0 + chunk)
        cells_all[part] = cells.numpy()
        total, energy = (_along(x, fam.indicator, nd).reshape(b, -1).T for x in (cells, cells * cells))  # Σ w, Σ w² (W × b)
        centred = energy - total * total / count  # ‖w − mean‖²
        sure = (centred >= 1e-6 * energy) & (centred >= 4e-24 * count)  # u ≠ 0 and its norm accurate
        inv = torch.where(sure, centred.clamp(min=1e-300).rsqrt(), 0.0)
        low, high = cells.amin(dims, keepdim=True), cells.amax(dims, keepdim=True)
        eps = error * ((high - low) / 2).reshape(1, b) * count.sqrt() * inv + 2.0**-22  # ‖â − a‖ ≤ ε
        unsure = (~sure & (energy > 0)) | (eps > 0.25)  # energy 0: an all-zero window, u = 0 exactly
        sums[:, part], inverse[:, part] = total.numpy(), torch.where(~sure & (energy > 0), torch.nan, inv).numpy()
        coef = _along((cells - (low + high) / 2).to(torch.float32), dct, nd).reshape(b, *(jn, k) * nd)
        out = coef_all[:, part, :size_a].unflatten(0, (jn,) * nd).unflatten(-1, (k,) * nd)
        _ = out.copy_(coef.permute(*range(1, 2 * nd, 2), 0, *range(2, 2 * nd + 1, 2)))  # windows …, image, frequencies …
        coef_all[:, part, 0] = 0.0  # centring removes the DC coefficient; the others are unchanged
        sc = (factor * inv).to(torch.float32)
        a = coef_all[:, part, :size_a] * sc[..., None]  # factor·â
        norm2 = sure.to(torch.float64)
        low2 = torch.linalg.vector_norm(a, dim=-1).double() ** 2 / factor**2
        rest = (norm2 - low2 + 3 * eps + SLACK).clamp(min=0).sqrt()
        last, one = torch.where(unsure, UNSURE, norm2 - 3 * eps), torch.ones_like(norm2)
        scale[:, part], eps_all[:, part] = sc, eps
        tail[:, part] = torch.stack([rest * factor, *([last, one] if query else [one, last])], -1).to(torch.float32)
    return Windows(coef_all, scale, tail, eps_all, sums, inverse, cells_all)


def level1_rows(w: Windows, rot: torch.Tensor, query: bool) -> torch.Tensor:
    """W × n × (PRINCIPAL + 4), float32: ``a``'s principal coordinates along ``rot`` (factor·), the norm ``o`` of its others
    plus ε (factor·), then the level-2 tail."""
    factor = -2.0 if query else 1.0
    out = torch.empty(*w.scale.shape, PRINCIPAL + 4, dtype=torch.float32)
    for c0 in range(0, w.coef.shape[1], 64):
        part = slice(c0, c0 + 64)
        a = w.coef[:, part, :-3] * w.scale[:, part, None]
        lead = a @ rot
        low2 = torch.linalg.vector_norm(a, dim=-1).double() ** 2 / factor**2
        other = (low2 - torch.linalg.vector_norm(lead, dim=-1).double() ** 2 / factor**2 + SLACK).clamp(min=0).sqrt()
        out[:, part, :PRINCIPAL] = lead
        out[:, part, PRINCIPAL] = ((other + w.eps[:, part]) * factor).to(torch.float32)
        out[:, part, PRINCIPAL + 1:] = w.tail[:, part]
    return out


class QuerySide:
    """Every shift's window of the queries' flips (rows f·n + i, flip-major): the level-1 rows for a rotation, the
    level-2 rows on demand, and the windows' sums, norms and cells for the float32 screen."""

    def __init__(self, images: np.ndarray, fam: Family, nd: int, flips: bool) -> None:
        self.nd, self.n, self.views_count = nd, len(images), 4 if flips else 1
        self.views = [images, images[..., ::-1], images[..., ::-1, :], images[..., ::-1, ::-1]][:self.views_count]
        self.win = _windows(images, fam, nd, True)
        k, shifts = fam.dct.shape[0] // len(fam.count), fam.index.shape[1]
        # per flip, per shift (product order): the window in the family
        self.index = torch.from_numpy(np.stack([shift_windows(fam, nd, _flip_axes(f, nd)) for f in range(self.views_count)]))
        parity = _parities(k, nd)
        self.sign2 = torch.from_numpy(np.stack([(-1.0) ** parity[:, list(_flip_axes(f, nd))].sum(1)
                                                for f in range(self.views_count)]).astype(np.float32))  # F × k^d
        idx = self.index.T.numpy()  # V × F
        self.sums = self.win.sums[idx].reshape(shifts**nd, -1)  # V × (F·n)
        self.inverse = self.win.inverse[idx].reshape(shifts**nd, -1)
        half = images.shape[-1] // 2  # a flip reverses each phase's cells
        mirror = lambda x, axis: np.concatenate([np.flip(x.take(range(half), axis), axis),  # noqa: E731
                                                 np.flip(x.take(range(half, 2 * half - 1), axis), axis)], axis)
        views = [self.win.cells]
        for f in range(1, self.views_count):
            x = self.win.cells
            for axis in _flip_axes(f, nd):
                x = mirror(x, axis + 1)
            views.append(x)
        self.cells = np.concatenate(views)
        self._rot: torch.Tensor | None = None
        self.level1, self.stats = torch.empty(0), (torch.empty(0),)

    def for_rotation(self, rot: torch.Tensor, classes: np.ndarray, groups: list[np.ndarray]) -> torch.Tensor:
        """V × (F·n) × (PRINCIPAL + 4): the level-1 rows with the principal directions ``rot`` (of parity ``classes``);
        their level-0 statistics over the shift ``groups`` go to ``stats``."""
        if self._rot is not rot:
            per_window = level1_rows(self.win, rot, True)  # W × n × K1
            sign = torch.ones(self.views_count, 1, 1, PRINCIPAL + 4)
            for f in range(self.views_count):
                sign[f, 0, 0, :PRINCIPAL] = torch.from_numpy((-1.0) ** classes[:, list(_flip_axes(f, self.nd))].sum(1))
            rows = per_window[self.index] * sign  # F × V × n × K1
            self.level1, self._rot = rows.transpose(0, 1).reshape(self.index.shape[1], -1, PRINCIPAL + 4).contiguous(), rot
            self.stats = group_stats(self.level1, groups, True)
        return self.level1

    def level2(self, v: int, rows: np.ndarray) -> torch.Tensor:
        """len(rows) × (k^d + 3), float32: the level-2 rows of the query rows ``rows`` at shift ``v``."""
        f, i = (torch.from_numpy(x) for x in np.divmod(rows, self.n))
        w = self.index[f, v]
        at = w * self.n + i
        rows = self.win.coef.view(-1, self.win.coef.shape[-1]).index_select(0, at)
        rows[:, :-3] *= self.win.scale.view(-1).index_select(0, at)[:, None] * self.sign2[f]  # a sign flip is exact
        return rows


class ReferenceSide(NamedTuple):
    """Every shift's window of a block of references (rows: the references, unflipped)."""

    level1: torch.Tensor  # V × m × K1, float32: the level-1 rows per shift
    level0: torch.Tensor  # G × m × K1 + 1, float32: the level-0 rows per shift group
    windows: torch.Tensor  # W × m × K2, float32: the level-2 rows per window (shift v's: windows[index[v]])
    index: np.ndarray  # V: each shift's window
    sums: np.ndarray  # V × m
    inverse: np.ndarray  # V × m
    cells: np.ndarray  # m × (2s − 1)^d, float32
    views: list[np.ndarray]  # [the plain images (2s)^d], for the exact distance
    rot: torch.Tensor  # the level-1 principal directions
    classes: np.ndarray  # their parity classes

    def level2(self, v: int) -> torch.Tensor:
        """m × K2: the level-2 rows at shift ``v``."""
        return self.windows[int(self.index[v])]

    @property
    def nbytes(self) -> int:
        """Its memory."""
        return sum(int(t.numel() * t.element_size()) for t in (self.level1, self.level0, self.windows)) + sum(
            int(a.nbytes) for a in (self.sums, self.inverse, self.cells, self.views[0]))


def shift_windows(fam: Family, nd: int, mirrored: tuple[int, ...] = ()) -> np.ndarray:
    """V: the family window of each shift (``itertools.product`` order), the axes ``mirrored`` taking the mirror images."""
    idx = [fam.index[int(axis in mirrored)] for axis in range(nd)]
    return np.ravel_multi_index(np.meshgrid(*idx, indexing="ij"), (len(fam.count),) * nd).reshape(-1)


def reference_side(images: np.ndarray, fam: Family, nd: int, groups: list[np.ndarray]) -> ReferenceSide:
    """The :class:`ReferenceSide` of ``images`` (m × (2s)^d, float64), with a rotation from its first windows, and its
    level-0 rows over the shift ``groups``."""
    w = _windows(images, fam, nd, False)
    k, index = fam.dct.shape[0] // len(fam.count), shift_windows(fam, nd)
    rot, classes = rotation(w.coef[:, :16, :-3] * w.scale[:, :16, None], k, nd)
    level1 = level1_rows(w, rot, False)[torch.from_numpy(index)]
    level2 = w.coef
    level2[..., :-3] *= w.scale[..., None]  # factor·â, in place
    level0 = reference_rows(group_stats(level1, groups, False))
    return ReferenceSide(level1, level0, level2, index, w.sums[index], w.inverse[index], w.cells, [images], rot, classes)
