"""Warm runs: per-item results and resampling replicates read back from disk are the numbers a cold run computes,
keyed by everything they read, verified before use, and never kept for measures from outside the package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mriq_validate import memo
from mriq_validate.cache import DiskCache
from mriq_validate.metrics import create_metric
from mriq_validate.session import RunContext, RunSettings
from mriq_validate.stats import metric_replicates, resample_rows


@pytest.fixture(autouse=True)
def _results_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(memo.ENV, "1")  # the other tests run with it off (tests/conftest.py)


def test_an_array_is_kept_and_read_back_verified(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.array([0.1, 0.2, np.nan])

    first = memo.cached_array(cache, "k1", compute)
    second = memo.cached_array(cache, "k1", compute)
    np.testing.assert_array_equal(first, second)
    assert len(calls) == 1
    entry = cache.path(memo.KIND, "k1", ".npy")
    entry.write_bytes(entry.read_bytes()[:-8] + b"\0" * 8)  # a changed entry is rebuilt, never read
    np.testing.assert_array_equal(memo.cached_array(cache, "k1", compute), first)
    assert len(calls) == 2 and cache.events[-1]["action"] == "rebuilt"
    # not a float64 array, or no key: computed every time, nothing written
    assert memo.cached_array(cache, "k2", lambda: (1, 2)) == (1, 2)
    assert not cache.path(memo.KIND, "k2", ".npy").exists()
    assert memo.cached_array(cache, None, lambda: np.ones(2)).sum() == 2


@pytest.mark.parametrize("name", ["brain_intensity", "kid"])
def test_replicates_read_back_equal_the_computed_ones(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metric = create_metric(name, {})
    rng = np.random.default_rng(3)
    prepared = rng.uniform(size=40) if name == "brain_intensity" else (rng.normal(size=(40, 6)), rng.normal(size=(40, 6)), 11)
    rows = resample_rows(40, 30, np.random.default_rng(0), metric.resample == "subsample")
    want = metric_replicates(metric, prepared, rows)
    cache = DiskCache(tmp_path)
    cold = memo.cached_replicates(cache, metric, prepared, rows)
    monkeypatch.setattr(type(metric), "value", lambda *a: pytest.fail("recomputed although kept"))
    warm = memo.cached_replicates(cache, metric, prepared, rows)
    for got in (cold, warm):
        assert (got.point, got.n, got.m, got.subsample) == (want.point, want.n, want.m, want.subsample)
        np.testing.assert_array_equal(got.reps, want.reps)


def test_a_key_changes_with_what_the_result_reads() -> None:
    rows = np.arange(6).reshape(2, 3)
    base = memo.replicates_key({"name": "m"}, np.ones(3), rows)
    assert base != memo.replicates_key({"name": "m", "p": 1}, np.ones(3), rows)
    assert base != memo.replicates_key({"name": "m"}, np.ones(3) * 2, rows)
    assert base != memo.replicates_key({"name": "m"}, np.ones(3), rows[::-1])
    assert memo.replicates_key({"name": "m"}, ({"not": "an array"},), rows) is None
    args = ({"name": "m"}, "images", "masks", None, {"train": "a", "test": "b"}, 0, "cpu", 64)
    keys = {memo.prepared_key(*args)}
    for i, other in enumerate(["images2", "masks2", 1, {"train": "c", "test": "b"}, 1, "cuda", 32], start=1):
        keys.add(memo.prepared_key(*args[:i], other, *args[i + 1:]))
    assert len(keys) == 8


def test_only_the_package_s_own_measures_are_kept() -> None:
    assert memo.is_own(create_metric("piqe", {}))

    class Outside:
        pass

    assert not memo.is_own(Outside())


def test_a_warm_run_reads_its_measures_back_and_lists_the_same_segmenters(mni, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = {"channels": [4, 8], "strides": [2], "num_res_units": 0, "epochs": 1, "batch_size": 16}
    metrics = [create_metric("dice", {"segmenter": tiny, "min_real_dice": 0.0}), create_metric("brain_intensity", {})]
    settings = RunSettings(model=None, data="builtin:mni-tumour", device="cpu", cache_dir=str(tmp_path))

    def run() -> tuple[list[np.ndarray], dict]:  # type: ignore[type-arg]
        ctx = RunContext(settings, "builtin:mni-tumour", data=mni)
        real = ctx.real("test")
        out = [ctx.prepare(m, real) for m in metrics]
        reused.append(ctx.provenance()["results_reused"])
        return out, ctx.provenance()["segmenters"]

    reused: list[int] = []

    cold, cold_segmenters = run()
    monkeypatch.setenv(memo.ENV, "0")  # off: computed again (and so not read back)
    assert all(np.array_equal(a, b) for a, b in zip(run()[0], cold))
    monkeypatch.setenv(memo.ENV, "1")
    for m in metrics:
        monkeypatch.setattr(type(m), "prepare", lambda *a: pytest.fail("prepared again although kept"))
    warm, warm_segmenters = run()
    for a, b in zip(cold, warm):
        np.testing.assert_array_equal(a, b)
    assert warm_segmenters.keys() == cold_segmenters.keys() and len(cold_segmenters) == 1
    assert [s["key"] for s in warm_segmenters.values()] == [s["key"] for s in cold_segmenters.values()]
    assert reused == [0, 0, 2], "the report counts the results read back"


def test_a_file_is_written_once_and_copied_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, writes = DiskCache(tmp_path / "cache"), []

    def write(out: Path) -> None:
        writes.append(out)
        out.write_bytes(b"png bytes " + bytes(len(writes)))

    first = memo.cached_file(cache, ("figure", np.arange(3)), tmp_path / "a.png", write)
    second = memo.cached_file(cache, ("figure", np.arange(3)), tmp_path / "b.png", write)
    assert len(writes) == 1 and first.read_bytes() == second.read_bytes()
    memo.cached_file(cache, ("figure", np.arange(4)), tmp_path / "c.png", write)
    assert len(writes) == 2, "other inputs, another file"
    monkeypatch.setenv(memo.ENV, "0")
    memo.cached_file(cache, ("figure", np.arange(3)), tmp_path / "d.png", write)
    assert len(writes) == 3 and (tmp_path / "d.png").read_bytes() != first.read_bytes()
