"""Warm runs pay only for what changed: a measure's per-item results and its resampling replicates kept on disk.

A gate run computed again on the same inputs (the same model's images, the same reference data, seed and code)
recomputes the same numbers: per-image PIQE of the real test images, a segmenter's Dice on them, the 1000 bootstrap
replicates of KID. Both are deterministic functions of their inputs, so they are cached by the content hash of
everything they read (:func:`prepared_key`, :func:`replicates_key`): the measure's configuration, the images and
masks, the reference data's digests, the run seed, the device type and batch size, and the code (:func:`code_digest`,
the package's own source and the versions of the libraries that compute numbers). Each entry is a verified
:class:`~mriq_validate.cache.DiskCache` entry (SHA-256 checked before every load); anything that is not a plain array
of numbers, and any measure registered from outside this package, is computed as before and not cached.
``MRIQ_RESULT_CACHE=0`` turns this off (every result computed again); the report counts the results read back.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .cache import DiskCache, check_entry, content_hash
from .stats import Replicates, Resampleable, metric_replicates

KIND = "results"
ENV = "MRIQ_RESULT_CACHE"  # "0": compute every result again (the project's own tests run so: they patch measures' insides)
#: Libraries whose versions change a measure's numbers.
LIBRARIES = ("numpy", "scipy", "torch", "monai", "pyiqa", "scikit-image", "matplotlib")


@functools.cache
def code_digest() -> str:
    """SHA-256 (16 hex) of this package's Python sources and of the versions of :data:`LIBRARIES`: a code change, even
    uncommitted, gives new keys."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    for name in LIBRARIES:
        try:
            h.update(f"{name}={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{name}=absent".encode())
    return h.hexdigest()[:16]


def is_own(metric: object) -> bool:
    """Whether ``metric`` is one of this package's measures, whose code :func:`code_digest` covers (a measure
    registered from elsewhere is never cached: its code could change under the same key)."""
    return type(metric).__module__.split(".")[0] == __name__.split(".")[0]


def enabled() -> bool:
    """Whether results are kept and read back: unless ``$MRIQ_RESULT_CACHE`` is ``0``."""
    return os.environ.get(ENV, "1").strip() != "0"


def prepared_key(config: dict[str, Any], images_digest: str, masks_digest: str, channel: Any, data_digests: dict[str, Any],
                 seed: int, device_type: str, batch_size: int) -> str:
    """The key of a measure's prepared per-item results on one sample, in one run's setting."""
    return content_hash("prepared/1", config, images_digest, masks_digest, channel, data_digests, seed, device_type, batch_size,
                        code_digest())


def replicates_key(config: dict[str, Any], prepared: Any, rows: np.ndarray, items: np.ndarray | None = None) -> str | None:
    """The key of a measure's replicates on the resample ``rows`` of ``prepared`` (with its point value on ``items``, a
    subgroup, where given); None when ``prepared`` is not arrays and numbers that can be hashed."""
    parts = prepared if isinstance(prepared, tuple) else (prepared,)
    if not all(isinstance(p, (np.ndarray, int, float)) for p in parts):
        return None
    subgroup = () if items is None else ("items", np.asarray(items, np.int64))
    return content_hash("replicates/1", config, *parts, rows, *subgroup, code_digest())


def _save(value: np.ndarray, path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, value, allow_pickle=False)
    path.write_bytes(buf.getvalue())


def _load(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def cached_array(cache: DiskCache, key: str | None, compute: Callable[[], Any]) -> Any:
    """``compute()``, or its verified cached result under ``key``; a result that is a float64 array is stored (anything
    else is returned uncached; so is everything when ``key`` is None)."""
    if key is None:
        return compute()
    path = cache.path(KIND, key, ".npy")
    if check_entry(path) is None:
        cache.reused += 1
        return cache.get_or_create(KIND, key, ".npy", compute, _save, _load)  # verified load (rebuilt if it fails)
    value = compute()
    if isinstance(value, np.ndarray) and value.dtype == np.float64:
        cache.get_or_create(KIND, key, ".npy", lambda: value, _save, _load)
    return value


def cached_replicates(cache: DiskCache, metric: Resampleable, prepared: Any, rows: np.ndarray,
                      items: np.ndarray | None = None) -> Replicates:
    """:func:`~mriq_validate.stats.metric_replicates` (on ``items``, a subgroup, where given), its point value and
    replicates kept on disk by :func:`replicates_key` (computed as before where ``prepared`` cannot be hashed)."""
    key = replicates_key(metric.config(), prepared, rows, items) if is_own(metric) and enabled() else None
    if key is None:
        return metric_replicates(metric, prepared, rows, items)
    n = metric.size(prepared) if items is None else len(items)

    def compute() -> np.ndarray:
        r = metric_replicates(metric, prepared, rows, items)
        return np.concatenate([[r.point], r.reps]).astype(np.float64)

    saved = cached_array(cache, key, compute)
    return Replicates(float(saved[0]), saved[1:], n, rows.shape[1], metric.resample == "subsample")


def cached_file(cache: DiskCache, key_parts: tuple[Any, ...], out: Path, write: Callable[[Path], Any]) -> Path:
    """``write(out)`` (a deterministic file, e.g. a figure), or the verified bytes it wrote before for the same
    ``key_parts`` (hashed with :func:`code_digest`) copied to ``out``."""
    if not enabled():
        write(out)
        return out

    def create() -> bytes:
        write(out)
        return out.read_bytes()

    data = cache.get_or_create("files", content_hash("file/1", *key_parts, code_digest()), out.suffix, create,
                               lambda b, p: p.write_bytes(b), lambda p: p.read_bytes())
    if not out.is_file() or out.read_bytes() != data:
        out.write_bytes(data)
    return out
