"""The downstream task: a MONAI UNet segmenter, and Dice / HD95 (MONAI) as metrics, under two protocols.

Protocol A (evaluate on generated; metrics ``dice`` and ``hd95``): the segmenter trained on the real training split
is applied to the images a model generates for real test masks; Dice (or HD95) against those masks is compared with
the same segmenter's value on the real test images.

Protocol B (train on generated, test on real; metrics ``dice_tstr`` and ``dice_augmented``): a segmenter of the same
architecture and budget is trained on the model's image-mask pairs (TSTR), or on the real training split plus them
(augmentation), and its Dice is measured on the REAL test split, one value per test slice. Trained on the real
training split itself it is TRTR, the same segmenter (same cache key) as protocol A's.

Training noise: ``noise_floor`` of ``dice``, ``dice_tstr`` and ``dice_augmented`` is the seed-to-seed standard
deviation of the TRTR segmenter's mean real-test Dice over ``noise_seeds`` training seeds (default
:data:`DEFAULT_NOISE_SEEDS`; seed 0 is the TRTR segmenter itself). A threshold in ``unit: seed_sd`` is widened for the
uncertainty of that estimate so that it keeps the false-alarm rate it states (:class:`mriq_validate.criteria.NoiseUnit`).

HD95 has two definitions (``definition``): MONAI's (the larger of the two one-way 95th percentiles) and the pooled one
(95th percentile of both directions' distances together, with BraTS's 374 mm for an empty mask); see :data:`HD95_DEFINITIONS`.

Trained segmenters are cached on disk by content hash of training data, configuration and seed (not the device:
a segmenter trained on CUDA is reused on CPU and vice versa; training is bit-for-bit deterministic on CPU only).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from .cache import DiskCache, content_hash
from .errors import MetricError
from .metrics.base import Metric, PerImageMetric, Sample, register_metric

if TYPE_CHECKING:
    from .session import RunContext

TRAINER_VERSION = "unet-2d/1"  # 3D segmenters add spatial_dims=3 to the key (see _key_fields)

# Training seeds the noise floor is measured over. 5, not 3: three seeds estimate an SD only to within a factor of about
# 6 (95% chi-square interval), and the seed_sd bound widens to keep its false-alarm rate by x2.09 with 3 seeds against
# x1.29 with 5 (3 seed SDs). Each extra seed is one more training of the default segmenter (45-60 s on one CPU core,
# once per data and configuration: cached on disk).
DEFAULT_NOISE_SEEDS = 5


@dataclass(frozen=True)
class SegmenterConfig:
    """Architecture and training budget of the downstream segmenter (recorded with every Dice value).

    Adam with a cosine learning-rate schedule over ``epochs``; ``spatial_dims`` 2 (slices N×1×H×W) or 3 (volumes
    N×1×D×H×W).

    The default is sized for CPUs: on the embedded data (256 training slices of 128×128) it trains in about 45-60 s on one
    core and reaches whole-tumour Dice 0.773 on the real test slices (seed 0, CPU; 0.769 mean over 3 seeds on CUDA),
    against 0.782 in 438 s for the earlier default (channels (16, 32, 64, 128), num_res_units 1, 30 epochs, lr 3e-3).
    ``benchmarks/downstream_cost.py`` measures it.
    """

    network: str = "unet"
    channels: tuple[int, ...] = (8, 16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 0
    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-2
    loss: str = "dice_ce"
    augment: str = "flip"
    seed: int = 0
    spatial_dims: int = 2

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
        if cfg.spatial_dims not in (2, 3):
            raise MetricError(f"{where}segmenter.spatial_dims must be 2 or 3, got {cfg.spatial_dims!r}")
        if cfg.epochs < 1 or cfg.batch_size < 1 or not cfg.lr > 0:
            raise MetricError(f"{where}segmenter: epochs, batch_size and lr must be positive, got {cfg.epochs}, {cfg.batch_size}, {cfg.lr}")
        return cfg


def _unet(cfg: SegmenterConfig, n_classes: int) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=cfg.spatial_dims, in_channels=1, out_channels=n_classes, channels=cfg.channels, strides=cfg.strides,
                num_res_units=cfg.num_res_units)


def _basic_unet(cfg: SegmenterConfig, n_classes: int) -> torch.nn.Module:
    from monai.networks.nets import BasicUNet

    feats = (*cfg.channels, *([cfg.channels[-1]] * (6 - len(cfg.channels))))[:6]
    return BasicUNet(spatial_dims=cfg.spatial_dims, in_channels=1, out_channels=n_classes, features=feats)


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
        with torch_threads(self.device):
            for i in range(0, images.shape[0], batch_size):
                x = images[i : i + batch_size].to(self.device, torch.float32)
                out.append(self.net(x).argmax(1, keepdim=True).cpu())
        return torch.cat(out).long()


def check_labels(masks: torch.Tensor, n_classes: int, where: str = "") -> None:
    """MetricError naming the labels found when ``masks`` hold values outside ``0..n_classes-1``."""
    if masks.numel() and (int(masks.max()) >= n_classes or int(masks.min()) < 0):
        found = sorted(int(v) for v in masks.unique())
        outside = [v for v in found if not 0 <= v < n_classes]
        raise MetricError(f"{where}masks hold labels {found}, outside the {n_classes} classes 0..{n_classes - 1} the segmenter is built for "
                          f"(offending labels {outside})")


def train_segmenter(images: torch.Tensor, masks: torch.Tensor, n_classes: int, cfg: SegmenterConfig, device: torch.device,
                    progress: Callable[[str], None] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``cfg.network`` on (images, masks) with seed ``cfg.seed``; deterministic on CPU.

    ``images`` N×1×H×W (or N×1×D×H×W with ``spatial_dims: 3``) in [0, 1]; ``masks`` the same shape, integer labels.
    Runs on ``device`` (batches are moved there; nothing is read back but the loss).
    """
    check_labels(masks, n_classes)
    if images.ndim != cfg.spatial_dims + 2 or masks.shape != images.shape:
        raise MetricError(f"segmenter with spatial_dims={cfg.spatial_dims} needs images and masks of shape N×1×{'D×' if cfg.spatial_dims == 3 else ''}H×W, "
                          f"got {tuple(images.shape)} and {tuple(masks.shape)}")
    with torch.random.fork_rng(devices=[]), torch_threads(device):
        torch.manual_seed(cfg.seed)
        net = NETWORKS[cfg.network](cfg, n_classes).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
        loss_fn = LOSSES[cfg.loss]()
        g = torch.Generator().manual_seed(cfg.seed)
        n = images.shape[0]
        every = max(1, cfg.epochs // 6)
        start, losses = time.perf_counter(), []
        for epoch in range(cfg.epochs):
            net.train()
            perm = torch.randperm(n, generator=g)
            total = torch.zeros((), device=device)
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                x, y = AUGMENTS[cfg.augment](images[idx], masks[idx], g)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(x.to(device, torch.float32)), y.to(device))
                loss.backward()
                opt.step()
                total += loss.detach() * len(idx)
            sched.step()
            losses.append(float(total.cpu()) / n)
            if progress and (epoch == 0 or (epoch + 1) % every == 0 or epoch == cfg.epochs - 1):
                rate = (epoch + 1) / (time.perf_counter() - start)
                progress(f"segmenter {cfg.network}: epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.4f} "
                         f"({rate:.2f} epochs/s, {n} {'volumes' if cfg.spatial_dims == 3 else 'slices'}, {device.type})")
        threads = torch.get_num_threads()
    seconds = time.perf_counter() - start
    return net.eval(), {"loss": losses, "seconds": seconds, "epochs_per_s": cfg.epochs / seconds, "n_train": n, "device": device.type,
                        "cpu_threads": threads}


def _key_fields(cfg: SegmenterConfig) -> dict[str, Any]:
    """The configuration as it enters the cache key. ``spatial_dims`` is left out when 2, so that the keys of 2D
    segmenters cached before 3D support existed stay valid."""
    fields = asdict(cfg)
    if fields["spatial_dims"] == 2:
        del fields["spatial_dims"]
    return fields


def segmenter_key(images: torch.Tensor, masks: torch.Tensor, n_classes: int, cfg: SegmenterConfig, device_type: str = "cpu") -> str:
    """The content-hash cache key of the segmenter trained on (images, masks) with ``cfg``. Training on another device
    type gives other weights (kernels differ), so a non-CPU device is part of the key."""
    extra = () if device_type == "cpu" else (device_type,)
    return content_hash(TRAINER_VERSION, _key_fields(cfg), n_classes, images, masks, *extra)


def get_segmenter(images: torch.Tensor, masks: torch.Tensor, n_classes: int, cfg: SegmenterConfig, device: torch.device,
                  cache: DiskCache, progress: Callable[[str], None] | None = None) -> Segmenter:
    """The segmenter trained on (images, masks), loaded from the cache when the same data, config and seed were seen."""
    key = segmenter_key(images, masks, n_classes, cfg, device.type)

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
    """Binary Dice per image (MONAI ``compute_dice``) of boolean N×1×H×W (or N×1×D×H×W) masks.

    Empty-vs-empty counts as 1.0 (nothing to find, nothing found); empty target with a non-empty prediction as 0.
    """
    from monai.metrics import compute_dice

    d = compute_dice(pred.float(), target.float(), include_background=True, ignore_empty=False)
    return d[:, 0].cpu().numpy().astype(np.float64)


BRATS_EMPTY_HD95_MM = 374.0  # what BraTS's evaluation scores when one mask is empty (its stand-in for an infinite HD95)


def _hd95_monai(p: torch.Tensor, t: torch.Tensor, spacing_mm: tuple[float, ...]) -> np.ndarray:
    from monai.metrics import compute_hausdorff_distance

    hd = compute_hausdorff_distance(p.float(), t.float(), include_background=True, percentile=95, spacing=list(spacing_mm))
    return hd[:, 0].cpu().numpy()


def _hd95_pooled(p: torch.Tensor, t: torch.Tensor, spacing_mm: tuple[float, ...]) -> np.ndarray:
    from monai.metrics.utils import get_edge_surface_distance

    out = []
    for a, b in zip(p[:, 0], t[:, 0]):
        _, (pred_to_ref, ref_to_pred), _ = get_edge_surface_distance(a, b, spacing=list(spacing_mm), symmetric=True, warn_empty=False)
        out.append(float(torch.quantile(torch.cat([pred_to_ref, ref_to_pred]).double(), 0.95)))
    return np.array(out)


#: The HD95 definitions (``hd95`` parameter ``definition``): how the two masks' boundary distances become one number, and
#: what one empty mask scores. Both use the same boundary pixels (a mask minus its erosion, MONAI ``get_mask_edges``),
#: Euclidean distances at the pixel spacing, and the linearly interpolated 95th percentile.
HD95_DEFINITIONS: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor, tuple[float, ...]], np.ndarray], str]] = {
    "monai": (_hd95_monai, "MONAI compute_hausdorff_distance percentile=95 per slice, mm at the data's spacing: the larger of the "
                           "two one-way 95th percentiles of boundary distances; both empty = 0 mm, one empty = image diagonal (mm)"),
    "brats": (_hd95_pooled, "95th percentile of both directions' boundary distances pooled (medpy hd95, panoptica, used by the "
                            "BraTS 2025 evaluation) per slice, mm at the data's spacing; both empty = 0 mm, one empty = 374 mm "
                            "(BraTS 2023 evaluation's value for an infinite HD95)"),
}


def hd95_per_image(pred: torch.Tensor, target: torch.Tensor, spacing_mm: tuple[float, ...], definition: str = "monai") -> np.ndarray:
    """95th-percentile Hausdorff distance in mm per image of boolean N×1×H×W (or N×1×D×H×W) masks.

    Boundary pixels of each mask (the mask minus its erosion), Euclidean distances to the other mask's boundary with
    pixel ``spacing_mm``, 95th percentile with linear interpolation; ``definition`` (:data:`HD95_DEFINITIONS`) decides
    how the two directions combine and what an empty mask scores:

    * ``monai`` (default): what MONAI ``compute_hausdorff_distance`` / ``HausdorffDistanceMetric(percentile=95)``
      computes, the larger of the two one-way percentiles (prediction→reference, reference→prediction). Empty masks,
      which MONAI scores as NaN/inf, are decided here: both empty → 0 mm (nothing to find, nothing found); exactly one
      empty → the image diagonal in mm (the largest distance possible inside the image).
    * ``brats``: the percentile of both directions' distances pooled, as medpy's ``hd95`` and panoptica compute it (the
      BraTS 2025 evaluation uses panoptica; BraTS 2023's lesion-wise code took the larger one-way percentile, weighted by
      surface area, like ``monai``). Both empty → 0 mm; exactly one empty → 374 mm, the value BraTS 2023's evaluation
      substitutes for an infinite HD95.

    The two differ most when one direction has a tail the other lacks (a small far-away false positive): MONAI's takes
    that direction's percentile, pooling dilutes it with the other direction's distances.
    """
    if definition not in HD95_DEFINITIONS:
        raise MetricError(f"hd95: definition {definition!r} unknown; expected one of {sorted(HD95_DEFINITIONS)}")
    if pred.shape != target.shape or pred.ndim < 4 or pred.shape[1] != 1:
        raise MetricError(f"hd95: prediction {tuple(pred.shape)} and target {tuple(target.shape)} must be equal N×1×(D×)H×W")
    dims = pred.ndim - 2
    if len(spacing_mm) != dims:
        raise MetricError(f"hd95: spacing {tuple(spacing_mm)} mm does not match the {dims} spatial dimensions of the masks")
    p, t = pred.bool().cpu(), target.bool().cpu()
    spacing = tuple(float(v) for v in spacing_mm)
    one_empty = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape[2:], spacing)))) if definition == "monai" else BRATS_EMPTY_HD95_MM
    has_p, has_t = p.flatten(1).any(1), t.flatten(1).any(1)
    out = np.where(has_p | has_t, one_empty, 0.0)
    both = (has_p & has_t).nonzero().flatten()
    if both.numel():
        with warnings.catch_warnings():  # MONAI's own use of a deprecated argument of get_mask_edges
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
            out[both.numpy()] = HD95_DEFINITIONS[definition][0](p[both], t[both], spacing)
    return out.astype(np.float64)


def _seed_means(ctx: "RunContext", copies: list[Any], sample: Sample) -> list[float]:
    """The mean of ``ctx.prepare(copy, sample)`` for each metric copy (one per training seed; memoised by the run)."""
    return [float(np.mean(ctx.prepare(m, sample))) for m in copies]


def _check_noise_seeds(name: str, noise_seeds: Any) -> int:
    if isinstance(noise_seeds, bool) or not isinstance(noise_seeds, int) or noise_seeds < 2:
        raise MetricError(f"metric {name!r}: noise_seeds must be an integer >= 2 (seeds to measure training noise over), got {noise_seeds!r}")
    return noise_seeds


def _check_region(name: str, region: Any) -> str:
    if not isinstance(region, str):
        raise MetricError(f"metric {name!r}: region must be a region or label name, got {region!r}")
    return region


def _check_min_real_dice(name: str, min_real_dice: Any) -> float:
    if not 0 <= min_real_dice < 1:
        raise MetricError(f"metric {name!r}: min_real_dice must be in [0, 1), got {min_real_dice!r}")
    return float(min_real_dice)


_PROTOCOL_A_LIMITATIONS = (
    "Protocol A (a segmenter trained on real data, applied to generated images) shows that lesions are where the "
    "masks say and look like real lesions to a real-trained model; it does not show that a model trained on "
    "generated images generalises to real scans (protocol B, dice_tstr, does).",
    "Blind to errors outside the labelled regions (healthy anatomy, background artefacts) and inherits the "
    "segmenter's own errors; the criterion ERRORs when the segmenter's Dice on real images is below min_real_dice.",
)


@register_metric
class Dice(PerImageMetric):
    """Protocol A: Dice of the real-data segmenter's prediction on each image against the mask it was generated for."""

    name = "dice"
    higher_is_better = True
    valid_range = (0.0, 1.0)
    needs = ("masks", "segmenter")
    summary = "Dice of a segmenter trained on real data, applied to the images (protocol A)"
    limitations: ClassVar[tuple[str, ...]] = (
        *_PROTOCOL_A_LIMITATIONS,
        "Slice-level Dice weighs small lesions as much as large ones; thin structures (enhancing rim) are noisy.",
        "Its seed-to-seed SD (unit: seed_sd) is the training noise of the real-data segmenter's Dice; protocol A compares "
        "two image sets under the SAME segmenter, so the false-alarm rate that unit states (for a difference of two "
        "trainings) does not apply to it; prefer unit se or absolute.",
    )

    def __init__(self, region: str = "whole_tumour", segmenter: dict[str, Any] | None = None, min_real_dice: float = 0.5,
                 noise_seeds: int = DEFAULT_NOISE_SEEDS) -> None:
        self.region = _check_region(self.name, region)
        self.min_real_dice = _check_min_real_dice(self.name, min_real_dice)
        self.noise_seeds = _check_noise_seeds(self.name, noise_seeds)
        self.segmenter = SegmenterConfig.from_params(segmenter, "metric 'dice': ")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "region": self.region, "protocol": "A", "segmenter": asdict(self.segmenter),
                "min_real_dice": self.min_real_dice, "noise_seeds": self.noise_seeds,
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

    def seed_means(self, ctx: "RunContext") -> list[float]:
        """Mean real-test Dice of the real-data (TRTR) segmenter trained with seeds ``seed .. seed+noise_seeds-1`` (each
        trained once and cached on disk; the first is the segmenter this metric uses)."""
        copies = [Dice(self.region, {**asdict(self.segmenter), "seed": self.segmenter.seed + k}, self.min_real_dice, self.noise_seeds)
                  for k in range(self.noise_seeds)]
        ctx.progress(f"dice ({self.region}): training noise over {self.noise_seeds} segmenter seeds (trained once, then cached)")
        return _seed_means(ctx, copies, ctx.real_test())

    def noise_floor(self, ctx: "RunContext") -> float:
        """Seed-to-seed SD (ddof 1) of :meth:`seed_means`: the training noise of the real-data segmenter's Dice. Protocol
        A's comparisons use one segmenter on both sides, so this is a scale, not the noise of their difference."""
        return float(np.std(self.seed_means(ctx), ddof=1))


@register_metric
class Hd95(PerImageMetric):
    """Protocol A: 95th-percentile Hausdorff distance (mm) between the real-data segmenter's prediction on each image
    and the mask it was generated for; lower is better.

    ``definition: monai`` (default): the larger of the two one-way 95th percentiles of boundary distances (MONAI);
    both masks empty → 0 mm, exactly one empty → the image diagonal in mm. ``definition: brats``: the 95th percentile
    of both directions' distances pooled (medpy, panoptica); one empty → 374 mm as in BraTS's evaluation. See
    :func:`hd95_per_image`."""

    name = "hd95"
    higher_is_better = False
    valid_range = (0.0, float("inf"))
    needs = ("masks", "segmenter")
    summary = "95th-percentile Hausdorff distance (mm) of a segmenter trained on real data, applied to the images (protocol A)"
    limitations: ClassVar[tuple[str, ...]] = (
        *_PROTOCOL_A_LIMITATIONS,
        "Slice-level HD95 in the slice plane, not in 3D: one slice's distances say nothing about the next slice's.",
        "A slice where exactly one mask is empty scores a fixed penalty (the image diagonal, or 374 mm with definition "
        "brats) that dominates the mean; HD95 values of different definitions or image sizes are not comparable.",
    )

    def __init__(self, region: str = "whole_tumour", segmenter: dict[str, Any] | None = None, min_real_dice: float = 0.5,
                 definition: str = "monai") -> None:
        self.region = _check_region(self.name, region)
        self.min_real_dice = _check_min_real_dice(self.name, min_real_dice)
        if definition not in HD95_DEFINITIONS:
            raise MetricError(f"metric 'hd95': definition {definition!r} unknown; expected one of {sorted(HD95_DEFINITIONS)}")
        self.definition = definition
        self.segmenter = SegmenterConfig.from_params(segmenter, "metric 'hd95': ")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "region": self.region, "protocol": "A", "segmenter": asdict(self.segmenter),
                "min_real_dice": self.min_real_dice, "definition": self.definition, "hd95": HD95_DEFINITIONS[self.definition][1]}

    def scores(self, ctx: "RunContext", sample: Sample) -> np.ndarray:
        assert sample.masks is not None
        # competence of the segmenter, decided on Dice exactly as protocol A's ``dice`` does
        ctx.prepare(Dice(self.region, asdict(self.segmenter), self.min_real_dice), ctx.real_test())
        pred = ctx.predict(self.segmenter, sample.images)
        region = ctx.data.region_mask
        return hd95_per_image(region(pred, self.region), region(sample.masks, self.region), tuple(ctx.data.spacing_mm), self.definition)


class _TrainOnSample(Metric):
    """Protocol B: train a segmenter on a training set made from the sample, report Dice per REAL test slice.

    ``prepare`` returns the per-test-slice Dice (``size`` = number of real test slices); ``value`` is their mean on a
    resample of the test slices, so two samples' values are paired slice by slice (``pairs_by_reference``).
    """

    higher_is_better = True
    kind = "set"
    valid_range = (0.0, 1.0)
    needs = ("masks", "segmenter")
    pairs_by_reference = True
    protocol = ""
    limitations: ClassVar[tuple[str, ...]] = (
        "Measures how useful the generated image-mask pairs are to ONE small segmenter with a fixed training budget; a "
        "larger model or another budget may rank generators differently.",
        "The seed-noise floor (unit: seed_sd) covers training randomness only. A faithful generator's images are a new "
        "draw of data, which adds variation the floor does not hold, so such a model fails the bound more often than "
        "the stated false-alarm rate; the rate is exact only for normal training noise.",
        "A difference within the bound is not evidence that the data are as useful as real data: with one test split "
        "and a few training seeds small losses go undetected.",
        "Dice per real test slice: weighs small lesions as much as large ones; blind to what the segmenter does not "
        "need to learn (anatomy outside the lesion may be wrong and still train a good segmenter).",
    )

    def __init__(self, region: str = "whole_tumour", segmenter: dict[str, Any] | None = None, min_real_dice: float = 0.5,
                 noise_seeds: int = DEFAULT_NOISE_SEEDS) -> None:
        self.region = _check_region(self.name, region)
        self.min_real_dice = _check_min_real_dice(self.name, min_real_dice)
        self.noise_seeds = _check_noise_seeds(self.name, noise_seeds)
        self.segmenter = SegmenterConfig.from_params(segmenter, f"metric {self.name!r}: ")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "region": self.region, "protocol": self.protocol, "segmenter": asdict(self.segmenter),
                "min_real_dice": self.min_real_dice, "noise_seeds": self.noise_seeds, "evaluated_on": "real test",
                "dice": "MONAI compute_dice per real test slice, empty-vs-empty = 1"}

    def training_set(self, ctx: "RunContext", sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        """The (images, masks) to train on, for a sample that is not the real training split itself."""
        raise NotImplementedError

    def check_sample(self, sample: Sample) -> None:
        if sample.masks is None:
            raise MetricError(f"metric {self.name!r}: {self.protocol} needs label masks to train a segmenter on the {sample.origin} "
                              f"images, and none came with them (TSTR needs masks: use a mask-conditioned model with generate(masks), "
                              f"one whose sample() returns (images, masks), or protocol A's metric 'dice')")
        super().check_sample(sample)

    def prepare(self, ctx: "RunContext", sample: Sample) -> np.ndarray:
        self.check_sample(sample)
        assert sample.masks is not None
        check_labels(sample.masks, ctx.n_classes, f"metric {self.name!r}: the {sample.origin} ")
        test = ctx.real_test()
        assert test.masks is not None
        if sample.masks.shape == test.masks.shape and torch.equal(sample.masks.long(), test.masks):
            raise MetricError(f"metric {self.name!r}: the {sample.origin} masks are the real test masks, on which the segmenter is "
                              f"evaluated; training on them would leak the test labels. Use `condition_on: train_masks` (the model "
                              f"generates for the real training masks; the baseline is then TRTR)")
        train = ctx.data.train
        is_real_train = sample.images.shape == train.images.shape and content_hash(sample.images, sample.masks) == train.digest()
        if is_real_train:  # TRTR: the very segmenter protocol A uses (same cache key), memoised by the run
            seg = ctx.segmenter(self.segmenter)
        else:
            images, masks = self.training_set(ctx, sample)
            ctx.progress(f"{self.name}: training a segmenter on {len(images)} image-mask pairs ({sample.origin}), or loading it from cache")
            seg = get_segmenter(images, masks, ctx.n_classes, self.segmenter, ctx.device, ctx.cache, ctx.progress)
        region = ctx.data.region_mask
        scores = dice_per_image(region(seg.predict(test.images), self.region), region(test.masks, self.region))
        trtr = scores if is_real_train else ctx.prepare(self, ctx.real("train"))
        if trtr.mean() < self.min_real_dice:
            raise MetricError(
                f"metric {self.name!r} ({self.region}): the segmenter trained on the real training split (TRTR) reaches only Dice "
                f"{trtr.mean():.3f} on the real test images (< min_real_dice {self.min_real_dice}); with this budget the task "
                f"cannot tell useful training data from useless. Train it longer (segmenter.epochs={self.segmenter.epochs}) or check the data"
            )
        return scores

    def value(self, prepared: np.ndarray, index: np.ndarray) -> float:
        return float(prepared[index].mean())

    def size(self, prepared: np.ndarray) -> int:
        return len(prepared)

    def seed_means(self, ctx: "RunContext") -> list[float]:
        """Mean real-test Dice of the TRTR segmenter trained with seeds ``seed .. seed+noise_seeds-1`` (each trained once and
        cached on disk; the first is the TRTR baseline itself)."""
        cls = type(self)
        copies = [cls(self.region, {**asdict(self.segmenter), "seed": self.segmenter.seed + k}, self.min_real_dice, self.noise_seeds)
                  for k in range(self.noise_seeds)]
        ctx.progress(f"{self.name} ({self.region}): training noise over {self.noise_seeds} TRTR segmenter seeds (trained once, then cached)")
        return _seed_means(ctx, copies, ctx.real("train"))

    def noise_floor(self, ctx: "RunContext") -> float:
        """Seed-to-seed SD (ddof 1) of :meth:`seed_means`. A difference between two independently trained segmenters (TSTR
        minus TRTR) has about sqrt(2) times this SD from training noise alone."""
        return float(np.std(self.seed_means(ctx), ddof=1))


@register_metric
class DiceTSTR(_TrainOnSample):
    """Protocol B, train on synthetic, test on real (TSTR): a segmenter of the same architecture and budget trained on
    the sample's image-mask pairs, Dice per real test slice. On the real training split itself it is TRTR."""

    name = "dice_tstr"
    protocol = "B (TSTR: train on the sample, test on real)"
    summary = "Dice on the real test split of a segmenter trained on the images and their masks (protocol B, TSTR)"

    def training_set(self, ctx: "RunContext", sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        assert sample.masks is not None
        return sample.images, sample.masks


@register_metric
class DiceAugmented(_TrainOnSample):
    """Protocol B, augmentation: a segmenter trained on the real training split plus the sample's image-mask pairs
    (same architecture and epochs, so more steps), Dice per real test slice. The real training split itself as the
    sample means no augmentation (TRTR); so does a sample identical to it (a copy adds no information)."""

    name = "dice_augmented"
    protocol = "B (augmentation: train on real train + the sample, test on real)"
    summary = "Dice on the real test split of a segmenter trained on real training data plus the images and masks (protocol B)"
    limitations: ClassVar[tuple[str, ...]] = (
        "Same epochs over a larger training set means more optimisation steps than TRTR: a gain may come from the extra "
        "steps rather than from the generated data.",
        *_TrainOnSample.limitations,
    )

    def training_set(self, ctx: "RunContext", sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        assert sample.masks is not None
        train = ctx.data.train
        if sample.images.shape[1:] != train.images.shape[1:]:
            raise MetricError(f"metric {self.name!r}: {sample.origin} images {tuple(sample.images.shape[1:])} differ in shape from the "
                              f"real training slices {tuple(train.images.shape[1:])}")
        return torch.cat([train.images, sample.images]), torch.cat([train.masks, sample.masks.long()])
