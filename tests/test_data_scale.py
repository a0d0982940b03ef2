"""Reference splits as mapped array bundles, and the enlargeable embedded cohort (data option ``size``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mriq_validate.cache import DiskCache, content_hash
from mriq_validate.data import load_data
from mriq_validate.data.core import SPLITS_SUFFIX, Split, load_splits, save_splits, write_splits
from mriq_validate.errors import DataError

# The embedded cohort's digests as the in-memory, compressed-npz code path (before the bundle format) gave them. They
# key the segmenter cache: a change here retrains every user's segmenter.
# The embedded cohort's digests, one pair per environment it was measured in: the synthesis goes through float
# arithmetic (resampling, filtering, elastic deformation) whose last bits depend on the CPU's vector units and the
# numpy/scipy/torch builds, so two machines can make bit-different cohorts from the same code. A code change that
# alters the cohort gives a pair in neither list.
EMBEDDED_DIGESTS = [
    {"train": "110003472c79712c", "test": "348fb067056cdbd9"},  # measured up to 2026-12-01
    {"train": "453aaa5e5d2a987a", "test": "2079bc70766a8d29"},  # 2026-12-07: numpy 2.4.6, scipy 1.17.1, torch 2.13.0+cpu
]


def _case(split: str, i: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    rng = np.random.default_rng([len(split), i])
    return rng.random((2, 8, 6)), rng.integers(0, 4, (8, 6)).astype(np.uint8), {"site": i % 3, "tumour_px": 10 * i}


def _in_memory(split: str, n: int) -> Split:
    cases = [_case(split, i) for i in range(n)]
    return Split(torch.from_numpy(np.stack([c[0] for c in cases]).astype(np.float32)),
                 torch.from_numpy(np.stack([c[1] for c in cases])[:, None].astype(np.int64)),
                 tuple(f"{split}-{i:04d}" for i in range(n)),
                 {k: np.array([c[2][k] for c in cases], dtype=np.int64) for k in cases[0][2]})


@pytest.mark.parametrize("writer", ["save_splits", "write_splits"])
def test_a_splits_bundle_round_trips_ids_covariates_dtypes_and_digests(tmp_path: Path, writer: str) -> None:
    splits = {"train": _in_memory("train", 5), "test": _in_memory("test", 3)}
    path = tmp_path / f"s{SPLITS_SUFFIX}"
    if writer == "save_splits":
        save_splits(splits, path)
    else:  # streamed item by item, as the template builders do
        write_splits(path, {s: list(v.ids) for s, v in splits.items()}, _case)
    back = load_splits(path)
    assert list(back) == ["train", "test"]
    for name, split in splits.items():
        got = back[name]
        assert got.ids == split.ids
        assert list(got.covariates) == list(split.covariates)  # order kept, not sorted
        for k, v in split.covariates.items():
            assert got.covariates[k].dtype == np.int64 and np.array_equal(got.covariates[k], v)
        assert got.images.dtype == torch.float32 and got.masks.dtype == torch.int64
        assert got.digest() == split.digest()


def test_a_file_that_is_not_a_splits_bundle_is_refused_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "old.npz"
    np.savez_compressed(bad, x=np.zeros(3))
    with pytest.raises(ValueError, match="old.npz"):
        load_splits(bad)


def test_the_embedded_cohort_keeps_its_digests(mni) -> None:  # type: ignore[no-untyped-def]
    assert mni.digests() in EMBEDDED_DIGESTS
    assert mni.train.images.dtype == torch.float32 and mni.train.masks.dtype == torch.int64
    assert (len(mni.train), len(mni.test)) == (256, 128)


def test_size_asks_for_more_items_and_the_first_are_the_smaller_cohorts(tmp_path: Path) -> None:
    from mriq_validate.data.mni import cohort_case, load_template, split_in_memory, template_paths

    cache = DiskCache(tmp_path)
    small = load_data("builtin:mni-tumour", cache, size=[3, 2])
    larger = load_data("builtin:mni-tumour", cache, size=[4, 2])
    assert (len(small.train), len(small.test), len(larger.train)) == (3, 2, 4)
    assert small.train.digest() == larger.train.subset(range(3)).digest() and small.test.digest() == larger.test.digest()
    tpl = load_template(template_paths())  # the in-memory path, item by item as before the streamed build
    assert small.train.digest() == split_in_memory(cohort_case, tpl, 3, "train").digest()
    assert tuple(small.provenance["generator"]["n"]) == (3, 2)


@pytest.mark.parametrize("spec, size, expected", [
    ("builtin:mni-tumour", [0, 5], r"size is \[0, 5\]; expected \[n_train, n_test\]"),
    ("builtin:mni-tumour", 300, r"size is 300; expected \[n_train, n_test\]"),
    ("builtin:mni-tumour", [3.5, 2], r"size is \[3.5, 2\]"),
    ("builtin:mni-tumour", [True, 2], r"size is \[True, 2\]"),
    ("builtin:mni-tumour-3d", [1, 2], r"size is \[1, 2\]; expected n_cases"),
    ("builtin:mni-tumour-3d", 1, r"size is 1; expected n_cases >= 2"),
    ("builtin:mni-vessel", [3, 2], r"does not take data option 'size'.*builtin:mni-tumour"),
])
def test_a_bad_size_is_a_data_error_naming_the_option(tmp_path: Path, spec: str, size: object, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        load_data(spec, DiskCache(tmp_path), size=size)


def test_a_nifti_folder_does_not_take_size(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="NIfTI folder, which does not take data option 'size'"):
        load_data(str(tmp_path), DiskCache(tmp_path / "cache"), size=[3, 2])


def test_a_channel_subset_of_a_large_split_is_mapped_and_equal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mriq_validate.data import core

    images = torch.rand(6, 4, 8, 8)
    monkeypatch.setattr(core, "IN_MEMORY_BYTES", 0)  # every subset counts as large
    mapped = core.channel_subset(images, [3, 1])
    assert mapped.is_contiguous() and torch.equal(mapped, images[:, [3, 1]])


def test_loading_a_mapped_split_reads_none_of_its_images(tmp_path: Path) -> None:
    # 512 MB of images and masks, allocated on disk (sparse); loading maps them and must not read them into memory
    n = 2048
    path = tmp_path / f"big{SPLITS_SUFFIX}"
    from mriq_validate.arrays import BundleWriter
    from mriq_validate.data.core import _meta

    w = BundleWriter(path, {"train.images": ((n, 4, 128, 128), np.float32), "train.masks": ((n, 1, 128, 128), np.int64)},
                     _meta({"train": [f"t{i}" for i in range(n)]}, {"train": []}))
    w.close()
    data_mb = path.stat().st_size / 2**20
    script = textwrap.dedent(f"""
        import re
        from mriq_validate.data.core import load_splits
        def rss_mb():
            return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
        before = rss_mb()
        s = load_splits({str(path)!r})["train"]
        print(rss_mb() - before, len(s))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    grew, items = float(out[0]), int(out[1])
    assert items == n
    assert grew < 0.02 * data_mb, f"loading {data_mb:.0f} MB of mapped splits grew RSS by {grew:.1f} MB"
