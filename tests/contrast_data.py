"""Reference data with one contrast and with several, for tests of code that must work for any C ≥ 1, whatever the
embedded data holds (``builtin:mni-tumour`` has four contrasts; a one-contrast cohort is widened here)."""

from __future__ import annotations

from dataclasses import replace

import torch

from mriq_validate.data.core import ReferenceData, Split


def one_contrast(data: ReferenceData) -> ReferenceData:
    """``data`` with only its first contrast (C = 1)."""
    return data.select([data.contrasts[0]])


def several_contrasts(data: ReferenceData, k: int = 3) -> ReferenceData:
    """``data`` with ``k`` contrasts: its first ``k`` when it has them, else channels made from its first one (the
    slice, its square, and its negative inside the head: distinct images in [0, 1] with the same anatomy)."""
    if len(data.contrasts) >= k:
        return data.select(list(data.contrasts[:k]))

    def widen(s: Split) -> Split:
        x = s.images[:, :1]
        return Split(torch.cat([x, x**2, (1 - x) * (x > 0.02)], 1)[:, :k].contiguous(), s.masks, s.ids, s.covariates)

    names = tuple(c for c in ("t1", "t2", "flair", "t1c") if c != data.contrasts[0])
    return replace(data, train=widen(data.train), test=widen(data.test), contrasts=(data.contrasts[0], *names)[:k])


def channel_variants(data: ReferenceData) -> dict[str, ReferenceData]:
    """The one-contrast and the three-contrast form of ``data``, by name (for ``pytest.mark.parametrize`` ids)."""
    return {"C1": one_contrast(data), "C3": several_contrasts(data, 3)}
