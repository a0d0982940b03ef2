"""Reference data: builtin embedded cohorts and NIfTI folders, preprocessed as in Deo et al. 2025."""

from .core import BUILTIN_DATASETS, ReferenceData, Split, load_data

__all__ = ["BUILTIN_DATASETS", "ReferenceData", "Split", "load_data"]
