"""Every core busy: independent segmenter trainings of one run on several CPU processes, with identical results.

A run trains several segmenters that do not depend on each other: the noise floor of protocols A and B trains the
real-data segmenter with ``noise_seeds`` seeds (five by default), each about a minute on one CPU thread. Training on
CPU uses one torch thread by default (:func:`mriq_validate.segnets.cpu_threads`: on shared CPUs idle OpenMP threads
spin), so a single process leaves the other cores idle. :func:`train_missing` trains the segmenters missing from
the cache in a pool of worker processes, each as the serial path would (same function, seed, thread count and cache
entry), so a parallel run writes byte-identical cache entries and reports the same numbers.

Workers: ``--mriq-workers N`` (ini ``mriq_workers``), default ``auto`` = the usable cores divided by the pytest-xdist
workers sharing them and by the torch threads each training uses (:func:`auto_workers`); 1 is the serial path. On
CUDA the trainings run one after another on the device (one GPU is one worker).
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import DiskCache, check_entry
from .segmenter import SegmenterConfig, get_segmenter, segmenter_key
from .segnets import cpu_threads

def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_workers(cores: int, xdist_workers: int, threads_per_training: int | None) -> int:
    """Training processes for ``auto``: ``cores`` shared by ``xdist_workers`` pytest-xdist workers, each training using
    ``threads_per_training`` torch threads (None: torch's default, all cores); at least 1.

    >>> auto_workers(2, 1, 1), auto_workers(2, 2, 1), auto_workers(16, 2, 1), auto_workers(16, 1, None)
    (2, 1, 8, 1)
    """
    threads = threads_per_training or cores
    return max(1, cores // (max(1, xdist_workers) * max(1, threads)))


def resolve_workers(setting: int | str, device: torch.device) -> int:
    """The number of training processes for ``setting`` (a positive integer, or ``auto``: :func:`auto_workers` of this
    machine and run) on ``device``: 1 on anything but the CPU."""
    if device.type != "cpu":
        return 1
    if setting != "auto":
        return int(setting)
    return auto_workers(usable_cores(), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), cpu_threads())


@dataclass(frozen=True)
class TrainingJob:
    """One segmenter to train: its configuration (resolved for the data) and its training images and masks."""

    cfg: SegmenterConfig
    images: torch.Tensor
    masks: torch.Tensor


def _train_in_worker(images_path: str, masks_path: str, n_classes: int, cfg: SegmenterConfig, contrasts: tuple[str, ...],
                     cache_root: str) -> list[dict[str, str]]:
    """A worker's task: train (or load) the segmenter into the cache exactly as :func:`get_segmenter` in the run would;
    the cache events it recorded (rebuilt entries), for the run's report."""
    images = torch.from_numpy(np.load(images_path, mmap_mode="c"))
    masks = torch.from_numpy(np.load(masks_path, mmap_mode="c"))
    cache = DiskCache(cache_root)
    get_segmenter(images, masks, n_classes, cfg, torch.device("cpu"), cache, contrasts=contrasts)
    return cache.events


def _missing(jobs: Sequence[TrainingJob], n_classes: int, cache: DiskCache, contrasts: tuple[str, ...]) -> list[TrainingJob]:
    """The jobs whose segmenter has no verified cache entry (one job per key)."""
    out, seen = [], set()
    for job in jobs:
        key = segmenter_key(job.images, job.masks, n_classes, job.cfg, "cpu", contrasts)
        if key not in seen and check_entry(cache.path("segmenters", key, ".pt")) is not None:
            out.append(job)
        seen.add(key)
    return out


def train_missing(jobs: Sequence[TrainingJob], n_classes: int, cache: DiskCache, workers: int, *, contrasts: tuple[str, ...] = (),
                  progress: Callable[[str], None] | None = None) -> int:
    """Train the CPU segmenters of ``jobs`` that have no verified cache entry on up to ``workers`` processes, into the
    cache (see the module docstring; the run then loads them as usual with :func:`get_segmenter`); the cache events of
    the workers are added to ``cache.events``. Nothing is started for fewer than two missing segmenters or one worker.
    The number trained."""
    missing = _missing(jobs, n_classes, cache, contrasts) if workers > 1 else []
    if len(missing) < 2:
        return 0
    n = min(workers, len(missing))
    if progress:
        progress(f"segmenters: training {len(missing)} side by side on {n} CPU processes")
    cache.events.extend(_run_pool(missing, n_classes, contrasts, cache, n))
    return len(missing)


def _run_pool(jobs: Sequence[TrainingJob], n_classes: int, contrasts: tuple[str, ...], cache: DiskCache,
              workers: int) -> list[dict[str, str]]:
    """Train ``jobs`` in a pool of ``workers`` fresh (spawned) processes; their training sets handed over as ``.npy``
    files in a temporary folder (written once per distinct set). A stop (Ctrl-C, SIGTERM, an error) terminates the
    pool before it propagates."""
    events: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="mriq-train-") as tmp:
        files: dict[tuple[int, int], tuple[str, str]] = {}
        for job in jobs:
            ident = (id(job.images), id(job.masks))
            if ident not in files:
                k = len(files)
                paths = (str(Path(tmp) / f"images-{k}.npy"), str(Path(tmp) / f"masks-{k}.npy"))
                np.save(paths[0], job.images.numpy())
                np.save(paths[1], job.masks.numpy())
                files[ident] = paths
        pool = multiprocessing.get_context("spawn").Pool(workers)
        try:
            results = [pool.apply_async(_train_in_worker, (*files[(id(j.images), id(j.masks))], n_classes, j.cfg, contrasts,
                                                           str(cache.root))) for j in jobs]
            for r in results:
                events.extend(r.get())
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    return events


def describe(workers: int) -> dict[str, Any]:
    """What the report records about the run's parallelism."""
    return {"training_processes": workers, "usable_cores": usable_cores(), "torch_threads_per_training": cpu_threads() or "torch default"}
