"""SHA-256 of input files, remembered so that an unchanged file is not hashed again on every run.

The memo maps (resolved path, size, modification time in ns, inode) to the file's SHA-256; each entry is a verified
:class:`~mriq_validate.cache.DiskCache` entry (kind ``file-sha256``), so a damaged memo is rebuilt, never trusted.
This is the trade-off git's index and make take: a file rewritten in place with the same size and the same
modification time (to the nanosecond) on the same inode is not noticed. ``mriq-validate cache clear`` (or
``--kind file-sha256``) resets the memo, and the next run hashes every file again.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..cache import DiskCache, content_hash, file_sha256
from ..errors import DataError

MEMO_KIND = "file-sha256"
MEMO_VERSION = "file-sha256/1"
_HEX = re.compile(r"[0-9a-f]{64}")


def _save(digest: str, path: Path) -> None:
    path.write_text(digest + "\n", encoding="ascii")


def _load(path: Path) -> str:
    digest = path.read_text(encoding="ascii").strip()
    if not _HEX.fullmatch(digest):
        raise ValueError(f"not a SHA-256 hex digest: {digest[:80]!r}")
    return digest


def file_digest(path: Path, cache: DiskCache) -> str:
    """SHA-256 (hex) of the file at ``path``, from the memo when its path, size, mtime and inode are unchanged.
    DataError naming the file when it cannot be read."""
    try:
        st = path.stat()
        key = content_hash(MEMO_VERSION, str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        return cache.get_or_create(MEMO_KIND, key, ".sha256", lambda: file_sha256(path)[0], _save, _load)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
