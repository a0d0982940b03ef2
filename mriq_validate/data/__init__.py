"""Reference data: builtin embedded cohorts and NIfTI folders in their public layouts, preprocessed as in Deo et al. 2025.

Importing the package fills the builtin-dataset registry of :mod:`.core`: the cohort modules register on import,
and :mod:`.core` imports none of them, so imports run one way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..cache import DiskCache
from ..errors import DataError
from . import mni, vessels  # noqa: F401  (register the builtin datasets on import)
from .core import BUILTIN_DATASETS, ReferenceData, Split
from .nifti import load_nifti_folder

__all__ = ["BUILTIN_DATASETS", "ReferenceData", "Split", "load_data"]


def load_data(spec: str, cache: DiskCache, *, contrasts: list[str] | None = None, **options: Any) -> ReferenceData:
    """Load reference data from ``builtin:NAME`` or a NIfTI folder in any public layout (:mod:`.layouts`: BraTS
    2018–2021 and 2023–2025, Medical Segmentation Decathlon, nnU-Net v1/v2, imagesTr/labelsTr, case and flat folders).

    ``contrasts`` selects image channels by name, in that order (all the data has when None); the other ``options``
    go to the NIfTI loader (``labels``, ``crop``, ``test_fraction``, ``slices``, ``progress``; see
    :func:`.nifti.load_nifti_folder`).
    """
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in BUILTIN_DATASETS:
            raise DataError(f"--mriq-data {spec!r}: unknown builtin dataset; expected one of {sorted('builtin:' + n for n in BUILTIN_DATASETS)}")
        return BUILTIN_DATASETS[name](cache).select(contrasts)
    return load_nifti_folder(Path(spec), cache, contrasts=contrasts, **options)
