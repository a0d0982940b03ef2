"""The downstream task: a MONAI UNet segmenter trained on real data, and Dice (MONAI) as a metric.

Protocol A (evaluate on generated): the segmenter trained on the real training split is applied to the images
a model generates for real test masks; Dice against those masks is compared with the same segmenter's Dice on
the real test images. Trained segmenters are cached on disk by content hash of data, configuration and seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .cache import DiskCache, content_hash
from .errors import MetricError
from .metrics.base import PerImageMetric, Sample, register_metric

if TYPE_CHECKING:
    from .session import RunContext

TRAINER_VERSION = "unet-2d/1"


@dataclass(frozen=True)
class SegmenterConfig:
    """Architecture and training budget of the downstream segmenter (recorded with every Dice value)."""

    network: str = "unet"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-3
    loss: str = "dice_ce"
    augment: str = "flip"
    seed: int = 0

    @classmethod
    def from_params(cls, params: dict[str, Any] | None, where: str = "") -> "SegmenterConfig":
        """Build from YAML ``segmenter:`` params; MetricError naming an unknown or invalid field."""
        params = dict(params or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(params) - known
        if unknown:
            raise MetricError(f"{where}segmenter: unknown field(s) {sorted(unknown)}; expected {sorted(known)}")
        for key in ("channels", "strides"):
            if key in params:
                params[key] = tuple(int(v) for v in params[key])
        cfg = cls(**params)
        if cfg.network not in NETWORKS:
            raise MetricError(f"{where}segmenter.network {cfg.network!r} unknown; expected one of {sorted(NETWORKS)}")
        if cfg.loss not in LOSSES:
            raise MetricError(f"{where}segmenter.loss {cfg.loss!r} unknown; expected one of {sorted(LOSSES)}")
        if cfg.augment not in AUGMENTS:
            raise MetricError(f"{where}segmenter.augment {cfg.augment!r} unknown; expected one of {sorted(AUGMENTS)}")
        if len(cfg.strides) != len(cfg.channels) - 1:
            raise MetricError(f"{where}segmenter: strides {cfg.strides} must have one entry fewer than channels {cfg.channels}")
        if cfg.epochs < 1 or cfg.batch_size < 1 or not cfg.lr > 0:
            raise MetricError(f"{where}segmenter: epochs, batch_size and lr must be positive, got {cfg.epochs}, {cfg.batch_size}, {cfg.lr}")
        return cfg


def _unet(cfg: SegmenterConfig, n_classes: int) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=n_classes, channels=cfg.channels, strides=cfg.strides,
                num_res_units=cfg.num_res_units)


def _basic_unet(cfg: SegmenterConfig, n_classes: int) -> torch.nn.Module:
    from monai.networks.nets import BasicUNet

    feats = (*cfg.channels, *([cfg.channels[-1]] * (6 - len(cfg.channels))))[:6]
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=n_classes, features=feats)


NETWORKS: dict[str, Callable[[SegmenterConfig, int], torch.nn.Module]] = {"unet": _unet, "basic_unet": _basic_unet}


def _dice_ce() -> torch.nn.Module:
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)


def _ce() -> torch.nn.Module:
    ce = torch.nn.CrossEntropyLoss()
    return lambda logits, target: ce(logits, target[:, 0])  # type: ignore[return-value]


LOSSES: dict[str, Callable[[], Any]] = {"dice_ce": _dice_ce, "ce": _ce}


def _flip(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x, y = x.clone(), y.clone()
    x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
    return x, y


AUGMENTS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]] = {
    "none": lambda x, y, g: (x, y),
    "flip": _flip,
}


@dataclass
class Segmenter:
    """A trained segmenter: ``predict`` returns label maps N×1×H×W (int64)."""

    net: torch.nn.Module
    n_classes: int
    config: SegmenterConfig
    key: str
    device: torch.device
    history: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Argmax labels for ``images`` (N×1×H×W in [0, 1])."""
        self.net.eval()
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size].to(self.device, torch.float32)
            out.append(self.net(x).argmax(1, keepdim=True).cpu())
        return torch.cat(out).long()


def train_segmenter(images: torch.Tensor, masks: torch.Tensor, n_classes: int, cfg: SegmenterConfig, device: torch.device,
                    progress: Callable[[str], None] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``cfg.network`` on (images, masks) with seed ``cfg.seed``; deterministic on CPU."""
    if masks.max() >= n_classes or masks.min() < 0:
        found = sorted(int(v) for v in masks.unique())
        raise MetricError(f"masks hold labels {found}, outside the {n_classes} classes 0..{n_classes - 1} the segmenter is built for")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = NETWORKS[cfg.network](cfg, n_classes).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
        loss_fn = LOSSES[cfg.loss]()
        g = torch.Generator().manual_seed(cfg.seed)
        n = images.shape[0]
        start, losses = time.perf_counter(), []
        for epoch in range(cfg.epochs):
            net.train()
            perm = torch.randperm(n, generator=g)
            total = 0.0
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                x, y = AUGMENTS[cfg.augment](images[idx], masks[idx], g)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(x.to(device, torch.float32)), y.to(device))
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            sched.step()
            losses.append(total / n)
            if progress and (epoch % 5 == 4 or epoch == cfg.epochs - 1):
                rate = (epoch + 1) / (time.perf_counter() - start)
                progress(f"segmenter {cfg.network}: epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.4f} ({rate:.2f} epochs/s)")
    seconds = time.perf_counter() - start
    return net.eval(), {"loss": losses, "seconds": seconds, "epochs_per_s": cfg.epochs / seconds, "n_train": n}


def get_segmenter(images: torch.Tensor, masks: torch.Tensor, n_classes: int, cfg: SegmenterConfig, device: torch.device,
                  cache: DiskCache, progress: Callable[[str], None] | None = None) -> Segmenter:
    """The segmenter trained on (images, masks), loaded from the cache when the same data, config and seed were seen."""
    key = content_hash(TRAINER_VERSION, asdict(cfg), n_classes, images, masks)

    def create() -> dict[str, Any]:
        net, history = train_segmenter(images, masks, n_classes, cfg, device, progress)
        return {"state": {k: v.cpu() for k, v in net.state_dict().items()}, "history": history}

    def save(obj: dict[str, Any], path: Path) -> None:
        torch.save(obj, path)

    def load(path: Path) -> dict[str, Any]:
        return torch.load(path, map_location="cpu", weights_only=True)

    blob = cache.get_or_create("segmenters", key, ".pt", create, save, load)
    net = NETWORKS[cfg.network](cfg, n_classes)
    net.load_state_dict(blob["state"])
    return Segmenter(net.to(device).eval(), n_classes, cfg, key, device, blob["history"])


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Binary Dice per image (MONAI ``compute_dice``) of boolean N×1×H×W masks.

    Empty-vs-empty counts as 1.0 (nothing to find, nothing found); empty target with a non-empty prediction as 0.
    """
    from monai.metrics import compute_dice

    d = compute_dice(pred.float(), target.float(), include_background=True, ignore_empty=False)
    return d[:, 0].cpu().numpy().astype(np.float64)


@register_metric
class Dice(PerImageMetric):
    """Protocol A: Dice of the real-data segmenter's prediction on each image against the mask it was generated for."""

    name = "dice"
    higher_is_better = True
    valid_range = (0.0, 1.0)
    needs = ("masks", "segmenter")
    summary = "Dice of a segmenter trained on real data, applied to the images (protocol A)"

    def __init__(self, region: str = "whole_tumour", segmenter: dict[str, Any] | None = None, min_real_dice: float = 0.5) -> None:
        if not isinstance(region, str):
            raise MetricError(f"metric 'dice': region must be a region or label name, got {region!r}")
        if not 0 <= min_real_dice < 1:
            raise MetricError(f"metric 'dice': min_real_dice must be in [0, 1), got {min_real_dice!r}")
        self.region = region
        self.min_real_dice = float(min_real_dice)
        self.segmenter = SegmenterConfig.from_params(segmenter, "metric 'dice': ")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "region": self.region, "protocol": "A", "segmenter": asdict(self.segmenter),
                "min_real_dice": self.min_real_dice,
                "dice": "MONAI compute_dice per slice, empty-vs-empty = 1"}

    def scores(self, ctx: "RunContext", sample: Sample) -> np.ndarray:
        assert sample.masks is not None
        pred = ctx.predict(self.segmenter, sample.images)
        region = ctx.data.region_mask
        scores = dice_per_image(region(pred, self.region), region(sample.masks, self.region))
        real = scores if sample.origin == "real test" else ctx.prepare(self, ctx.real_test())
        if real.mean() < self.min_real_dice:
            raise MetricError(
                f"metric 'dice' ({self.region}): the segmenter trained on real data reaches only Dice {real.mean():.3f} on the "
                f"real test images (< min_real_dice {self.min_real_dice}); it cannot tell damaged images from hard ones. "
                f"Train it longer (segmenter.epochs={self.segmenter.epochs}) or check the data"
            )
        return scores
