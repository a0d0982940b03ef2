"""What a downstream segmenter is made of, as registries a suite names (:class:`mriq_validate.segmenter.SegmenterConfig`):
networks (MONAI UNet, BasicUNet) and the size they need the input to be divisible by, losses, augmentations,
precisions, and the CPU threads training and inference run on."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

import torch

from .errors import MetricError


class NetConfig(Protocol):
    """What a network builder reads of a configuration (:class:`mriq_validate.segmenter.SegmenterConfig` has it)."""

    network: str
    spatial_dims: int | None
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    num_res_units: int


def _unet(cfg: NetConfig, n_classes: int, in_channels: int) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=cfg.spatial_dims, in_channels=in_channels, out_channels=n_classes, channels=cfg.channels, strides=cfg.strides,
                num_res_units=cfg.num_res_units)


def _basic_unet(cfg: NetConfig, n_classes: int, in_channels: int) -> torch.nn.Module:
    from monai.networks.nets import BasicUNet

    feats = (*cfg.channels, *([cfg.channels[-1]] * (6 - len(cfg.channels))))[:6]
    return BasicUNet(spatial_dims=cfg.spatial_dims, in_channels=in_channels, out_channels=n_classes, features=feats)


#: network name → build(config, n_classes, in_channels)
NETWORKS: dict[str, Callable[[NetConfig, int, int], torch.nn.Module]] = {"unet": _unet, "basic_unet": _basic_unet}

#: network name → the factor every spatial size must be divisible by (its total downsampling): MONAI UNet downsamples
#: by each stride in turn; BasicUNet by 2 four times.
DIVISORS: dict[str, Callable[[NetConfig], int]] = {"unet": lambda cfg: math.prod(cfg.strides), "basic_unet": lambda cfg: 16}


def divisor(cfg: NetConfig) -> int:
    """The factor the network of ``cfg`` needs every spatial size to be divisible by."""
    return DIVISORS[cfg.network](cfg)


def divisible_pad(x: torch.Tensor, k: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """``x`` (N×C×spatial) zero-padded so that every spatial size is divisible by ``k``, and the index that crops a
    padded result back. Symmetric, the odd voxel after, as MONAI ``DivisiblePad(k, method="symmetric")``
    (https://docs.monai.io/en/stable/transforms.html#divisiblepad); ``x`` itself when nothing is to pad."""
    extra = [(-n) % k for n in x.shape[2:]]
    if not any(extra):
        return x, (slice(None),) * x.ndim
    before = [e // 2 for e in extra]
    widths = [w for b, e in zip(reversed(before), reversed(extra)) for w in (b, e - b)]  # last axis first, as F.pad wants
    crop = (slice(None), slice(None), *(slice(b, b + n) for b, n in zip(before, x.shape[2:])))
    return torch.nn.functional.pad(x, widths), crop


def _dice_ce() -> torch.nn.Module:
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)


def _ce() -> torch.nn.Module:
    ce = torch.nn.CrossEntropyLoss()
    return lambda logits, target: ce(logits, target[:, 0])  # type: ignore[return-value]


LOSSES: dict[str, Callable[[], Any]] = {"dice_ce": _dice_ce, "ce": _ce}


def _flip(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-right flip of half the batch: the last axis, W, which is left-right on slices (RAS axial slices shown
    anterior at the top) and on volumes (each D-slice is such a slice); never the anterior-posterior or
    inferior-superior axes, which a brain is not symmetric along."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x, y = x.clone(), y.clone()
    x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
    return x, y


AUGMENTS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]] = {
    "none": lambda x, y, g: (x, y),
    "flip": _flip,
}


#: precision name → the dtype of ``torch.autocast`` (None: plain float32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """The context that runs forward passes at ``precision`` (:data:`PRECISIONS`) on ``device``: ``torch.autocast``
    with that dtype, or nothing for ``fp32``."""
    dtype = PRECISIONS[precision]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


THREADS_ENV = "MRIQ_TORCH_THREADS"


def cpu_threads() -> int | None:
    """Torch intra-op threads for segmenter training and inference on CPU: ``$MRIQ_TORCH_THREADS``, default 1; ``0`` keeps
    torch's own setting.

    Why 1: on shared CPUs, idle OpenMP threads spin against other processes. On the 2-core development machine under
    other work, one training step of the default UNet took 1.1 s/epoch-equivalent with 1 thread and 9-20 s with 2.
    On a quiet many-core CPU, set ``MRIQ_TORCH_THREADS=0`` (or a count) to use more.
    """
    raw = os.environ.get(THREADS_ENV, "1").strip()
    try:
        n = int(raw)
    except ValueError:
        raise MetricError(f"${THREADS_ENV}={raw!r}: expected an integer (0 = torch's default)") from None
    if n < 0:
        raise MetricError(f"${THREADS_ENV}={raw!r}: expected an integer >= 0 (0 = torch's default)")
    return n or None


@contextmanager
def torch_threads(device: torch.device) -> Iterator[None]:
    """On CPU, run with :func:`cpu_threads` torch threads (restored afterwards); on other devices leave them alone."""
    n = cpu_threads() if device.type == "cpu" else None
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
