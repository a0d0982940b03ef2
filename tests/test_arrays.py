"""Memory-mapped bundles: round trip, checks of what is read back, hashing without copies, and flat memory."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mriq_validate import arrays
from mriq_validate.cache import content_hash


def _old_hash(a: np.ndarray) -> str:
    """The definition content_hash had before it hashed chunk by chunk (the cache keys depend on it)."""
    h = hashlib.sha256()
    c = np.ascontiguousarray(a)
    h.update(f"nd{c.dtype.str}{c.shape}".encode())
    h.update(c.tobytes())
    return h.hexdigest()[:16]


def test_bundle_round_trip_keeps_arrays_dtypes_and_meta(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src = {"images": rng.random((7, 2, 5, 3), dtype=np.float32), "masks": rng.integers(0, 4, (7, 1, 5, 3)),
           "empty": np.zeros((0, 3), np.float32), "scalar": np.array(2.5)}
    arrays.write_bundle(tmp_path / "b", src, {"ids": ["a", "b"], "n": 7})
    got, meta = arrays.read_bundle(tmp_path / "b")
    assert meta == {"ids": ["a", "b"], "n": 7}
    for k, v in src.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v), k
    assert isinstance(got["images"], np.memmap)


def test_reference_tensors_are_copy_on_write_and_a_release_restores_the_file(tmp_path: Path) -> None:
    arrays.write_bundle(tmp_path / "b", {"x": np.arange(4096 * 2, dtype=np.float32)})
    got, _ = arrays.read_bundle(tmp_path / "b")
    t = arrays.as_tensor(got["x"])
    t[0] = -1.0  # an in-place write into reference data is a bug; it must never reach the cache entry
    again, _ = arrays.read_bundle(tmp_path / "b")
    assert again["x"][0] == 0.0


def test_scratch_arrays_keep_what_was_written_across_releases(tmp_path: Path) -> None:
    a = arrays.scratch_array(tmp_path / "s", (3000, 64), np.float32)
    for sl in arrays.batches(len(a), 700):
        a[sl] = np.arange(sl.start, sl.stop, dtype=np.float32)[:, None]
    arrays.release()
    assert np.array_equal(a[:, 0], np.arange(3000, dtype=np.float32))


@pytest.mark.parametrize("damage", ["magic", "index", "short"])
def test_a_damaged_bundle_is_refused_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "b"
    arrays.write_bundle(path, {"x": np.ones((100, 100), np.float32)})
    raw = bytearray(path.read_bytes())
    if damage == "magic":
        raw[:8] = b"NOTABNDL"
    elif damage == "index":
        raw[8:16] = (10**12).to_bytes(8, "little")
    else:
        raw = raw[: len(raw) // 2]
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=str(path)):
        arrays.read_bundle(path)


def test_batches_cover_every_item_once_and_refuse_a_bad_size() -> None:
    got = [i for sl in arrays.batches(10, 3) for i in range(sl.start, sl.stop)]
    assert got == list(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        list(arrays.batches(5, 0))


def test_content_hash_is_unchanged_by_chunking_views_and_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arrays, "ROW_CHUNK_BYTES", 1000)  # many chunks even for a small array
    a = np.random.default_rng(1).random((50, 3, 7), dtype=np.float32)
    assert content_hash(a) == _old_hash(a)
    view = torch.from_numpy(a)[:, 1]  # a non-contiguous channel view
    assert content_hash(view) == _old_hash(view.numpy())
    arrays.write_bundle(tmp_path / "b", {"a": a})
    mapped, _ = arrays.read_bundle(tmp_path / "b")
    assert content_hash(arrays.as_tensor(mapped["a"])) == _old_hash(a)


def test_a_mapped_array_larger_than_the_budget_is_written_hashed_and_read_with_flat_memory(tmp_path: Path) -> None:
    """600 MB through a mapping: the peak resident memory grows by far less than the data (pages are given back)."""
    script = textwrap.dedent(f"""
        import numpy as np
        from mriq_validate import arrays
        from mriq_validate.cache import content_hash
        def hwm():
            return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024
        open('/proc/self/clear_refs', 'w').write('5')
        base = hwm()
        w = arrays.BundleWriter({str(tmp_path / 'big')!r}, {{'x': ((600, 1, 512, 512), np.float32)}})
        for sl in arrays.batches(600, 20):
            w.arrays['x'][sl] = 1.0
        w.close()
        got, _ = arrays.read_bundle({str(tmp_path / 'big')!r})
        content_hash(got['x'])
        total = sum(float(got['x'][sl].sum()) for sl in arrays.batches(600, 20))
        assert total == 600 * 512 * 512, total
        print(hwm() - base)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    grown = int(out.stdout.split()[-1])
    data = 600 * 512 * 512 * 4
    assert grown < data / 4, f"peak RSS grew by {grown / 2**20:.0f} MiB for {data / 2**20:.0f} MiB of mapped data"


def test_gather_reads_random_rows_of_a_mapped_array_without_mapping_the_file(tmp_path: Path) -> None:
    """``gather(t, rows)`` equals ``t[rows]``; on a mapped array of 1200 rows of 128 KB (150 MB), 100 random rows
    (12.5 MB) raise the mapped file pages by under 25 MB (indexing them at once maps whole page-cache folios around each row,
    up to most of the file, on kernels with large folios)."""
    n, row = 1200, (1, 128, 128)
    arrays.write_bundle(tmp_path / "b.bundle", {"m": np.arange(n * 128 * 128, dtype=np.int64).reshape(n, *row)})
    mapped, _ = arrays.read_bundle(tmp_path / "b.bundle")
    t = arrays.as_tensor(mapped["m"])
    rows = np.sort(np.random.default_rng(0).choice(n, 100, replace=False))
    arrays.release()
    before = _rss_file_mb()
    out = arrays.gather(t, rows)
    assert _rss_file_mb() - before < 25
    assert torch.equal(out, t[torch.as_tensor(rows)])
    plain = torch.arange(24.0).reshape(6, 2, 2)
    assert torch.equal(arrays.gather(plain, [5, 0, 5]), plain[[5, 0, 5]])


def _rss_file_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssFile")) / 1024
