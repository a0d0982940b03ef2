"""Content-hash keys and a small on-disk cache for expensive, deterministic results.

Keys hash the *content* (array bytes, configuration, code version), never paths or times, so a cache
entry is reused exactly when the result would be identical.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

DEFAULT_CACHE_ENV = "MRIQ_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$MRIQ_CACHE_DIR`` if set, else ``~/.cache/mriq-validate``."""
    env = os.environ.get(DEFAULT_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "mriq-validate"


def content_hash(*parts: Any) -> str:
    """SHA-256 (hex, 16 chars) of arrays, tensors, bytes and JSON-able values, in order."""
    h = hashlib.sha256()
    for part in parts:
        _update(h, part)
    return h.hexdigest()[:16]


def _update(h: "hashlib._Hash", part: Any) -> None:
    if hasattr(part, "detach") and hasattr(part, "cpu"):  # torch.Tensor, without importing torch
        part = part.detach().cpu().numpy()
    if isinstance(part, np.ndarray):
        arr = np.ascontiguousarray(part)
        h.update(f"nd{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    elif isinstance(part, bytes):
        h.update(b"b" + part)
    elif isinstance(part, (list, tuple)) and any(hasattr(p, "shape") for p in part):
        for p in part:
            _update(h, p)
    else:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())


class DiskCache:
    """A folder of files named by content keys. Writes are atomic (temp file + rename)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str, suffix: str) -> Path:
        """Where the entry ``kind/key.suffix`` lives."""
        return self.root / kind / f"{key}{suffix}"

    def get_or_create(
        self,
        kind: str,
        key: str,
        suffix: str,
        create: Callable[[], T],
        save: Callable[[T, Path], None],
        load: Callable[[Path], T],
    ) -> T:
        """Load the entry if present, else ``create()`` it, save it atomically, and return it."""
        target = self.path(kind, key, suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        # One process computes, concurrent ones (pytest-xdist workers, parallel CI jobs) wait and then load.
        with open(target.with_name(target.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.exists():
                try:
                    return load(target)
                except Exception:  # a truncated or stale entry: recompute rather than fail
                    target.unlink(missing_ok=True)
            value = create()
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=suffix + ".tmp")
            os.close(fd)
            try:
                save(value, Path(tmp))
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return value
