"""Content-hash keys and a verified on-disk cache for expensive, deterministic results.

Keys hash the *content* (array bytes, configuration, code version), never paths or times, so a cache
entry is reused exactly when the result would be identical.

The cache is verified, never trusted. Each entry ``<root>/<kind>/<key><suffix>`` is written atomically (a temporary
file in the same folder, flushed and ``fsync``-ed, then ``os.replace``-d) and described by a sidecar
``<entry>.meta.json`` (SHA-256, size, kind, key, creation time, package version) written after it the same way.
Before an entry is loaded its size and SHA-256 are checked against the sidecar; an entry that fails the check, has no
sidecar, or whose loader raises is removed, rebuilt and recorded in :attr:`DiskCache.events`. A marker file
``mriq-cache.json`` at the root tells ``mriq-validate cache clear`` that the folder is this tool's cache. Builds are
serialised per entry with OS file locks (``filelock``), which the OS releases when a process dies, so a crashed
run never leaves a lock that blocks the next one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np

from .arrays import release, rows_per_chunk
from .errors import CacheError

T = TypeVar("T")

DEFAULT_CACHE_ENV = "MRIQ_CACHE_DIR"
MARKER = "mriq-cache.json"
SIDECAR_SUFFIX = ".meta.json"
LOCK_SUFFIX = ".lock"
SCRATCH_KIND = "scratch"  # <root>/scratch/<pid>-<random>/: a run's mapped scratch arrays, removed when the run closes
TEMP_SUFFIX = ".tmp"
CACHE_FORMAT = 1
LOCK_TIMEOUT_S = 2 * 3600.0  # the slowest entry (a segmenter trained on CPU) takes minutes; waiting longer means a hung builder
_CHUNK = 1 << 20
_TEMP_NAME = re.compile(r".+\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))  # tempfile.mkstemp(prefix=name + ".", suffix=".tmp")
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}

log = logging.getLogger(__name__)


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
        h.update(f"nd{part.dtype.str}{part.shape}".encode())
        if part.ndim == 0:
            h.update(np.ascontiguousarray(part).tobytes())
            return
        step = rows_per_chunk(part)  # chunk by chunk, so that a memory-mapped array is never read into memory whole
        for i in range(0, part.shape[0], step):
            h.update(memoryview(np.ascontiguousarray(part[i:i + step])).cast("B"))
            if step < part.shape[0]:
                release()
    elif isinstance(part, bytes):
        h.update(b"b" + part)
    elif isinstance(part, (list, tuple)) and any(hasattr(p, "shape") for p in part):
        for p in part:
            _update(h, p)
    else:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())


def sidecar_of(entry: Path) -> Path:
    """The metadata file recorded next to ``entry``."""
    return entry.with_name(entry.name + SIDECAR_SUFFIX)


def lock_of(entry: Path) -> Path:
    """The lock file that serialises builds of ``entry``."""
    return entry.with_name(entry.name + LOCK_SUFFIX)


def file_sha256(path: Path) -> tuple[str, int]:
    """(SHA-256 hex, size in bytes) of the file at ``path``."""
    with open(path, "rb") as fh:
        return _sha256(fh)


def _sha256(fh: BinaryIO) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    while chunk := fh.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def check_entry(entry: Path) -> str | None:
    """Why the entry at ``entry`` cannot be trusted, or None when its size and SHA-256 match its sidecar."""
    if entry.is_dir():
        return "a directory is where the entry file should be"
    if not entry.is_file():
        return "the entry file is missing"
    side = sidecar_of(entry)
    if not side.is_file():
        return (f"no sidecar {side.name} (an entry written by an older version, or a write interrupted between the "
                "entry and its sidecar)")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        recorded, size = str(meta["sha256"]), int(meta["size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"sidecar {side.name} unreadable ({type(exc).__name__}: {exc})"
    try:
        found_size = entry.stat().st_size
        if found_size != size:
            return f"size mismatch: recorded {size} bytes, found {found_size} (truncated or overwritten)"
        found, _ = file_sha256(entry)
    except OSError as exc:
        return f"entry unreadable ({exc})"
    if found != recorded:
        return f"sha256 mismatch: recorded {recorded[:16]}..., found {found[:16]}..."
    return None


def _advice(root: Path) -> str:
    return (f"point the cache at a writable folder with room (pytest --mriq-cache DIR, or ${DEFAULT_CACHE_ENV}=DIR), "
            f"or empty this one with `mriq-validate cache clear --cache {root}`")


@lru_cache(maxsize=1)
def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mriq-validate")
    except PackageNotFoundError:
        return "unknown"


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); Windows cannot open a folder for fsync, some file systems refuse."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _temp_in(folder: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=name + ".", suffix=TEMP_SUFFIX)
    os.close(fd)
    return Path(tmp)


def write_atomic(target: Path, write: Callable[[Path], None]) -> tuple[str, int]:
    """``write`` a temporary file next to ``target``, fsync it, rename it onto ``target``; its (SHA-256, size)."""
    tmp = _temp_in(target.parent, target.name)
    try:
        write(tmp)
        with open(tmp, "r+b") as fh:  # hash what is on disk, not what the writer meant to write
            digest = _sha256(fh)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        return digest
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _write_json(target: Path, obj: dict[str, Any]) -> None:
    write_atomic(target, lambda p: p.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n", encoding="utf-8"))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class DiskCache:
    """A folder of files named by content keys, each checked against its recorded SHA-256 before it is loaded.

    ``events`` lists, in order, every entry this object found untrustworthy and rebuilt, as JSON-ready dicts
    ``{"kind", "key", "path", "action": "rebuilt", "reason", "time"}`` (``reason`` e.g. ``"sha256 mismatch:
    recorded ab12..., found cd34..."``, ``time`` ISO-8601 UTC); run reports carry them as evidence.
    """

    def __init__(self, root: Path | str, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
        self.root = Path(root)
        self.lock_timeout = float(lock_timeout)
        self.events: list[dict[str, str]] = []
        self.reused = 0  # results read back instead of computed (mriq_validate.memo)

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
        """Load the verified entry if present, else ``create()`` it, save it atomically with its SHA-256, and return it.

        A bad entry (hash or size mismatch, no sidecar, a directory in its place, or ``load`` raising) is rebuilt and
        recorded in :attr:`events`. :class:`CacheError` when the folder cannot be written or the lock not taken.
        """
        target = self.path(kind, key, suffix)
        if check_entry(target) is None:  # the common case takes no lock and writes nothing (read-only caches work)
            try:
                return load(target)
            except Exception:  # noqa: BLE001 - decided, and recorded, under the lock below
                pass
        self._prepare(target.parent)
        with self._lock(target):  # one process builds; concurrent ones wait here, then load what it wrote
            present = os.path.lexists(target)
            reason = check_entry(target) if present else None
            if present and reason is None:
                try:
                    return load(target)
                except Exception as exc:  # noqa: BLE001 - a loader that rejects verified bytes: rebuild, never blame the data
                    reason = f"load failed: {type(exc).__name__}: {exc}"
            if reason is not None:
                self._discard(target, kind, key, reason)
            value = create()
            self._write(target, kind, key, value, save, rebuilding=reason is not None)
            return value

    def _prepare(self, folder: Path) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not (self.root / MARKER).is_file():
                _write_json(self.root / MARKER, {"tool": "mriq-validate", "format": CACHE_FORMAT, "created": _now(),
                                                 "note": "cache of mriq-validate; `mriq-validate cache clear` removes its entries"})
            folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cache folder {self.root} cannot be written ({exc}); {_advice(self.root)}") from exc

    @contextmanager
    def _lock(self, target: Path) -> Iterator[None]:
        from filelock import FileLock, Timeout

        lock_file = lock_of(target)
        lock = FileLock(str(lock_file), timeout=self.lock_timeout)
        try:
            lock.acquire()
        except Timeout:
            raise CacheError(
                f"waited {self.lock_timeout:g} s for the lock {lock_file} of cache entry {target}: another process "
                "(a pytest-xdist worker or a parallel job) has held it that long while building the entry. Wait for it "
                "or stop it (the OS releases the lock when the process ends; the lock file left behind is harmless), or "
                "give this run its own cache folder (--mriq-cache DIR)") from None
        except OSError as exc:
            raise CacheError(f"cannot create the lock file {lock_file} ({exc}); {_advice(self.root)}") from exc
        try:
            yield
        finally:
            lock.release()

    def _discard(self, target: Path, kind: str, key: str, reason: str) -> None:
        event = {"kind": kind, "key": key, "path": str(target), "action": "rebuilt", "reason": reason, "time": _now()}
        self.events.append(event)
        log.warning("mriq cache: rebuilding %s: %s", target, reason)
        try:
            remove_entry(target)
            sidecar_of(target).unlink(missing_ok=True)
        except OSError as exc:
            raise CacheError(f"cache entry {target} is bad ({reason}) and cannot be removed ({exc}); run "
                             f"`mriq-validate cache clear --kind {kind} --cache {self.root}` or delete it by hand") from exc

    def _write(self, target: Path, kind: str, key: str, value: T, save: Callable[[T, Path], None], rebuilding: bool) -> None:
        try:
            sidecar_of(target).unlink(missing_ok=True)  # a stale sidecar must never describe the new bytes
            digest, size = write_atomic(target, lambda tmp: save(value, tmp))
            _write_json(sidecar_of(target), {"sha256": digest, "size": size, "kind": kind, "key": key, "file": target.name,
                                             "created": _now(), "package_version": _package_version(), "format": CACHE_FORMAT})
        except OSError as exc:
            what = "rebuild" if rebuilding else "write"
            full = "the disk is full: free space, or " if exc.errno in _DISK_FULL else ""
            raise CacheError(f"cannot {what} cache entry {target} ({exc}); {full}{_advice(self.root)}") from exc


def remove_entry(path: Path) -> None:
    """Remove a cache entry: a file, or a folder with what it holds."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
