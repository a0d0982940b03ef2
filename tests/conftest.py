"""Shared test set-up: one on-disk cache for all tests (data and trained segmenters are built once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CACHE = Path(os.environ.setdefault("MRIQ_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".mriq-cache")))
os.environ.setdefault("HF_HUB_OFFLINE", "1")



def _preload_heavy_modules() -> None:
    """pytester's in-process runs drop modules first imported inside them; C extensions (numpy.fft, cv2) cannot be
    loaded twice, so import everything the plugin uses here, once, before any inner run."""
    import cv2  # noqa: F401
    import monai.losses  # noqa: F401
    import monai.metrics  # noqa: F401
    import monai.networks.nets  # noqa: F401
    import monai.transforms  # noqa: F401
    import numpy.fft  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import scipy.linalg  # noqa: F401
    import contourpy  # noqa: F401  (registers FillType once)
    import matplotlib  # noqa: F401
    import matplotlib.pyplot  # noqa: F401

    import mriq_validate.criteria  # noqa: F401
    import mriq_validate.plugin  # noqa: F401
    from mriq_validate._compat import import_pyiqa
    from mriq_validate.metrics.base import metric_names
    from mriq_validate.perturb.base import _load_all

    import_pyiqa()
    metric_names()
    _load_all()


_preload_heavy_modules()


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return CACHE


@pytest.fixture(scope="session")
def mni():
    """The embedded default data (built once, then loaded from the cache)."""
    from mriq_validate.cache import DiskCache
    from mriq_validate.data import load_data

    return load_data("builtin:mni-tumour", DiskCache(CACHE))
