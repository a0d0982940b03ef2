"""What a dataset folder holds once its layout is known (:mod:`mriq_validate.data.layouts` finds it): its cases, the
image source of each contrast of a case, the contrasts the layout offers, and the layout itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ImageSource:
    """One contrast of one case: the file, and the channel when the file is 4D (None for a 3D file)."""

    path: Path
    channel: int | None = None


@dataclass(frozen=True)
class Case:
    """One case: its image files keyed by :attr:`ContrastEntry.key`, and its label file (None when unlabelled)."""

    id: str
    images: dict[str, ImageSource]
    label: Path | None


@dataclass(frozen=True)
class ContrastEntry:
    """A contrast a layout offers: recorded ``name`` (canonical where known), the ``key`` of :attr:`Case.images`, the
    name it has in the data, where it is found (for provenance), its channel index in imagesTr layouts, and whether it
    is read when the contrasts are not named (every named channel of a dataset.json, every canonical file suffix)."""

    name: str
    key: str
    in_data: str
    where: str
    channel: int | None = None
    default: bool = True


@dataclass(frozen=True)
class Layout:
    """A folder's layout: the cases, the contrasts offered, how label values get their meaning, what was ignored."""

    name: str
    description: str
    root: Path
    cases: tuple[Case, ...]
    contrasts: tuple[ContrastEntry, ...]
    convention: str | None = None  # a key of CONVENTIONS when the layout fixes the label numbering
    dataset_json: dict[str, Any] | None = None  # the dataset.json that declares the labels (read when no labels: map is given)
    dataset_json_path: Path | None = None
    ignored: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    evidence: str = ""

    @property
    def indexed(self) -> bool:
        """Whether contrasts are channels of an imagesTr layout (so a digit names a channel index)."""
        return self.name in ("msd", "nnunet_v1", "nnunet_v2", "imagesTr")
