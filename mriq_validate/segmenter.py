"""The downstream segmenter: a MONAI UNet trained on image-mask pairs, cached on disk.

Its configuration (:class:`SegmenterConfig`: network, loss, augmentation and precision from the registries of
:mod:`mriq_validate.segnets`) is recorded with every value computed with it. It reads every contrast at once: its
input channels are the images' C channels (one per contrast, as nnU-Net and the BraTS baselines stack the modalities
as input channels), and it predicts one label map N×1×H×W (N×1×D×H×W for volumes: a 3D UNet, chosen by the data's
dimensionality unless the suite sets ``spatial_dims``; see :meth:`SegmenterConfig.resolve`). Trained segmenters are
cached on disk by content hash of training data, configuration, seed and (for C > 1) the contrast names
(:func:`segmenter_key`; not the device type for CPU: a segmenter trained on CUDA is keyed apart, training being
bit-for-bit deterministic on CPU only).

The metrics that use it (Dice, HD95, TSTR; Deo et al. 2025, arXiv 2505.07175, downstream evaluation) are in
:mod:`mriq_validate.metrics.downstream`; the maths of Dice and HD95 on label maps in
:mod:`mriq_validate.metrics.functional.downstream`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import arrays
from .cache import DiskCache, content_hash
from .errors import MetricError
from .segnets import AUGMENTS, LOSSES, NETWORKS, PRECISIONS, autocast, divisible_pad, divisor, torch_threads

TRAINER_VERSION = "unet-2d/1"  # 3D segmenters add spatial_dims=3 to the key (see _key_fields)


#: The training budget a suite does not set, per spatial dimensionality (``epochs``, ``batch_size``).
#: 2D: 256 slices of 4×128×128 of the embedded data train in about a minute on one CPU core (see :class:`SegmenterConfig`).
#: 3D: sized for ``builtin:mni-tumour-3d`` (45 training volumes of 4×64×72×64 at 3 mm), one CPU thread (seed 0; CPU
#: seconds of training on a shared 2-core machine; whole-tumour / tumour-core Dice on its 19 test volumes): 16 epochs
#: 27 s, 0.825 / 0.722; 24 epochs 43 s, 0.865 / 0.811 (seed 1: 38 s, 0.897 / 0.781); 32 epochs 55 s, 0.884 / 0.771.
#: 24 epochs keep a margin under a minute on a slower or busier CPU. Batch 2: at 16 epochs, batch 4 gave 0.849 against
#: 0.916 for batch 2 on a cohort like it (half the optimiser steps), and small batches keep memory low on the native
#: 1 mm grid.
DEFAULT_BUDGET: dict[int, dict[str, int]] = {2: {"epochs": 40, "batch_size": 16}, 3: {"epochs": 24, "batch_size": 2}}


@dataclass(frozen=True)
class SegmenterConfig:
    """Architecture and training budget of the downstream segmenter (recorded with every Dice value).

    Adam with a cosine learning-rate schedule over ``epochs``; ``spatial_dims`` 2 (slices N×C×H×W) or 3 (volumes
    N×C×D×H×W), C input channels (contrasts) taken from the training images. ``None`` for ``spatial_dims``,
    ``epochs`` or ``batch_size`` means "decided by the data": the data's dimensionality and its default budget
    (:data:`DEFAULT_BUDGET`), filled in by :meth:`resolve`, so one suite serves slices and volumes. ``roi_size``
    (optional, one length per spatial axis) makes inference run by MONAI ``sliding_window_inference`` over windows
    of that size when an image is larger (for volumes on a fine grid); it does not change training.

    The 2D default is sized for CPUs: on the embedded four-contrast data (256 training slices of 4×128×128) it trains in
    about a minute on one core and reaches whole-tumour Dice 0.96 on the real test slices (the TRTR line of the
    generated downstream table in docs/measures.md); on the earlier single-contrast data it matched a default 7× more
    expensive (channels (16, 32, 64, 128), num_res_units 1, 30 epochs, lr 3e-3) to within 0.01 Dice.
    ``benchmarks/downstream_cost.py`` measures it.

    ``precision`` (:data:`PRECISIONS`): ``fp32``, or ``bf16`` to run the training forward pass and loss and inference
    under ``torch.autocast`` with bfloat16 (no gradient scaling is needed for bf16, whose exponent range is fp32's;
    https://pytorch.org/docs/stable/amp.html). ``benchmarks/bf16_dice.py`` measures its effect on Dice.
    """

    network: str = "unet"
    channels: tuple[int, ...] = (8, 16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 1e-2
    loss: str = "dice_ce"
    augment: str = "flip"
    seed: int = 0
    spatial_dims: int | None = None
    roi_size: tuple[int, ...] | None = None
    precision: str = "fp32"

    @classmethod
    def from_params(cls, params: dict[str, Any] | None, where: str = "") -> "SegmenterConfig":
        """Build from YAML ``segmenter:`` params; MetricError naming an unknown field or a value of the wrong type or range.
        A field given as null keeps its default (what :meth:`resolve` decides from the data)."""
        if params is not None and not isinstance(params, dict):
            raise MetricError(f"{where}segmenter: expected a mapping of settings, got {params!r}")
        params = {k: v for k, v in (params or {}).items() if not (v is None and k in _BY_DATA)}
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(params) - known
        if unknown:
            raise MetricError(f"{where}segmenter: unknown field(s) {sorted(unknown)}; expected {sorted(known)}")
        for key in ("channels", "strides", "roi_size"):
            if key in params:
                v = params[key]
                if not isinstance(v, (list, tuple)) or not v or not all(_is_int(x) and x >= 1 for x in v):
                    raise MetricError(f"{where}segmenter.{key} must be a list of positive integers, got {v!r}")
                params[key] = tuple(int(x) for x in v)
        for key, lowest in (("num_res_units", 0), ("epochs", 1), ("batch_size", 1), ("seed", 0)):
            if key in params and not (_is_int(params[key]) and params[key] >= lowest):
                raise MetricError(f"{where}segmenter.{key} must be {'positive' if lowest else 'non-negative'}: expected an integer "
                                  f">= {lowest}, got {params[key]!r}")
        if "lr" in params and not (isinstance(params["lr"], (int, float)) and not isinstance(params["lr"], bool)
                                   and math.isfinite(params["lr"]) and params["lr"] > 0):
            raise MetricError(f"{where}segmenter.lr must be positive: expected a number > 0, got {params['lr']!r}")
        for key, registry in (("network", NETWORKS), ("loss", LOSSES), ("augment", AUGMENTS), ("precision", PRECISIONS)):
            if key in params and (not isinstance(params[key], str) or params[key] not in registry):
                raise MetricError(f"{where}segmenter.{key} {params[key]!r} unknown; expected one of {sorted(registry)}")
        if "spatial_dims" in params and not (_is_int(params["spatial_dims"]) and params["spatial_dims"] in (2, 3)):
            raise MetricError(f"{where}segmenter.spatial_dims must be 2 or 3, got {params['spatial_dims']!r}")
        cfg = cls(**params)
        if len(cfg.strides) != len(cfg.channels) - 1:
            raise MetricError(f"{where}segmenter: strides {cfg.strides} must have one entry fewer than channels {cfg.channels}")
        if cfg.roi_size is not None:
            k = divisor(cfg)
            if any(r % k for r in cfg.roi_size):
                raise MetricError(f"{where}segmenter.roi_size {list(cfg.roi_size)} must be divisible by {k} on every axis (the "
                                  f"{cfg.network}'s downsampling with strides {list(cfg.strides)})")
            if cfg.spatial_dims is not None:
                cfg.resolve(cfg.spatial_dims, where)
        return cfg

    def resolve(self, spatial_dims: int, where: str = "") -> "SegmenterConfig":
        """This configuration for data of ``spatial_dims`` (2 slices, 3 volumes): ``spatial_dims`` set, and the budget
        fields left to the data (``epochs``, ``batch_size``) taken from :data:`DEFAULT_BUDGET`.

        Raises:
            MetricError: the configuration sets another ``spatial_dims`` than the data's, or a ``roi_size`` with another
                number of axes.
        """
        if spatial_dims not in DEFAULT_BUDGET:
            raise MetricError(f"{where}segmenter: data with {spatial_dims} spatial dimensions; expected 2 (slices) or 3 (volumes)")
        kind = {2: "2D slices (N×C×H×W)", 3: "3D volumes (N×C×D×H×W)"}
        if self.spatial_dims is not None and self.spatial_dims != spatial_dims:
            raise MetricError(f"{where}segmenter.spatial_dims={self.spatial_dims} but the data are {kind[spatial_dims]}; leave "
                              f"spatial_dims out (the data decide) or set it to {spatial_dims}")
        if self.roi_size is not None and len(self.roi_size) != spatial_dims:
            raise MetricError(f"{where}segmenter.roi_size {list(self.roi_size)} has {len(self.roi_size)} axes but the data are "
                              f"{kind[spatial_dims]}; expected {spatial_dims} lengths")
        fill = {k: v for k, v in DEFAULT_BUDGET[spatial_dims].items() if getattr(self, k) is None}
        return replace(self, spatial_dims=spatial_dims, **fill) if fill or self.spatial_dims is None else self


#: The fields left to the data when None (:meth:`SegmenterConfig.resolve`).
_BY_DATA = ("epochs", "batch_size", "spatial_dims", "roi_size")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class Segmenter:
    """A trained segmenter: ``predict`` returns label maps N×1×H×W (N×1×D×H×W; int64) for images N×C×H×W (N×C×D×H×W)
    of the ``in_channels`` contrasts it was trained on (``contrasts``: their names, when known). ``config`` is the
    resolved configuration that trained it (:meth:`SegmenterConfig.resolve`)."""

    net: torch.nn.Module
    n_classes: int
    config: SegmenterConfig
    key: str
    device: torch.device
    history: dict[str, Any] = field(default_factory=dict)
    in_channels: int | None = None  # None: read from the network's first convolution
    contrasts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.in_channels is None:
            first = next((m for m in self.net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))), None)
            self.in_channels = int(first.in_channels) if first is not None else None

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Argmax labels N×1×H×W (N×1×D×H×W; int64) for ``images`` N×C×H×W (N×C×D×H×W) in [0, 1], the channels it was
        trained on; ``batch_size`` images at a time (default 64 slices or 2 volumes). ``images`` may be memory-mapped
        (:mod:`mriq_validate.arrays`): only one batch is read at a time and the mapped pages are released after each.
        ``out``, when given, is an integer tensor N×1×H×W (N×1×D×H×W) that receives the labels and is returned (e.g. a
        mapped uint8 array from :func:`~mriq_validate.arrays.scratch_array`, so that predictions for a large set never
        sit in memory whole).

        Sizes the network cannot take are zero-padded to a multiple of its downsampling and the prediction cropped back
        (:func:`divisible_pad`). With ``config.roi_size`` set and an image larger than it on some axis, inference runs
        by MONAI ``sliding_window_inference`` (windows of ``roi_size``, overlap 0.25, Gaussian blending;
        https://docs.monai.io/en/stable/inferers.html#sliding-window-inference-function). ``config.precision`` ``bf16``
        runs the network under bfloat16 autocast (:func:`autocast`)."""
        dims = self.config.spatial_dims or images.ndim - 2
        if images.ndim != dims + 2 or dims not in (2, 3) or (self.in_channels is not None and images.shape[1] != self.in_channels):
            named = f" ({', '.join(self.contrasts)})" if self.contrasts else ""
            raise MetricError(f"segmenter trained on {self.in_channels} channel(s){named} got images of shape {tuple(images.shape)}; "
                              f"expected N×{self.in_channels}×{'D×' if dims == 3 else ''}H×W")
        shape = (images.shape[0], 1, *images.shape[2:])
        if out is not None and (tuple(out.shape) != shape or out.dtype.is_floating_point or out.dtype == torch.bool
                                or (out.dtype == torch.uint8 and self.n_classes > 256)):
            raise MetricError(f"segmenter predict: out= {tuple(out.shape)} {out.dtype}; expected an integer tensor {shape} that holds "
                              f"labels 0..{self.n_classes - 1}")
        cfg = self.config.resolve(dims)
        roi = cfg.roi_size
        sliding = roi is not None and any(n > r for n, r in zip(images.shape[2:], roi))
        k = divisor(cfg)
        batch_size = batch_size or (64 if dims == 2 else 2)
        self.net.eval()
        parts = []
        with torch_threads(self.device):
            for rows in arrays.batches(images.shape[0], batch_size):
                x = images[rows].to(self.device, torch.float32)
                with autocast(self.device, cfg.precision):
                    if sliding:
                        from monai.inferers import sliding_window_inference

                        logits = sliding_window_inference(x, roi, batch_size, self.net, overlap=0.25, mode="gaussian")
                    else:
                        padded, crop = divisible_pad(x, k)
                        logits = self.net(padded)[crop]
                labels = logits.argmax(1, keepdim=True).cpu()
                if out is None:
                    parts.append(labels)
                else:
                    out[rows] = labels
        return out if out is not None else torch.cat(parts).long()


def check_labels(masks: torch.Tensor, n_classes: int, where: str = "") -> None:
    """MetricError naming the labels found when ``masks`` hold values outside ``0..n_classes-1``."""
    if not masks.numel():
        return
    step = arrays.rows_per_chunk(masks)  # mapped masks: never resident whole
    extremes = [(int(masks[rows].max()), int(masks[rows].min())) for rows in arrays.batches(masks.shape[0], step)]
    if max(hi for hi, _ in extremes) >= n_classes or min(lo for _, lo in extremes) < 0:
        found = sorted({int(v) for rows in arrays.batches(masks.shape[0], step) for v in masks[rows].unique()})
        outside = [v for v in found if not 0 <= v < n_classes]
        raise MetricError(f"{where}masks hold labels {found}, outside the {n_classes} classes 0..{n_classes - 1} the segmenter is built for "
                          f"(offending labels {outside})")


def _training_batches(images: torch.Tensor, masks: torch.Tensor, perm: torch.Tensor, cfg: SegmenterConfig, g: torch.Generator,
                      device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's batches (images float32, masks int64, on ``device``) in the order of ``perm``: each read from the
    (possibly memory-mapped) full set by index, padded to the network's divisor (:func:`divisible_pad`), augmented with
    ``g``, then moved. On CUDA the batch is pinned and copied asynchronously one batch ahead, so that the next batch is
    read and sent while the GPU runs the current one (https://pytorch.org/docs/stable/notes/cuda.html#use-pinned-memory-buffers).
    Mapped pages are released after each batch (:func:`~mriq_validate.arrays.batches`). The generator ``g`` is drawn in
    the same order as batch after batch, so the result does not depend on the look-ahead."""
    k, cuda = divisor(cfg), device.type == "cuda"

    def send(t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory().to(device, non_blocking=True) if cuda else t.to(device)

    ahead = None
    for rows in arrays.batches(len(perm), cfg.batch_size):
        idx = perm[rows]
        x, y = AUGMENTS[cfg.augment](divisible_pad(images[idx], k)[0], divisible_pad(masks[idx], k)[0], g)
        batch = send(x), send(y)
        if ahead is not None:
            yield ahead
        ahead = batch
    if ahead is not None:
        yield ahead


def train_segmenter(images: torch.Tensor, masks: torch.Tensor, n_classes: int, cfg: SegmenterConfig, device: torch.device,
                    progress: Callable[[str], None] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``cfg.network`` on (images, masks) with seed ``cfg.seed``; deterministic on CPU.

    ``images`` N×C×H×W (or N×C×D×H×W: ``cfg`` resolved for the images' dimensionality, :meth:`SegmenterConfig.resolve`)
    in [0, 1], one input channel per contrast; ``masks`` N×1×H×W (N×1×D×H×W), integer labels. Either may be
    memory-mapped (:mod:`mriq_validate.arrays`): they are read batch by batch and never copied whole
    (:func:`_training_batches`). Sizes the network cannot take are zero-padded (background) to a multiple of its
    downsampling (:func:`divisible_pad`). Runs on ``device`` (nothing is read back but the loss), the forward pass and
    loss at ``cfg.precision`` (:func:`autocast`).
    """
    check_labels(masks, n_classes)
    check_pairs(images, masks, cfg)
    cfg = cfg.resolve(images.ndim - 2)
    with torch.random.fork_rng(devices=[]), torch_threads(device):
        torch.manual_seed(cfg.seed)
        net = NETWORKS[cfg.network](cfg, n_classes, images.shape[1]).to(device)
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
            for x, y in _training_batches(images, masks, perm, cfg, g, device):
                opt.zero_grad(set_to_none=True)
                with autocast(device, cfg.precision):
                    loss = loss_fn(net(x.float()), y.long())
                loss.backward()
                opt.step()
                total += loss.detach().float() * len(x)
            sched.step()
            losses.append(float(total.cpu()) / n)
            if progress and (epoch == 0 or (epoch + 1) % every == 0 or epoch == cfg.epochs - 1):
                rate = (epoch + 1) / (time.perf_counter() - start)
                progress(f"segmenter {cfg.network}: epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.4f} "
                         f"({rate:.2f} epochs/s, {n} {'volumes' if cfg.spatial_dims == 3 else 'slices'}, {device.type})")
        threads = torch.get_num_threads()
    seconds = time.perf_counter() - start
    return net.eval(), {"loss": losses, "seconds": seconds, "epochs_per_s": cfg.epochs / seconds, "n_train": n, "device": device.type,
                        "cpu_threads": threads, "in_channels": int(images.shape[1]), **({"precision": cfg.precision} if cfg.precision != "fp32" else {})}


def _key_fields(cfg: SegmenterConfig) -> dict[str, Any]:
    """The configuration as it enters the cache key, resolved (a configuration that leaves its dimensionality to the
    data is read as 2D here; :func:`segmenter_key` resolves it for its images first), so the budget that trained it
    (``epochs``, ``batch_size``) is in the key. ``spatial_dims`` is left out when 2 and ``roi_size`` when unset, so
    that the keys of 2D segmenters cached before 3D support existed stay valid; ``precision`` is left out when ``fp32``
    for the same reason."""
    fields = asdict(cfg.resolve(cfg.spatial_dims or 2))
    if fields["spatial_dims"] == 2:
        del fields["spatial_dims"]
    if fields["roi_size"] is None:
        del fields["roi_size"]
    if fields["precision"] == "fp32":
        del fields["precision"]
    return fields


def segmenter_key(images: torch.Tensor, masks: torch.Tensor, n_classes: int, cfg: SegmenterConfig, device_type: str = "cpu",
                  contrasts: tuple[str, ...] = ()) -> str:
    """The content-hash cache key of the segmenter trained on (images, masks) with ``cfg``. Training on another device
    type gives other weights (kernels differ), so a non-CPU device is part of the key. The images' shape (C included)
    is hashed with their content; for C > 1 the contrast names are part of the key too, so that data with other
    contrasts never meets a cached segmenter (left out for C = 1, so that keys cached before multi-contrast support
    stay valid; one channel of other content hashes apart anyway)."""
    cfg = cfg.resolve(images.ndim - 2)
    extra: tuple[Any, ...] = () if device_type == "cpu" else (device_type,)
    if images.shape[1] > 1 and contrasts:
        extra += ({"contrasts": list(contrasts)},)
    return content_hash(TRAINER_VERSION, _key_fields(cfg), n_classes, images, masks, *extra)


def check_pairs(images: torch.Tensor, masks: torch.Tensor, cfg: SegmenterConfig, contrasts: tuple[str, ...] = ()) -> None:
    """MetricError unless ``images`` are N×C×(D×)H×W and ``masks`` N×1×(D×)H×W for ``cfg.spatial_dims``, with one
    contrast name per channel when names are given."""
    im, ms = tuple(images.shape), tuple(masks.shape)
    dims = cfg.spatial_dims or (len(im) - 2 if len(im) in (4, 5) else 2)
    spatial = "D×H×W" if dims == 3 else "H×W"
    if len(im) != dims + 2 or im[1] < 1 or ms != (im[0], 1, *im[2:]):
        raise MetricError(f"segmenter with spatial_dims={dims} needs images N×C×{spatial} (one channel per contrast) and "
                          f"masks N×1×{spatial}, got {im} and {ms}")
    if contrasts and len(contrasts) != im[1]:
        raise MetricError(f"segmenter: contrasts {list(contrasts)} but images with {im[1]} channel(s) {im}; expected one channel per contrast")


def get_segmenter(images: torch.Tensor, masks: torch.Tensor, n_classes: int, cfg: SegmenterConfig, device: torch.device,
                  cache: DiskCache, progress: Callable[[str], None] | None = None, *, contrasts: tuple[str, ...] = ()) -> Segmenter:
    """The segmenter trained on (images N×C×H×W, masks N×1×H×W, or volumes N×C×D×H×W and N×1×D×H×W), loaded from the
    cache when the same data, config, seed and contrasts (the channel names, in order) were seen. ``cfg`` is resolved
    for the images' dimensionality (:meth:`SegmenterConfig.resolve`); the returned segmenter holds the resolved one."""
    if images.ndim in (4, 5):
        cfg = cfg.resolve(images.ndim - 2)  # an explicit spatial_dims against the data is named first
    check_pairs(images, masks, cfg, contrasts)
    key = segmenter_key(images, masks, n_classes, cfg, device.type, contrasts)

    def create() -> dict[str, Any]:
        net, history = train_segmenter(images, masks, n_classes, cfg, device, progress)
        return {"state": {k: v.cpu() for k, v in net.state_dict().items()}, "history": history}

    def save(obj: dict[str, Any], path: Path) -> None:
        torch.save(obj, path)

    def load(path: Path) -> dict[str, Any]:
        return torch.load(path, map_location="cpu", weights_only=True)

    blob = cache.get_or_create("segmenters", key, ".pt", create, save, load)
    net = NETWORKS[cfg.network](cfg, n_classes, images.shape[1])
    net.load_state_dict(blob["state"])
    return Segmenter(net.to(device).eval(), n_classes, cfg, key, device, blob["history"], int(images.shape[1]), tuple(contrasts))
