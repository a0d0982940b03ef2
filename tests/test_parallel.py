"""Independent segmenter trainings side by side on CPU processes: the same weights and cache keys as one by one, the
workers' cache events kept, and the number of processes chosen from the cores, xdist workers and threads."""

from __future__ import annotations

import argparse
import doctest
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mriq_validate import parallel
from mriq_validate.cache import DiskCache, sidecar_of
from mriq_validate.options import parse_workers
from mriq_validate.parallel import TrainingJob, auto_workers, resolve_workers, train_missing
from mriq_validate.segmenter import SegmenterConfig, get_segmenter, segmenter_key

TINY = SegmenterConfig(channels=(4, 8), strides=(2,), num_res_units=0, epochs=2, batch_size=8)
CPU = torch.device("cpu")


def _jobs(mni, seeds: range) -> list[TrainingJob]:  # type: ignore[no-untyped-def]
    x, y = mni.train.images[:16], mni.train.masks[:16]
    return [TrainingJob(replace(TINY, seed=s).resolve(2), x, y) for s in seeds]


def _weights(job: TrainingJob, cache: DiskCache, contrasts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return get_segmenter(job.images, job.masks, 4, job.cfg, CPU, cache, contrasts=contrasts).net.state_dict()


def test_side_by_side_training_gives_the_weights_of_one_by_one(mni, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    contrasts = tuple(mni.contrasts)
    jobs = _jobs(mni, range(3))
    parallel_cache, serial_cache = DiskCache(tmp_path / "parallel"), DiskCache(tmp_path / "serial")
    assert train_missing(jobs, 4, parallel_cache, 2, contrasts=contrasts) == 3
    assert train_missing(jobs, 4, parallel_cache, 2, contrasts=contrasts) == 0  # all cached now: nothing started
    for job in jobs:
        key = segmenter_key(job.images, job.masks, 4, job.cfg, "cpu", contrasts)
        assert parallel_cache.path("segmenters", key, ".pt").is_file(), "the worker wrote the entry the run looks up"
        got, want = _weights(job, parallel_cache, contrasts), _weights(job, serial_cache, contrasts)
        assert got.keys() == want.keys()
        for name in want:
            assert torch.equal(got[name], want[name]), f"seed {job.cfg.seed}: {name} differs from the one-by-one training"
    assert parallel_cache.events == []

    # entries the workers find corrupt are rebuilt there, and their events reach the run's cache (and so its report)
    cache = parallel_cache
    for job in jobs[:2]:  # flip a byte of two entries: their recorded SHA-256 no longer matches
        entry = cache.path("segmenters", segmenter_key(job.images, job.masks, 4, job.cfg, "cpu", contrasts), ".pt")
        raw = bytearray(entry.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        entry.write_bytes(bytes(raw))
        assert sidecar_of(entry).is_file()
    assert train_missing(jobs, 4, cache, 2, contrasts=contrasts) == 2
    assert _weights(jobs[0], cache, contrasts).keys() == _weights(jobs[0], serial_cache, contrasts).keys()
    assert [e["action"] for e in cache.events] == ["rebuilt", "rebuilt"]
    assert all("sha256 mismatch" in e["reason"] for e in cache.events)


def test_one_worker_or_one_missing_segmenter_starts_no_process(mni, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(parallel, "_run_pool", lambda *a, **k: pytest.fail("a pool was started"))
    assert train_missing(_jobs(mni, range(3)), 4, DiskCache(tmp_path), 1) == 0
    assert train_missing(_jobs(mni, range(1)), 4, DiskCache(tmp_path), 2) == 0


def test_auto_workers_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    assert doctest.testmod(parallel).failed == 0
    assert resolve_workers("auto", torch.device("cuda")) == 1 and resolve_workers(3, torch.device("cuda:1")) == 1
    assert resolve_workers(3, CPU) == 3
    monkeypatch.setattr(parallel, "usable_cores", lambda: 8)
    monkeypatch.setenv("MRIQ_TORCH_THREADS", "1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    assert resolve_workers("auto", CPU) == 4
    monkeypatch.setenv("MRIQ_TORCH_THREADS", "4")
    assert resolve_workers("auto", CPU) == 1
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    assert resolve_workers("auto", CPU) == 2
    assert auto_workers(1, 4, 1) == 1


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_a_bad_workers_value_is_refused(raw: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="positive integer"):
        parse_workers(raw)
    assert parse_workers("auto") == "auto" and parse_workers("3") == 3
