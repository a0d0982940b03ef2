"""Reference data: builtin embedded cohorts and NIfTI folders in their public layouts, preprocessed as in Deo et al. 2025.

Importing the package fills the builtin-dataset registry of :mod:`.core`: the cohort modules register on import,
and :mod:`.core` imports none of them, so imports run one way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..cache import DiskCache
from ..errors import DataError
from . import mni, mni_tumour3d, vessels  # noqa: F401  (register the builtin datasets on import)
from .attributes import attach_case_attributes
from .core import BUILTIN_DATASETS, BUILTIN_OPTIONS, ReferenceData, Split
from .nifti import DEFAULT_SLICING, check_slicing_options, load_nifti_folder

__all__ = ["BUILTIN_DATASETS", "ReferenceData", "Split", "load_data"]

SLICING_DIMS = {"slices": 2, "volume": 3}  # the spatial dimensions of the items each ``slicing`` gives
BUILTIN_ONLY_OPTIONS = ("size",)  # data options of the template builtins, which a NIfTI folder does not take
SLICING_EXAMPLES = {"slices": "slice data (builtin:mni-tumour, or a NIfTI folder)",
                    "volume": "volume data (builtin:mni-tumour-3d, or a NIfTI folder)"}


def load_data(spec: str, cache: DiskCache, *, contrasts: list[str] | None = None, case_attributes: dict[str, Any] | str | None = None,
              **options: Any) -> ReferenceData:
    """Load reference data from ``builtin:NAME`` or a NIfTI folder in any public layout (:mod:`.layouts`: BraTS
    2018–2021 and 2023–2025, Medical Segmentation Decathlon, nnU-Net v1/v2, imagesTr/labelsTr, case and flat folders).

    ``contrasts`` selects image channels by name, in that order (all the data has when None); the other ``options``
    go to the NIfTI loader (``labels``, ``crop``, ``test_fraction``, ``slices``, ``slicing``, ``spacing_mm``,
    ``shape``, ``progress``; see :func:`.nifti.load_nifti_folder`). A builtin takes ``slicing``, which must be its
    own (``slices`` for ``builtin:mni-tumour``, ``volume`` for ``builtin:mni-tumour-3d``), and ``size``, which asks
    the template generator for a larger or smaller cohort: ``[n_train, n_test]`` slices for ``builtin:mni-tumour``,
    ``n_cases`` volumes for ``builtin:mni-tumour-3d`` (left out: the embedded size). An option of the other
    slicing (``crop`` with ``slicing: volume``, ``shape`` without it), or ``size`` for data that does not take it, is a
    DataError naming it. ``case_attributes`` (a CSV path, or ``{"file": ..., "id_column": ...}``) adds a table's columns
    to the items' covariates (:func:`.attributes.attach_case_attributes`), for any data.
    """
    data = _load(spec, cache, contrasts, options)
    if case_attributes is None:
        return data
    table = {"file": case_attributes} if isinstance(case_attributes, str) else dict(case_attributes)
    return attach_case_attributes(data, **table)


def _load(spec: str, cache: DiskCache, contrasts: list[str] | None, options: dict[str, Any]) -> ReferenceData:
    """:func:`load_data` without the case attributes."""
    slicing = options.get("slicing", DEFAULT_SLICING)
    check_slicing_options(slicing, options, f"data {spec!r}")
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in BUILTIN_DATASETS:
            raise DataError(f"--mriq-data {spec!r}: unknown builtin dataset; expected one of {sorted('builtin:' + n for n in BUILTIN_DATASETS)}")
        given = {k: options[k] for k in BUILTIN_ONLY_OPTIONS if k in options}
        for k in given:
            if k not in BUILTIN_OPTIONS.get(name, ()):
                raise DataError(f"data {spec!r} does not take data option {k!r} (given {given[k]!r}); {_takers(k)}")
        data = BUILTIN_DATASETS[name](cache, **given)
        if "slicing" in options and data.spatial_dims != SLICING_DIMS[slicing]:
            own = next(k for k, v in SLICING_DIMS.items() if v == data.spatial_dims)
            raise DataError(f"data {spec!r} holds {data.spatial_dims}D items {tuple(data.image_shape)} and data option slicing "
                            f"is {slicing!r}; set slicing: {own} (or leave it out) for this data, or use {SLICING_EXAMPLES[slicing]}")
        return data.select(contrasts)
    for k in BUILTIN_ONLY_OPTIONS:
        if k in options:
            raise DataError(f"data {spec!r} is a NIfTI folder, which does not take data option {k!r} (given {options[k]!r}); "
                            f"{_takers(k)}")
    return load_nifti_folder(Path(spec), cache, contrasts=contrasts, **options)


def _takers(option: str) -> str:
    return f"it applies to {sorted('builtin:' + n for n, opts in BUILTIN_OPTIONS.items() if option in opts)}"
