"""Feature extractors for distribution metrics, all offline, with an on-disk cache keyed by content hashes.

* ``segmenter``: task-aware features, the global-average-pooled activations of every encoder level of the
  downstream segmenter trained on real data (MONAI UNet), concatenated (184 dims for the default segmenter). Joint over
  the contrasts: the segmenter takes all C contrast channels as its input channels, so its encoder sees every contrast
  at once (as the BraTS and nnU-Net segmenters do), and the features describe the multi-contrast slice. On volumes
  the segmenter is the 3D UNet trained on the real volumes and the pooling is over D×H×W. ``precision: bf16`` runs
  the encoder under bfloat16 autocast (features still float64; default ``fp32``).
* ``radiomic``: handcrafted first-order, GLCM and gradient features (:mod:`.functional.radiomics`), for an FRD-style
  distance; with C contrasts, the 22 features of each contrast, concatenated in contrast order (22·C dims). On
  volumes the features are 3D (computed on the whole volume: GLCM over the 13 directions of the 26-neighbourhood, 3D
  gradient), not per slice.
* ``pixels``: a pose-normalised 32×32 thumbnail (:func:`.functional.memorisation.image_embedding`), for copy detection
  (``copy_fraction`` adds the twice-resolution plain image for its flip- and shift-invariant distance); with C
  contrasts, the thumbnails of each contrast concatenated and divided by √C (unit norm kept).
* ``torchscript`` (``path``) or ``module`` (``module: pkg.mod:NAME``): any user network, e.g. RadImageNet or
  Inception weights the user has; each grey contrast slice is repeated to ``channels`` and resized to ``size`` as
  configured, and the features of the C contrasts are concatenated in contrast order. On volumes the network gets
  N×channels×D×H×W (a 3D network such as a MedicalNet ResNet3D the user exported; ``size`` resizes every axis).

How the contrasts were combined is recorded in every extractor's ``config`` (``contrasts``).

A metric's ``features:`` block is checked when the metric is created (:func:`check_features`, at suite load), and
built into an extractor when it is evaluated (:func:`make_extractor`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..contract import MeasureContext
from ..cache import content_hash
from ..errors import MetricError, MissingFileError
from .. import arrays
from ..segmenter import SegmenterConfig
from ..segnets import PRECISIONS, autocast, divisible_pad, divisor


FEATURES_VERSION = "features/1"


def unet_encoder_blocks(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The encoder blocks of a MONAI ``UNet``, shallow to deep (the bottom block last)."""
    seq = getattr(net, "model", None)
    if not isinstance(seq, torch.nn.Sequential):
        raise MetricError(f"segmenter features need a MONAI UNet, got {type(net).__name__}")
    blocks = []
    while True:
        blocks.append(seq[0])
        inner = getattr(seq[1], "submodule", None)
        if isinstance(inner, torch.nn.Sequential):
            seq = inner
        else:
            blocks.append(inner if inner is not None else seq[1])
            return blocks


@torch.no_grad()
def pooled_activations(net: torch.nn.Module, blocks: list[torch.nn.Module], images: torch.Tensor, device: torch.device,
                       batch_size: int | None = None, divisible_by: int = 1, precision: str = "fp32") -> np.ndarray:
    """Concatenated global-average-pooled outputs of ``blocks`` (over every spatial axis: H×W, or D×H×W for volumes)
    while ``net`` runs on ``images``, ``batch_size`` at a time (default 64 slices or 4 volumes). Images whose sizes are
    not multiples of ``divisible_by`` are zero-padded to them first (:func:`~mriq_validate.segnets.divisible_pad`, as
    the segmenter predicts), so the padding's background enters the averages. ``precision`` ``bf16`` runs the network
    under bfloat16 autocast (:func:`~mriq_validate.segnets.autocast`); the averages are taken in float32 and returned
    as float64 either way. ``images`` may be memory-mapped: their pages are released after each batch."""
    batch_size = batch_size or (64 if images.ndim == 4 else 4)
    outs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o.flatten(2).float().mean(-1))) for b in blocks]
    feats = []
    try:
        net.eval()
        for rows in arrays.batches(images.shape[0], batch_size):
            outs.clear()
            with autocast(device, precision):
                net(divisible_pad(images[rows].to(device, torch.float32), divisible_by)[0])
            feats.append(torch.cat(outs, dim=1).cpu())
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(feats).double().numpy()


class Extractor:
    """A named feature extractor; ``identity`` (with ``config``) keys the cache."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor, torch.Tensor | None], np.ndarray], identity: str, config: dict[str, Any]) -> None:
        self.name, self.fn, self.identity, self.config = name, fn, identity, config

    def __call__(self, images: torch.Tensor, masks: torch.Tensor | None) -> np.ndarray:
        return self.fn(images, masks)


#: Each extractor's options and their defaults (``path`` and ``module`` name the user network; one of them is required).
EXTRACTOR_OPTIONS: dict[str, dict[str, Any]] = {
    "segmenter": {"segmenter": None, "precision": "fp32"},
    "radiomic": {"masked": False},
    "pixels": {"size": 32},
    "torchscript": {"path": None, "channels": 1, "size": None, "range": "0,1"},
    "module": {"module": None, "channels": 1, "size": None, "range": "0,1"},
}
VALUE_RANGES = ("0,1", "-1,1")


def check_features(params: Any, where: str = "features: ") -> dict[str, Any]:
    """A metric's ``features:`` block checked without loading anything: a mapping with a known ``extractor`` (default
    ``segmenter``) and only that extractor's options, of the right types; a TorchScript file must exist.

    Returns:
        The options with their defaults filled in, ``extractor`` included (``segmenter`` as a :class:`SegmenterConfig`).

    Raises:
        MetricError (MissingFileError for a missing file) naming ``where``, the option and the value.
    """
    if params is not None and not isinstance(params, dict):
        raise MetricError(f"{where}expected a mapping such as {{extractor: pixels}}, got {params!r}")
    params = dict(params or {})
    kind = params.pop("extractor", "segmenter")
    if kind not in EXTRACTOR_OPTIONS:
        raise MetricError(f"{where}unknown extractor {kind!r}; expected one of {', '.join(EXTRACTOR_OPTIONS)}")
    extra = sorted(set(params) - set(EXTRACTOR_OPTIONS[kind]))
    if extra:
        raise MetricError(f"{where}extractor {kind!r} does not take {extra}; it takes {sorted(EXTRACTOR_OPTIONS[kind]) or 'nothing'}")
    opts = {"extractor": kind, **EXTRACTOR_OPTIONS[kind], **params}

    def positive_int(key: str, lowest: int) -> None:
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < lowest:
            raise MetricError(f"{where}{kind} option {key} must be an integer >= {lowest}, got {v!r}")

    if kind == "segmenter":
        opts["segmenter"] = SegmenterConfig.from_params(opts["segmenter"], where)
        if not isinstance(opts["precision"], str) or opts["precision"] not in PRECISIONS:
            raise MetricError(f"{where}segmenter option precision {opts['precision']!r} unknown; expected one of {sorted(PRECISIONS)}")
    elif kind == "radiomic" and not isinstance(opts["masked"], bool):
        raise MetricError(f"{where}radiomic option masked must be true or false, got {opts['masked']!r}")
    elif kind == "pixels":
        positive_int("size", 2)
    elif kind in ("torchscript", "module"):
        positive_int("channels", 1)
        if opts["size"] is not None:
            positive_int("size", 1)
        if opts["range"] not in VALUE_RANGES:
            raise MetricError(f"{where}{kind} option range must be one of {list(VALUE_RANGES)}, got {opts['range']!r}")
        if kind == "torchscript":
            if not isinstance(opts["path"], str) or not opts["path"]:
                raise MetricError(f"{where}extractor 'torchscript' needs `path:` naming a TorchScript file, got {opts['path']!r}")
            if not Path(opts["path"]).is_file():
                raise MissingFileError(f"{where}feature extractor file {opts['path']} does not exist; supply the TorchScript file by "
                                       "path (features: {extractor: torchscript, path: ...}); nothing is downloaded")
        elif not isinstance(opts["module"], str) or ":" not in opts["module"]:
            raise MetricError(f"{where}extractor 'module' needs `module: package.module:NAME` (a factory returning an nn.Module), "
                              f"got {opts['module']!r}")
    return opts


def _load_user_network(opts: dict[str, Any], device: torch.device) -> tuple[torch.nn.Module, str]:
    if opts["extractor"] == "torchscript":
        path = Path(opts["path"])
        if not path.is_file():
            raise MissingFileError(f"feature extractor file {path} does not exist; supply the TorchScript file by path "
                                   "(features: {extractor: torchscript, path: ...}); nothing is downloaded")
        try:
            return torch.jit.load(str(path), map_location=device).eval(), content_hash(path.read_bytes())
        except Exception as exc:
            raise MetricError(f"feature extractor {path}: not a loadable TorchScript file ({type(exc).__name__}: {exc})") from None
    spec = opts["module"]
    mod, name = spec.rsplit(":", 1)
    try:
        factory = getattr(importlib.import_module(mod), name)
        net = factory()
    except Exception as exc:
        raise MetricError(f"features: module {spec}: {type(exc).__name__}: {exc}") from None
    return net.to(device).eval(), content_hash(spec, [v.cpu() for v in net.state_dict().values()])


def each_contrast(fn: Callable[[torch.Tensor, torch.Tensor | None], np.ndarray], scale: bool = False
                  ) -> Callable[[torch.Tensor, torch.Tensor | None], np.ndarray]:
    """``fn`` of grey images (N×1×H×W) applied to each contrast channel of N×C×H×W images (with the one mask), the
    features concatenated in channel order; ``scale`` divides by √C (unit-norm features stay unit norm)."""

    def run(x: torch.Tensor, m: torch.Tensor | None) -> np.ndarray:
        c = x.shape[1]
        if c == 1:
            return np.asarray(fn(x, m), dtype=np.float64)
        out = np.concatenate([np.asarray(fn(x[:, k:k + 1], m), dtype=np.float64) for k in range(c)], axis=1)
        return out / np.sqrt(c) if scale else out

    return run


JOINT = "joint: the network's input channels are the C contrasts, its encoder sees them together"
EACH = "each contrast alone, features concatenated in contrast order"


def make_extractor(ctx: MeasureContext, params: dict[str, Any] | None, where: str = "features: ") -> Extractor:
    """The extractor described by a metric's ``features:`` params (``extractor`` plus its options, see
    :func:`check_features`), for the data's dimensionality (slices or volumes); errors name ``where``."""
    opts = check_features(params, where)
    kind = opts["extractor"]
    if kind == "segmenter":
        try:  # the segmenter trained on the real training split, 2D or 3D as the data (SegmenterConfig.resolve)
            seg = ctx.segmenter(opts["segmenter"])
        except MetricError as exc:
            raise MetricError(f"{where}{exc}") from None
        blocks, k, precision = unet_encoder_blocks(seg.net), divisor(seg.config), opts["precision"]
        # fp32 keeps the identity (and so the cached features) it had before precision existed
        ident, noted = (seg.key, {}) if precision == "fp32" else (content_hash(seg.key, precision), {"precision": precision})
        return Extractor(kind, lambda x, m: pooled_activations(seg.net, blocks, x, ctx.device, divisible_by=k, precision=precision), ident,
                         {"extractor": kind, "segmenter_key": seg.key, "spatial_dims": seg.config.spatial_dims, **noted,
                          "pooling": "global average of every encoder level over every spatial axis (H×W, D×H×W)",
                          "contrasts": JOINT, "in_channels": seg.in_channels, **({"contrast_names": list(seg.contrasts)} if seg.contrasts else {})})
    if kind == "radiomic":
        from .functional.radiomics import radiomic_features

        masked = opts["masked"]
        return Extractor(kind, each_contrast(lambda x, m: radiomic_features(x, m if masked else None)), content_hash(FEATURES_VERSION, "radiomic", masked),
                         {"extractor": kind, "masked": masked, "features": "first-order + GLCM + gradient (functional/radiomics.py)",
                          "contrasts": EACH, "volumes": RADIOMIC_3D})
    if kind == "pixels":
        from .functional.memorisation import image_embedding

        size = opts["size"]
        return Extractor(kind, each_contrast(lambda x, m: image_embedding(x, size=size), scale=True),
                         content_hash(FEATURES_VERSION, "pixels", size), {"extractor": kind, "size": size, "pose": "normalised",
                                                                          "contrasts": EACH + ", divided by sqrt(C)"})
    channels, size, value_range = opts["channels"], opts["size"], opts["range"]
    net, ident = _load_user_network(opts, ctx.device)
    where = f"feature extractor {opts['path'] if kind == 'torchscript' else opts['module']}"

    @torch.no_grad()
    def run(x: torch.Tensor, m: torch.Tensor | None) -> np.ndarray:
        out, step = [], 32 if x.ndim == 4 else 2
        for i in range(0, x.shape[0], step):
            b = x[i : i + step].to(ctx.device, torch.float32)
            if size:
                b = torch.nn.functional.interpolate(b, size=(int(size),) * (b.ndim - 2), mode="bilinear" if b.ndim == 4 else "trilinear",
                                                    align_corners=False)
            if value_range == "-1,1":
                b = b * 2 - 1
            out.append(_user_features(net, b.repeat(1, channels, *(1,) * (b.ndim - 2)), where))
        return torch.cat(out).double().numpy()

    return Extractor(kind, each_contrast(run), ident, {"extractor": kind, "channels": f"grey repeated to {channels}", "resize": size or "none",
                                                       "range": value_range, "weights_sha256_16": ident, "contrasts": EACH,
                                                       "volumes": "N×channels×D×H×W (a 3D network), resized on every axis"})


#: How the radiomic extractor treats volumes (recorded in its config and in FRD's).
RADIOMIC_3D = ("3D on the whole volume (not per slice): first order over its voxels, GLCM over the 13 directions of the "
               "26-neighbourhood (IBSI 3D, averaged), 3D central-difference gradient; in voxel units, whatever the spacing")


def _user_features(net: torch.nn.Module, batch: torch.Tensor, where: str) -> torch.Tensor:
    """``net(batch)`` flattened to one row per item (N×d, on the CPU); MetricError naming the input shape, what the
    network is expected to take, and its own error, when it fails or returns another number of rows."""
    layout = "N×C×D×H×W (volumes: a 3D network)" if batch.ndim == 5 else "N×C×H×W (slices: a 2D network)"
    try:
        out = net(batch)
    except Exception as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise MetricError(f"{where} failed on input of shape {tuple(batch.shape)}; the data need a network taking {layout} "
                          f"({type(exc).__name__}: {first[:300]})") from None
    if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != batch.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise MetricError(f"{where} returned {got} for input of shape {tuple(batch.shape)}; expected a tensor with one row per "
                          f"item ({batch.shape[0]}×...)")
    return out.flatten(1).cpu()


def features(ctx: MeasureContext, extractor: Extractor, images: torch.Tensor, masks: torch.Tensor | None) -> np.ndarray:
    """Features of ``images`` by ``extractor``, cached on disk by content hash of extractor and images."""
    key = content_hash(FEATURES_VERSION, extractor.identity, images, masks if masks is not None else b"")
    out = ctx.cache.get_or_create("features", key, ".npy", lambda: np.asarray(extractor(images, masks), dtype=np.float64),
                                  _save_npy, np.load)
    if out.ndim != 2 or out.shape[0] != images.shape[0]:
        raise MetricError(f"feature extractor {extractor.name} returned shape {out.shape}; expected ({images.shape[0]}, d)")
    if not np.all(np.isfinite(out)):
        raise MetricError(f"feature extractor {extractor.name} returned non-finite features")
    return out


def _save_npy(value: np.ndarray, path: Path) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would append ".npy" to a temporary name
        np.save(fh, value)
