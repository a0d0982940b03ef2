"""A picture of what each perturbation does: one slice, every perturbation at each strength of its sweep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import MriqError
from .base import PerturbContext, apply, get

# Strength levels per perturbation (values of its ``strength`` parameter), mildest first. The families are those of
# Deo et al. 2025 (arXiv 2505.07175: noise, localised morphological alterations, distribution shifts including
# memorisation); the paper's levels are not public. The duplication fractions (5, 15, 30, 45 %) are the defaults of the
# same group's memorisation code (github.com/YashDeo-York/Mem-index, core/create_contamination.py); the noise levels
# span σ = 0.01-0.1 on [0, 1] slices, and the others span "barely visible" to "obvious".
DEFAULT_SWEEPS: dict[str, list[float]] = {
    "gaussian": [0.01, 0.02, 0.05, 0.1],
    "rician": [0.01, 0.02, 0.05, 0.1],
    "poisson": [1000, 300, 100, 30],
    "gaussian_blur": [0.5, 1.0, 2.0, 4.0],
    "bias_field": [0.1, 0.2, 0.4, 0.8],
    "kspace_spike": [0.05, 0.1, 0.25, 0.5],
    "gibbs": [0.3, 0.5, 0.7, 0.85],
    "ghosting": [0.25, 0.5, 0.75, 1.0],
    "boundary_blur": [1.0, 2.0, 4.0],
    "gradient": [0.1, 0.25, 0.5],
    "texture_flatten": [0.25, 0.5, 1.0],
    "lesion_erase": [0.25, 0.5, 1.0],
    "lesion_resize": [-4, -2, 2, 4],
    "vessel_break": [1, 3, 5],
    "vessel_prune": [10, 30, 100],
    "external_duplication": [0.05, 0.15, 0.3, 0.45],
    "internal_duplication": [0.05, 0.15, 0.3, 0.45],
    "mode_collapse": [0.25, 0.5, 0.75, 1.0],
    "density_shift": [0.25, 0.5, 0.75, 1.0],
}


def _slice(x: torch.Tensor | np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)).to(dtype)
    while t.ndim < 4:
        t = t[None]
    if t.shape[:2] != (1, 1):
        raise ValueError(f"perturbation_figure needs one 2D slice (H×W, 1×H×W or 1×1×H×W), got shape {tuple(t.shape)}")
    return t


def perturbation_figure(image: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray, out_path: str | Path,
                        sweeps: dict[str, list[float]] | None = None, seed: int = 0,
                        ctx: PerturbContext | None = None) -> Path:
    """Write a PNG grid (matplotlib, Agg) to ``out_path``: one row per perturbation, the clean slice then one column per strength,
    with the mask outline (all labels > 0) in red. Set-level perturbations act on sets, not slices, and are
    listed as skipped in the caption; a perturbation that cannot act on this slice shows its error in the cell."""
    from matplotlib.figure import Figure  # no pyplot: the global backend is left alone, rendering is Agg

    img = _slice(image, torch.float32)
    msk = _slice(mask, torch.int64)
    sweeps = dict(DEFAULT_SWEEPS if sweeps is None else sweeps)
    rows, skipped = [], []
    for name, levels in sweeps.items():
        (skipped if get(name).scope == "set" else rows).append(name)
    ncol = 1 + max((len(sweeps[r]) for r in rows), default=0)
    fig = Figure(figsize=(1.9 * ncol, 2.0 * max(len(rows), 1)))
    axes = fig.subplots(max(len(rows), 1), ncol, squeeze=False)
    outline = msk[0, 0].numpy() > 0
    for r, name in enumerate(rows):
        pert = get(name)
        cells: list[tuple[str, np.ndarray | str]] = [("clean", img[0, 0].numpy())]
        for level in sweeps[name]:
            title = f"{pert.strength}={level:g}"
            try:
                out = apply(name, img, msk, seed=seed, ctx=ctx, **{pert.strength: level})
                cells.append((title, out.images[0, 0].numpy()))
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
    if skipped:
        caption += f"; set-level, not shown per slice: {', '.join(skipped)}"
    fig.suptitle(caption, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
