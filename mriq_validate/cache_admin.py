"""What ``mriq-validate cache`` shows and does with a cache folder (:mod:`mriq_validate.cache`): its inventory (entries,
sidecars, locks, temporary files, scratch folders, sizes), the removal of stale scratch folders of runs that died,
``clear`` and ``verify``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .cache import (_TEMP_NAME, DEFAULT_CACHE_ENV, LOCK_SUFFIX, MARKER, SCRATCH_KIND, SIDECAR_SUFFIX, TEMP_SUFFIX, _advice,
                    check_entry, lock_of, remove_entry, sidecar_of)
from .errors import CacheError


@dataclass
class Inventory:
    """What a cache folder holds, by the names :class:`DiskCache` gives its files (no hashing)."""

    root: Path
    marked: bool
    entries: list[Path] = field(default_factory=list)  # entry files (or whatever sits at an entry path)
    sidecars: list[Path] = field(default_factory=list)
    locks: list[Path] = field(default_factory=list)
    temps: list[Path] = field(default_factory=list)  # left by builds that crashed; never loaded
    other: list[Path] = field(default_factory=list)  # files the cache did not write (no sidecar or lock next to them)
    scratch: list[Path] = field(default_factory=list)  # runs' scratch folders (<root>/scratch/<pid>-<random>/)

    @property
    def orphans(self) -> list[Path]:
        """Sidecars whose entry is gone."""
        return [p for p in self.sidecars if not os.path.lexists(p.with_name(p.name[: -len(SIDECAR_SUFFIX)]))]

    def without_sidecar(self) -> list[Path]:
        """Entries with no sidecar (an older version, or an interrupted write): rebuilt when next used."""
        return [p for p in self.entries if not sidecar_of(p).is_file()]

    def owned(self) -> list[Path]:
        """Every path the cache wrote: entries, sidecars, locks, temporary files."""
        return sorted(self.entries + self.sidecars + self.locks + self.temps)


def entry_size(path: Path) -> int:
    """Bytes of the file at ``path``, or of the files in the folder at ``path`` (0 for anything unreadable)."""
    try:
        if path.is_dir() and not path.is_symlink():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


def scratch_owner_alive(folder: Path) -> bool:
    """Whether the process that made scratch folder ``<pid>-<random>`` still runs (a name without a pid counts as alive:
    never removed)."""
    pid = folder.name.split("-", 1)[0]
    return not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid))


def remove_stale_scratch(root: Path) -> list[Path]:
    """Remove the scratch folders of processes that no longer run (a killed run's) from the cache at ``root``; the
    folders removed. What cannot be removed is left alone."""
    removed = []
    for folder in scan(root).scratch:
        if not scratch_owner_alive(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _owner(name: str) -> str:
    """The entry a cache file belongs to: ``<entry>``, ``<entry>.meta.json``, ``<entry>.lock``, ``<file>.<rand>.tmp``."""
    if _TEMP_NAME.fullmatch(name):
        name = name[: -len(TEMP_SUFFIX)].rsplit(".", 1)[0]
    for suffix in (LOCK_SUFFIX, SIDECAR_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def scan(root: Path) -> Inventory:
    """Classify the files of the cache at ``root``; CacheError if ``root`` is a file.

    Each folder under ``root`` is a kind; a file there is the cache's when it is a sidecar, lock or temporary file of
    the cache's naming, or an entry with a sidecar or lock next to it. Everything else is ``other`` and never removed.
    """
    if root.exists() and not root.is_dir():
        raise CacheError(f"cache folder {root} is a file, not a folder; {_advice(root)}")
    inv = Inventory(root, (root / MARKER).is_file())
    if not root.is_dir():
        return inv
    for item in sorted(root.iterdir()):
        if not item.is_dir():
            if item.name != MARKER:
                inv.other.append(item)
            continue
        if item.name == SCRATCH_KIND:
            inv.scratch.extend(p for p in sorted(item.iterdir()) if p.is_dir())
            inv.other.extend(p for p in sorted(item.iterdir()) if not p.is_dir())
            continue
        names = {p.name for p in item.iterdir()}
        for name in sorted(names):
            p = item / name
            if _TEMP_NAME.fullmatch(name):
                inv.temps.append(p)
            elif name.endswith(LOCK_SUFFIX):
                inv.locks.append(p)
            elif name.endswith(SIDECAR_SUFFIX):
                inv.sidecars.append(p)
            elif name + SIDECAR_SUFFIX in names or name + LOCK_SUFFIX in names:
                inv.entries.append(p)
            else:
                inv.other.append(p)
    return inv


@contextmanager
def _try_lock(entry: Path) -> Iterator[bool]:
    """Take ``entry``'s lock without waiting; yields False when another process holds it (building the entry)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_of(entry)), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def require_marker(root: Path) -> None:
    """CacheError unless ``root`` carries the marker :class:`DiskCache` writes, so no user file is ever deleted."""
    if root.is_dir() and not (root / MARKER).is_file():
        raise CacheError(
            f"{root} does not look like an mriq-validate cache (no {MARKER} at its root), so nothing was removed. "
            f"Pass the cache folder with --cache DIR (default: ${DEFAULT_CACHE_ENV} or ~/.cache/mriq-validate); a cache "
            "written by an older mriq-validate has no marker: delete that folder by hand")


@dataclass
class Removal:
    """What :func:`clear` did."""

    removed: list[Path] = field(default_factory=list)
    busy: list[Path] = field(default_factory=list)  # entries whose lock another process holds (being built)
    kept: list[Path] = field(default_factory=list)  # files the cache did not write


def clear(root: Path, kind: str | None = None) -> Removal:
    """Remove what the cache wrote (entries, sidecars, locks, temporary files) for one ``kind`` or all.

    Entries being built by another process are skipped; files the cache did not write are kept; a folder without the
    cache marker is refused (CacheError).
    """
    out = Removal()
    inv = scan(root)
    if not root.is_dir():
        return out
    require_marker(root)
    kinds = sorted(p.name for p in root.iterdir() if p.is_dir())
    if kind is not None and kind not in kinds:
        raise CacheError(f"cache {root} has no kind {kind!r}; kinds: {', '.join(kinds) or 'none'}")
    mine = [p for p in inv.owned() if kind is None or p.parent.name == kind]
    if kind in (None, SCRATCH_KIND):  # scratch of runs that died; a running run's is kept
        for folder in inv.scratch:
            if scratch_owner_alive(folder):
                out.busy.append(folder)
            else:
                remove_entry(folder)
                out.removed.append(folder)
    out.kept = [p for p in inv.other if p.parent != root and (kind is None or p.parent.name == kind)]
    groups: dict[Path, list[Path]] = {}
    for p in mine:
        groups.setdefault(p.parent / _owner(p.name), []).append(p)
    try:
        for entry, paths in groups.items():
            with _try_lock(entry) as free:
                if free:
                    for p in paths:
                        if p != lock_of(entry):
                            remove_entry(p)
                            out.removed.append(p)
            if not free:
                out.busy.append(entry)
                continue
            lock_of(entry).unlink(missing_ok=True)  # free a moment ago; removed last, after what it guarded
            if lock_of(entry) in paths:
                out.removed.append(lock_of(entry))
        for folder in {p.parent for p in mine} | {p.parent for p in out.removed if p.parent.name == SCRATCH_KIND}:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    except OSError as exc:
        raise CacheError(f"cannot clear cache {root} ({exc}); delete the folder by hand") from exc
    return out


def verify(root: Path, fix: bool = False) -> tuple[Inventory, list[tuple[Path, str]], list[Path]]:
    """Check every entry of the cache at ``root`` against its sidecar: (inventory, [(bad entry, why)], [busy]).

    ``fix`` removes each bad entry and its sidecar (they are rebuilt on next use) unless another process holds its lock.
    """
    inv = scan(root)
    bad = [(p, why) for p in inv.entries if (why := check_entry(p)) is not None]
    busy: list[Path] = []
    if fix and bad:
        require_marker(root)
        try:
            for p, _ in bad:
                with _try_lock(p) as free:
                    if not free:
                        busy.append(p)
                        continue
                    remove_entry(p)
                    sidecar_of(p).unlink(missing_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot remove bad entries of cache {root} ({exc}); {_advice(root)}") from exc
    return inv, bad, busy
