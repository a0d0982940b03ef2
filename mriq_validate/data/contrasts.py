"""MRI contrast names, normalised across the public brain-tumour dataset conventions.

BraTS 2018–2021 write ``t1, t1ce, t2, flair``; BraTS 2023–2025 write ``t1n, t1c, t2w, t2f``; the Medical Segmentation
Decathlon (Task01) writes ``FLAIR, T1w, t1gd, T2w`` in its dataset.json; nnU-Net v2 conversions write whatever their
``channel_names`` say (e.g. ``T1, T1ce, T2, FLAIR``). One canonical name per contrast lets a suite say ``flair`` and
read the right file or channel in every layout.
"""

from __future__ import annotations

import re

from ..errors import DataError

#: The canonical contrasts of structural brain MRI, in the order BraTS 2021 lists them.
CANONICAL = ("t1", "t1c", "t2", "flair")
#: Other names seen in public datasets, lower-cased with separators removed (see :func:`_key`).
SYNONYMS: dict[str, str] = {
    "t1": "t1", "t1n": "t1", "t1w": "t1", "t1native": "t1", "t1weighted": "t1",
    "t1c": "t1c", "t1ce": "t1c", "t1gd": "t1c", "t1post": "t1c", "t1contrast": "t1c", "t1wce": "t1c", "t1cegd": "t1c",
    "t1postcontrast": "t1c", "t1gad": "t1c",
    "t2": "t2", "t2w": "t2", "t2weighted": "t2",
    "flair": "flair", "t2f": "flair", "t2flair": "flair", "t2wflair": "flair",
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-.]+", "", name.strip().lower())


def canonical_contrast(name: str) -> str | None:
    """The canonical name of contrast ``name`` (``"T1Gd"`` → ``"t1c"``), or None when it is not a known contrast.

    >>> [canonical_contrast(n) for n in ("t1n", "T1ce", "t1gd", "T2w", "t2f", "FLAIR", "dwi")]
    ['t1', 't1c', 't1c', 't2', 'flair', 'flair', None]
    """
    return SYNONYMS.get(_key(name))


def contrast_name(name: str) -> str:
    """``name`` as a recorded contrast: its canonical name when known, else the name lower-cased (e.g. ``"mra"``)."""
    return canonical_contrast(name) or _key(name)


def select_contrasts(available: tuple[str, ...], wanted: list[str] | tuple[str, ...] | None, where: str) -> list[int]:
    """Indices into ``available`` (recorded names) of the ``wanted`` contrasts, in the order asked; all when ``wanted``
    is None. DataError naming the unknown or repeated contrast and the contrasts the data has."""
    if wanted is None:
        return list(range(len(available)))
    if not wanted:
        raise DataError(f"{where}: contrasts is empty; expected some of {list(available)} (or leave it out for all)")
    out: list[int] = []
    for name in wanted:
        key = contrast_name(str(name))
        if key not in available:
            raise DataError(f"{where}: contrast {name!r} is not in the data; it has {list(available)} "
                            f"(synonyms: t1=t1n=T1w, t1c=t1ce=t1gd, t2=t2w, flair=t2f)")
        if available.index(key) in out:
            raise DataError(f"{where}: contrast {name!r} is asked for twice (as {key!r})")
        out.append(available.index(key))
    return out
