"""The hardware a run uses: its torch device (one GPU per pytest-xdist worker) and how many items fit a batch."""

from __future__ import annotations

import os
import re

import numpy as np
import torch

from .errors import MriqError

# --mriq-batch-size auto: the items whose float32 images make about this many bytes (a batch's images, the model's and the
# measures' working copies stay well under a few GB), rounded down to a multiple of the segmenter's inference batch
AUTO_BATCH_BYTES = {"cpu": 256 << 20, "cuda": 1 << 30}
SEGMENTER_BATCH = {2: 64, 3: 2}  # Segmenter.predict's default batch (slices, volumes): auto batches keep its grouping


def auto_batch_size(item_shape: tuple[int, ...], device: torch.device) -> int:
    """Items per batch for ``--mriq-batch-size auto``: as many float32 items of ``item_shape`` (C, H, W) or (C, D, H, W) as
    make :data:`AUTO_BATCH_BYTES` on ``device``'s kind, rounded down to a multiple of the segmenter's inference batch when
    that many fit (at least 1). On CPU: 4×128×128 slices 1024, 4×64×72×64 volumes 56, 4×155×240×240 volumes 1."""
    n = AUTO_BATCH_BYTES.get(device.type, AUTO_BATCH_BYTES["cpu"]) // (int(np.prod(item_shape)) * 4)
    unit = SEGMENTER_BATCH.get(len(item_shape) - 1, 1)
    return max(1, n - n % unit if n >= unit else n)


def worker_device(name: str, worker_id: str | None, n_gpus: int) -> str:
    """The device of one pytest-xdist worker: ``cuda`` becomes ``cuda:{k % n_gpus}`` on worker ``gw{k}``, so that
    several workers share several GPUs one each; anything else (``cpu``, an explicit ``cuda:1``, no worker, no GPU)
    is ``name`` unchanged."""
    match = re.fullmatch(r"gw(\d+)", worker_id or "")
    if name != "cuda" or match is None or n_gpus < 1:
        return name
    return f"cuda:{int(match.group(1)) % n_gpus}"


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error. Under pytest-xdist with several GPUs,
    ``cuda`` is one GPU per worker (:func:`worker_device`)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MriqError(f"--mriq-device {name}: CUDA is not available on this machine (torch {torch.__version__}); use cpu or auto")
    if name == "cuda":
        name = worker_device(name, os.environ.get("PYTEST_XDIST_WORKER"), torch.cuda.device_count())
    return torch.device(name)
