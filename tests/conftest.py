"""Fixtures shared by the tests: the one on-disk cache (data and trained segmenters are built once), the embedded data,
and pytester runs of the plugin on that cache. The cache folder and the offline setting come from the repository's
top-level ``conftest.py``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]
# Tests patch the insides of measures (an oracle segmenter, a failing scorer); a result kept on disk would outlive the
# patch, so the tests compute every result (tests/test_memo.py turns it back on where it tests it).
os.environ["MRIQ_RESULT_CACHE"] = "0"


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
    import mriq_validate.data  # noqa: F401  (the packages register their builtins on import)
    import mriq_validate.perturb  # noqa: F401
    import mriq_validate.plugin  # noqa: F401
    from mriq_validate._compat import import_pyiqa
    from mriq_validate.metrics import metric_names

    import_pyiqa()
    metric_names()


_preload_heavy_modules()


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The cache every test shares (``$MRIQ_CACHE_DIR``; the top-level conftest points it into the repository)."""
    from mriq_validate.cache import default_cache_dir

    return default_cache_dir()


@pytest.fixture(scope="session")
def mni(cache_dir: Path):  # type: ignore[no-untyped-def]
    """The embedded default data (built once, then loaded from the cache)."""
    from mriq_validate.cache import DiskCache
    from mriq_validate.data import load_data

    return load_data("builtin:mni-tumour", DiskCache(cache_dir))


@pytest.fixture
def run_plugin(pytester: pytest.Pytester, cache_dir: Path) -> Callable[..., pytest.RunResult]:
    """``pytester.runpytest`` on the shared cache. pytester runs in a temporary folder, where the top-level conftest is
    not loaded, so the cache is passed explicitly."""

    def run(*args: str, **kwargs: Any) -> pytest.RunResult:
        return pytester.runpytest("-p", "no:cacheprovider", f"--mriq-cache={cache_dir}", *args, **kwargs)

    return run
