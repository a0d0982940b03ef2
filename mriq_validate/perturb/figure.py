"""A picture of what each perturbation does: one slice, every perturbation at each strength of its sweep.

A volume is perturbed whole (as a gate run perturbs it) and shown by one axial slice: the one through the lesion's
centroid, or the middle slice when the mask is empty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import MriqError
from .base import PerturbContext, apply, get
from .sweeps import DEFAULT_SWEEPS


def _spatial_dims(mask: torch.Tensor | np.ndarray) -> int:
    """2 for a slice's mask (H×W, 1×H×W, 1×1×H×W), 3 for a volume's (D×H×W, 1×D×H×W, 1×1×D×H×W)."""
    shape = list(np.shape(mask))
    while len(shape) > 2 and shape[0] == 1:
        shape.pop(0)
    return 3 if len(shape) == 3 else 2


def _slice(x: torch.Tensor | np.ndarray, dtype: torch.dtype, what: str, spatial: int = 2) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)).to(dtype)
    while t.ndim < 2 + spatial:
        t = t[None]
    if t.ndim != 2 + spatial or t.shape[0] != 1:
        expected = "H×W, C×H×W or 1×C×H×W" if spatial == 2 else "D×H×W, C×D×H×W or 1×C×D×H×W"
        raise ValueError(f"perturbation_figure needs one {spatial}D {'slice' if spatial == 2 else 'volume'} as {what} "
                         f"({expected}), got shape {tuple(t.shape)}")
    return t


def shown_slice(mask: torch.Tensor) -> int:
    """The axial slice of a 1×1×D×H×W mask that the figure shows: through the lesion centroid (all labels > 0),
    else the middle one."""
    depth = (mask[0, 0] > 0).flatten(1).sum(1).double()
    if depth.sum() == 0:
        return mask.shape[2] // 2
    return int(round(float((depth * torch.arange(len(depth), dtype=torch.float64)).sum() / depth.sum())))


def perturbation_figure(image: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray, out_path: str | Path,
                        sweeps: dict[str, list[float]] | None = None, seed: int = 0,
                        ctx: PerturbContext | None = None, channel: int = 0, contrast: str | None = None) -> Path:
    """Write a PNG grid (matplotlib, Agg) to ``out_path``: one row per perturbation, the clean slice then one column per strength,
    with the mask outline (all labels > 0) in red. Set-level perturbations act on sets, not slices, and are
    listed as skipped in the caption; a perturbation that cannot act on this slice shows its error in the cell.
    A multi-contrast slice (C×H×W) is perturbed whole; the figure shows its channel ``channel``, named ``contrast``.
    A volume (image C×D×H×W or 1×C×D×H×W with a D×H×W mask; the mask's shape tells a volume from a slice) is
    perturbed whole in 3D and every panel shows the same axial slice: the one through the lesion centroid
    (:func:`shown_slice`), named in the caption."""
    from matplotlib.figure import Figure  # no pyplot: the global backend is left alone, rendering is Agg

    spatial = _spatial_dims(mask)
    img = _slice(image, torch.float32, "image", spatial)
    msk = _slice(mask, torch.int64, "mask", spatial)
    if msk.shape[1] != 1 or msk.shape[2:] != img.shape[2:]:
        raise ValueError(f"perturbation_figure: mask {tuple(msk.shape)} does not match image {tuple(img.shape)}; "
                         f"expected one {'H×W' if spatial == 2 else 'D×H×W'} mask")
    depth = shown_slice(msk) if spatial == 3 else None
    view = (lambda t: t[0, channel]) if depth is None else (lambda t: t[0, channel, depth])
    if not 0 <= channel < img.shape[1]:
        raise ValueError(f"perturbation_figure: channel {channel} of an image with {img.shape[1]} channel(s)")
    sweeps = dict(DEFAULT_SWEEPS if sweeps is None else sweeps)
    rows, skipped = [], []
    for name, levels in sweeps.items():
        (skipped if get(name).scope == "set" else rows).append(name)
    ncol = 1 + max((len(sweeps[r]) for r in rows), default=0)
    fig = Figure(figsize=(1.9 * ncol, 2.0 * max(len(rows), 1)))
    axes = fig.subplots(max(len(rows), 1), ncol, squeeze=False)
    outline = (msk[0, 0] if depth is None else msk[0, 0, depth]).numpy() > 0
    for r, name in enumerate(rows):
        pert = get(name)
        cells: list[tuple[str, np.ndarray | str]] = [("clean", view(img).numpy())]
        for level in sweeps[name]:
            title = f"{pert.strength}={level:g}"
            try:
                out = apply(name, img, msk, seed=seed, ctx=ctx, **{pert.strength: level})
                cells.append((title, view(out.images).numpy()))
            except MriqError as exc:
                cells.append((title, str(exc)))
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells):
                ax.axis("off")
                continue
            title, content = cells[c]
            if isinstance(content, str):
                ax.text(0.5, 0.5, content[:120], wrap=True, ha="center", va="center", fontsize=5)
            else:
                ax.imshow(content, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                if outline.any():
                    ax.contour(outline, levels=[0.5], colors="red", linewidths=0.4)
            ax.set_title(title, fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    caption = f"seed {seed}; red: mask outline"
    if img.shape[1] > 1 or contrast:
        caption += f"; contrast {contrast or f'channel {channel}'} of {img.shape[1]}"
    if depth is not None:
        where = "lesion centroid" if bool((msk > 0).any()) else "middle"
        caption += f"; volume perturbed in 3D, axial slice {depth}/{msk.shape[2]} ({where})"
    if skipped:
        caption += f"; set-level, not shown per slice: {', '.join(skipped)}"
    fig.suptitle(caption, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
