"""Level 0 of :mod:`.copy_search`: one bound for a group of neighbouring shifts, from the level-1 rows' centres and radii.

A level-1 row pair's exact product is ``‖x_q − x_r‖² + δ_q + δ_r``, with ``x`` a row's first PRINCIPAL + 2 values
(unscaled) and ``δ = last − ‖x‖² ≤ 0`` (``last`` = |u|² − 3ε, or UNSURE). Over a group G of shifts, with ``c`` the mean
of a row's ``x`` over G, ``ρ`` the largest ‖x − c‖ and ``Δ`` the smallest δ, the triangle inequality gives, at every
shift of G, ‖x_q − x_r‖ ≥ ‖c_q − c_r‖ − ρ_q − ρ_r, and sqrt(thr − δ_q − δ_r) ≤ sqrt(thr − Δ_q) + sqrt(−Δ_r). So when

    ‖c_q − c_r‖² − (A_q + B_r)² > 0,   A_q = ρ_q + sqrt(thr − Δ_q),   B_r = ρ_r + sqrt(−Δ_r),

every shift of G has a level-1 product above ``thr`` and the pair is dropped for the whole group: the bounding-ball
test of metric trees (Uhlmann 1991, Inf. Process. Lett. 40, 175), here over shifts. The left side is one dot product
of 13-value rows, [−2c_q, |c_q|² − A_q², 1, −2A_q]·[c_r, 1, |c_r|² − B_r², B_r]. A row whose A or B exceeds CAP (an
UNSURE window among its shifts, or a value not finite) gets a row whose every product is below −10⁵: it is never
dropped here. Otherwise ‖x‖² = last − δ ≤ 1 + CAP², so the terms' magnitudes sum to less than 100; ρ and −Δ are
rounded up (−Δ taken as 0 where rounding makes it negative), and a pair is dropped only when the float32 product
exceeds MARGIN (its rounding, < 13·2⁻²⁴·100 ≈ 8e-5, far below).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

GROUP = 3  # shifts per axis in a group (3 × 3 at the defaults: 36 groups of the 289 shifts)
CAP = 4.0
NEVER = -1e6  # the |c|² − A² (or B²) of a row never dropped here


def shift_groups(reach: int, nd: int) -> list[np.ndarray]:
    """The groups of GROUP^d neighbouring shifts (indices in ``itertools.product`` order, ascending), covering all.

    >>> groups = shift_groups(16, 2)  # ±16 px in 2D: 33 × 33 shifts, in 3 × 3 groups (the last row and column of 3)
    >>> len(groups), sum(len(g) for g in groups), groups[0].tolist()
    (121, 1089, [0, 1, 2, 33, 34, 35, 66, 67, 68])
    """
    axis = [np.arange(i, min(i + GROUP, 2 * reach + 1)) for i in range(0, 2 * reach + 1, GROUP)]
    return [np.sort(np.ravel_multi_index(np.meshgrid(*combo, indexing="ij"), (2 * reach + 1,) * nd).reshape(-1))
            for combo in itertools.product(axis, repeat=nd)]


def group_stats(level1: torch.Tensor, groups: list[np.ndarray], query: bool) -> tuple[torch.Tensor, ...]:
    """Per group (G × R): the centres ``c`` (× PRINCIPAL + 2), |c|², the radii ρ and the depths −Δ of the level-1 rows
    ``level1`` (V × R × K1) of the queries (``query``) or the references; all float32, ρ and −Δ rounded up (by far more
    than their float32 rounding: 10⁻⁵ relative and 10⁻⁵ absolute)."""
    k, factor = level1.shape[-1] - 2, -2.0 if query else 1.0
    out = []
    for vs in groups:
        rows = level1.index_select(0, torch.from_numpy(vs))  # |G| × R × K1
        x, last = rows[..., :k] / factor, rows[..., k if query else k + 1]  # exact: a division by a power of 2
        c = x.mean(0)
        sq = (x * x).sum(-1)
        rho = (x - c).norm(dim=-1).amax(0)
        depth = (sq - last).amax(0).clamp(min=0)
        out.append(((c * c).sum(-1), c, rho * (1 + 1e-5) + 1e-5, depth + 1e-5 * (1 + sq.amax(0) + last.abs().amax(0))))
    norm2, c, rho, depth = (torch.stack(x) for x in zip(*out))
    return c, norm2, rho, depth


def reference_rows(stats: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """G × m × (PRINCIPAL + 5), float32: the references' level-0 rows [c, 1, |c|² − B², B]."""
    c, norm2, rho, depth = stats
    b = rho.double() + depth.double().sqrt()
    rows = torch.cat([c, torch.stack([torch.ones_like(b), norm2.double() - b * b, b], -1).to(torch.float32)], -1)
    rows[~(b <= CAP)] = torch.tensor([0.0] * c.shape[-1] + [1.0, NEVER, 0.0])
    return rows


def query_rows(stats: tuple[torch.Tensor, ...], g: int, thr: np.ndarray) -> torch.Tensor:
    """R × (PRINCIPAL + 5), float32: the query rows' level-0 rows [−2c, |c|² − A², 1, −2A] in group ``g`` for the
    thresholds ``thr`` (per row)."""
    c, norm2, rho, depth = (s[g] for s in stats)
    a = rho.double() + (torch.from_numpy(thr).double() + depth.double()).sqrt()
    rows = torch.cat([-2 * c, torch.stack([norm2.double() - a * a, torch.ones_like(a), -2 * a], -1).to(torch.float32)], -1)
    rows[~(a <= CAP)] = torch.tensor([0.0] * c.shape[-1] + [NEVER, 1.0, 0.0])
    return rows
