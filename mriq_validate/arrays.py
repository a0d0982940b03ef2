"""Arrays larger than memory: tensors backed by memory-mapped files, whose resident pages are given back batch by batch.

A run's reference splits, generated sets and segmenter predictions grow with the cohort (16,000 slices of 4×128×128
float32 are 4 GB). Held whole, they set the run's peak memory. Here they live in files (a cache entry, or a run's
scratch folder) mapped into the process and seen as :class:`torch.Tensor` views, so every indexing and maths path works
unchanged; after each batch, :func:`release` gives their resident pages back to the OS (``madvise(MADV_DONTNEED)``:
the kernel's page cache keeps the data warm, so the next read is a memory copy, not a disk read). numpy's memmap cannot
drop resident pages and torch has no memory-mapped tensor that can, hence this module (a few lines over numpy's).

Reference data are mapped copy-on-write: code that wrote into a reference tensor in place (a bug: reference data are
shared by every criterion) would see its write undone at the next release, never written to the cache entry.

One entry is one *bundle* file: a JSON index (array names, dtypes, shapes, offsets, and small JSON metadata) followed
by the raw C-order arrays at 4096-byte boundaries, so that a cache entry stays one file with one checksum while each
array maps on its own.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

MAGIC = b"MRIQBNDL"
ALIGN = 4096
ROW_CHUNK_BYTES = 64 << 20  # rows hashed, copied or written per step
GATHER_ROWS = 8  # random rows read between releases (see gather)
_LIVE: dict[int, "weakref.ref[np.memmap]"] = {}  # every mapping this module made that is still alive (arrays are unhashable)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _map(path: Path, dtype: np.dtype, shape: tuple[int, ...], offset: int, mode: str) -> np.memmap:
    if int(np.prod(shape)) == 0:  # numpy cannot map zero bytes
        return np.empty(shape, dtype)  # type: ignore[return-value]
    arr = np.memmap(path, dtype=dtype, mode=mode, offset=offset, shape=shape)
    key = id(arr)
    _LIVE[key] = weakref.ref(arr, lambda _ref, key=key: _LIVE.pop(key, None))
    return arr


def as_tensor(arr: np.ndarray) -> "torch.Tensor":
    """A tensor sharing ``arr``'s memory (a mapped array stays mapped)."""
    import torch

    return torch.from_numpy(arr)


def release() -> int:
    """Give back the resident pages of every live mapping (their content stays in the file and the page cache); the
    number of mappings released."""
    n = 0
    for ref in list(_LIVE.values()):
        mm = getattr(ref(), "_mmap", None)
        if mm is not None and not mm.closed:
            mm.madvise(mmap.MADV_DONTNEED)
            n += 1
    return n


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """``slice``s of ``batch_size`` items over ``range(n)``; the mapped pages read by a batch are released after it."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))
        release()


def gather(t: "torch.Tensor", rows: Any) -> "torch.Tensor":
    """``t[rows]`` as a new tensor (``rows``: integer indices), read :data:`GATHER_ROWS` rows at a time with
    :func:`release` in between. On a mapped ``t`` a read at one row faults in the whole page-cache folio around it
    (Linux maps large folios whole, up to megabytes), so indexing a random subset at once maps most of the file
    (measured: 256 random rows of 2731 mask slices, 32 MB of data, mapped 240 MB); gathered this way, what is mapped
    stays a few folios. Plain tensors take the same path (the cost is a few index calls)."""
    import torch

    index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    out = t.new_empty((len(index), *t.shape[1:]))
    for s in range(0, len(index), GATHER_ROWS):
        out[s:s + GATHER_ROWS] = t[index[s:s + GATHER_ROWS]]
        release()
    return out


def rows_per_chunk(arr: Any) -> int:
    """How many leading-axis rows of ``arr`` (numpy or torch) make about :data:`ROW_CHUNK_BYTES` of memory touched: a
    row's size, or its span when larger (its leading stride: a one-contrast view of a mapped C-contrast array reads
    one channel of each item, but the pages mapped around it hold every channel)."""
    if not arr.ndim:
        return 1
    itemsize = arr.itemsize if isinstance(arr, np.ndarray) else arr.element_size()
    row = int(np.prod(arr.shape[1:])) * itemsize
    span = abs(arr.strides[0] if isinstance(arr, np.ndarray) else arr.stride(0) * itemsize)
    return max(1, ROW_CHUNK_BYTES // max(row, span, 1))


# ------------------------------------------------------------------------------------------------------------ bundles
def _header(specs: Mapping[str, tuple[tuple[int, ...], np.dtype]], meta: Mapping[str, Any]) -> tuple[bytes, dict[str, int]]:
    """The bundle's index bytes and each array's offset (the index length is fixed first, then the offsets)."""
    def encode(offsets: Mapping[str, int]) -> bytes:
        index = {"arrays": {k: {"dtype": np.dtype(d).str, "shape": list(s), "offset": offsets[k]} for k, (s, d) in specs.items()},
                 "meta": dict(meta)}
        return json.dumps(index, sort_keys=True).encode()

    probe = encode({k: 10**15 for k in specs})  # offsets at their widest, so the real index is no longer
    pos = _aligned(len(MAGIC) + 8 + len(probe))
    offsets = {}
    for k, (s, d) in specs.items():
        offsets[k] = pos
        pos = _aligned(pos + int(np.prod(s)) * np.dtype(d).itemsize)
    body = encode(offsets)
    return MAGIC + struct.pack("<Q", len(body)) + body, offsets


class BundleWriter:
    """A bundle at ``path`` with arrays of the given shapes and dtypes, allocated on disk and filled in place through
    :attr:`arrays` (writable mapped arrays), so that nothing larger than a batch is ever held in memory."""

    def __init__(self, path: Path, specs: Mapping[str, tuple[tuple[int, ...], Any]], meta: Mapping[str, Any] | None = None) -> None:
        specs = {k: (tuple(int(x) for x in s), np.dtype(d)) for k, (s, d) in specs.items()}
        head, offsets = _header(specs, meta or {})
        end = max([offsets[k] + int(np.prod(s)) * d.itemsize for k, (s, d) in specs.items()] + [len(head)])
        self.path = Path(path)
        with open(self.path, "wb") as fh:
            fh.write(head)
            fh.truncate(_aligned(end))
        self.arrays = {k: _map(self.path, d, s, offsets[k], "r+") for k, (s, d) in specs.items()}

    def close(self) -> None:
        """Flush the arrays to the file (then read it with :func:`read_bundle`)."""
        for arr in self.arrays.values():
            if isinstance(arr, np.memmap):
                arr.flush()
        self.arrays = {}
        with open(self.path, "rb+") as fh:
            os.fsync(fh.fileno())


def write_bundle(path: Path, arrays: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> None:
    """Write ``arrays`` (numpy arrays or tensors, mapped or not) and JSON ``meta`` as a bundle, copying chunk by chunk."""
    src = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)) for k, v in arrays.items()}
    w = BundleWriter(path, {k: (v.shape, v.dtype) for k, v in src.items()}, meta)
    for k, v in src.items():
        step = rows_per_chunk(v)
        if v.ndim == 0:
            w.arrays[k][...] = v
        for i in range(0, v.shape[0] if v.ndim else 0, step):
            w.arrays[k][i:i + step] = v[i:i + step]
            release()
    w.close()


def read_bundle(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays of the bundle at ``path``, mapped copy-on-write, and its metadata; ValueError naming the file when it
    is not a bundle or its index does not fit it."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic, raw = fh.read(len(MAGIC)), fh.read(8)
        if magic != MAGIC or len(raw) != 8:
            raise ValueError(f"{path}: not an mriq array bundle")
        (n,) = struct.unpack("<Q", raw)
        if n > size:
            raise ValueError(f"{path}: bundle index of {n} bytes in a {size}-byte file")
        index = json.loads(fh.read(n))
    out = {}
    for k, spec in index["arrays"].items():
        dtype, shape, offset = np.dtype(spec["dtype"]), tuple(spec["shape"]), int(spec["offset"])
        if offset + int(np.prod(shape)) * dtype.itemsize > size:
            raise ValueError(f"{path}: array {k!r} {shape} {dtype} at offset {offset} runs past the end of the file ({size} bytes)")
        out[k] = _map(path, dtype, shape, offset, "c")
    return out, index.get("meta", {})


def scratch_array(path: Path, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A writable array of ``shape`` in a new scratch file at ``path`` (shared mapping: what is written stays written
    when its pages are released)."""
    w = BundleWriter(path, {"a": (shape, dtype)})
    return w.arrays["a"]
