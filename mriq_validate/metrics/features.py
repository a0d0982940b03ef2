"""Feature extractors for distribution metrics, all offline, with an on-disk cache keyed by content hashes.

* ``segmenter``: task-aware features, the global-average-pooled activations of every encoder level of the
  downstream segmenter trained on real data (MONAI UNet), concatenated (16+32+64+128 = 240 dims by default).
* ``radiomic``: handcrafted first-order, GLCM and gradient features (:mod:`.radiomics`), for an FRD-style distance.
* ``pixels``: a pose-normalised 32×32 thumbnail (:func:`.memorisation.image_embedding`), for copy detection
  (``copy_fraction`` adds the twice-resolution plain image for its flip- and shift-invariant distance).
* ``torchscript`` (``path``) or ``module`` (``module: pkg.mod:NAME``): any user network, e.g. RadImageNet or
  Inception weights the user has; grey slices are repeated to ``channels`` and resized to ``size`` as configured.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..cache import content_hash
from ..errors import MetricError, MissingFileError

if TYPE_CHECKING:
    from ..session import RunContext

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
                       batch_size: int = 64) -> np.ndarray:
    """Concatenated global-average-pooled outputs of ``blocks`` while ``net`` runs on ``images``."""
    outs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o.flatten(2).mean(-1))) for b in blocks]
    feats = []
    try:
        net.eval()
        for i in range(0, images.shape[0], batch_size):
            outs.clear()
            net(images[i : i + batch_size].to(device, torch.float32))
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


def _load_user_network(params: dict[str, Any], device: torch.device) -> tuple[torch.nn.Module, str]:
    if params.get("path"):
        path = Path(params["path"])
        if not path.is_file():
            raise MissingFileError(f"feature extractor file {path} does not exist; supply the TorchScript file by path "
                                   "(features: {extractor: torchscript, path: ...}); nothing is downloaded")
        try:
            return torch.jit.load(str(path), map_location=device).eval(), content_hash(path.read_bytes())
        except Exception as exc:
            raise MetricError(f"feature extractor {path}: not a loadable TorchScript file ({type(exc).__name__}: {exc})") from None
    spec = params.get("module")
    if not spec or ":" not in spec:
        raise MetricError("features: extractor 'module' needs `module: package.module:NAME` (a factory returning an nn.Module)")
    mod, name = spec.rsplit(":", 1)
    try:
        factory = getattr(importlib.import_module(mod), name)
        net = factory()
    except Exception as exc:
        raise MetricError(f"features: module {spec}: {type(exc).__name__}: {exc}") from None
    return net.to(device).eval(), content_hash(spec, [v.cpu() for v in net.state_dict().values()])


def make_extractor(ctx: "RunContext", params: dict[str, Any]) -> Extractor:
    """The extractor described by a metric's ``features:`` params (``extractor`` plus its options)."""
    from ..downstream import SegmenterConfig

    params = dict(params or {})
    kind = params.pop("extractor", "segmenter")
    if kind == "segmenter":
        cfg = SegmenterConfig.from_params(params.pop("segmenter", None), "features: ")
        _no_more(params, kind)
        seg = ctx.segmenter(cfg)
        blocks = unet_encoder_blocks(seg.net)
        return Extractor(kind, lambda x, m: pooled_activations(seg.net, blocks, x, ctx.device), seg.key,
                         {"extractor": kind, "segmenter_key": seg.key, "pooling": "global average of every encoder level"})
    if kind == "radiomic":
        from .radiomics import radiomic_features

        masked = bool(params.pop("masked", False))
        _no_more(params, kind)
        return Extractor(kind, lambda x, m: radiomic_features(x, m if masked else None), content_hash(FEATURES_VERSION, "radiomic", masked),
                         {"extractor": kind, "masked": masked, "features": "first-order + GLCM + gradient (radiomics.py)"})
    if kind == "pixels":
        from .memorisation import image_embedding

        size = int(params.pop("size", 32))
        _no_more(params, kind)
        return Extractor(kind, lambda x, m: np.asarray(image_embedding(x, size=size), dtype=np.float64),
                         content_hash(FEATURES_VERSION, "pixels", size), {"extractor": kind, "size": size, "pose": "normalised"})
    if kind in ("torchscript", "module"):
        channels, size = int(params.pop("channels", 1)), params.pop("size", None)
        value_range = params.pop("range", "0,1")
        net, ident = _load_user_network(params, ctx.device)
        params.pop("path", None), params.pop("module", None)
        _no_more(params, kind)

        @torch.no_grad()
        def run(x: torch.Tensor, m: torch.Tensor | None) -> np.ndarray:
            out = []
            for i in range(0, x.shape[0], 32):
                b = x[i : i + 32].to(ctx.device, torch.float32)
                if size:
                    b = torch.nn.functional.interpolate(b, size=(int(size), int(size)), mode="bilinear", align_corners=False)
                if value_range == "-1,1":
                    b = b * 2 - 1
                out.append(net(b.repeat(1, channels, 1, 1)).flatten(1).cpu())
            return torch.cat(out).double().numpy()

        return Extractor(kind, run, ident, {"extractor": kind, "channels": f"grey repeated to {channels}", "resize": size or "none",
                                            "range": value_range, "weights_sha256_16": ident})
    raise MetricError(f"features: unknown extractor {kind!r}; expected one of segmenter, radiomic, pixels, torchscript, module")


def _no_more(params: dict[str, Any], kind: str) -> None:
    if params:
        raise MetricError(f"features: extractor {kind!r} does not take {sorted(params)}")


def features(ctx: "RunContext", extractor: Extractor, images: torch.Tensor, masks: torch.Tensor | None) -> np.ndarray:
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
