"""The builtin stand-in models (``--mriq-model builtin:NAME``): models with known behaviour on the reference data, this
tool's own code (they run in-process): ``real`` returns held-out real images for the requested masks (fit for
release), the others break one property on purpose (copies, noise, blur, collapse, an erased or blurred lesion)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .arrays import batches, gather
from .data.core import ReferenceData
from .errors import ModelError


def _mask_key(mask: torch.Tensor) -> bytes:
    """A 16-byte digest of a mask's labels (the table of a 16k-slice cohort holds 16k of these, not 16k masks)."""
    return hashlib.blake2b(np.ascontiguousarray(mask.to(torch.uint8).numpy()), digest_size=16).digest()


class RealLookup:
    """``builtin:real``: the real images of the reference data (every contrast) for the requested masks (fit for release)."""

    def __init__(self, data: ReferenceData) -> None:
        self.data = data
        self.table: dict[bytes, torch.Tensor] = {}
        for split in (data.train, data.test):
            for sl in batches(len(split), 256):  # mapped splits: the pages read are given back batch by batch
                for i in range(sl.start, sl.stop):
                    self.table.setdefault(_mask_key(split.masks[i]), split.images[i])

    def generate(self, masks: torch.Tensor, *, seed: int) -> torch.Tensor:
        out = []
        for i, m in enumerate(masks):
            img = self.table.get(_mask_key(m))
            if img is None:
                raise ModelError(f"builtin:real holds real images only for the reference data's masks; mask {i} is not one of them")
            out.append(img)
        return torch.stack(out)

    def sample(self, n: int | None, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        test = self.data.test
        idx = np.random.default_rng(seed).choice(len(test), size=n or len(test), replace=(n or 0) > len(test))
        return gather(test.images, idx), gather(test.masks, idx)


class Transformed(RealLookup):
    """A stand-in: real images passed through a fixed perturbation (its failure mode is known by construction); the
    perturbation treats every contrast alike (:mod:`mriq_validate.perturb.base`)."""

    def __init__(self, data: ReferenceData, perturbation: str, **params: Any) -> None:
        super().__init__(data)
        self.perturbation, self.params = perturbation, params

    def _apply(self, images: torch.Tensor, masks: torch.Tensor, seed: int) -> torch.Tensor:
        from .perturb import PerturbContext, apply

        lesion = tuple(v for v in self.data.labels.values())
        return apply(self.perturbation, images, masks, seed=seed, ctx=PerturbContext(lesion_labels=lesion), **self.params).images

    def generate(self, masks: torch.Tensor, *, seed: int) -> torch.Tensor:
        return self._apply(super().generate(masks, seed=seed), masks, seed)

    def sample(self, n: int | None, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = super().sample(n, seed=seed)
        return self._apply(images, masks, seed), masks


class Memoriser:
    """``builtin:memoriser``: returns training images verbatim, the one whose lesion overlaps each requested mask most."""

    def __init__(self, data: ReferenceData) -> None:
        self.train = data.train

    def generate(self, masks: torch.Tensor, *, seed: int) -> torch.Tensor:
        q = (masks > 0).flatten(1).float()
        t = (self.train.masks > 0).flatten(1).float()
        inter = q @ t.T
        union = q.sum(1, keepdim=True) + t.sum(1)[None] - inter
        return gather(self.train.images, (inter / union.clamp_min(1)).argmax(1))

    def sample(self, n: int | None, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.random.default_rng(seed).choice(len(self.train), size=n or len(self.train), replace=(n or 0) > len(self.train))
        return gather(self.train.images, idx), gather(self.train.masks, idx)


class Collapse(RealLookup):
    """``builtin:collapse``: conditional mode collapse. Every image shares one of two anatomies (training slices or
    volumes with their lesion erased); only the lesion, pasted from the real image (every contrast), follows the mask.
    The paste (dilation, Gaussian weight) is n-D: it works on slices and volumes alike."""

    N_MODES = 2

    def __init__(self, data: ReferenceData) -> None:
        super().__init__(data)
        from .perturb import apply

        picks = np.linspace(0, len(data.train) - 1, self.N_MODES).astype(int)
        self.modes = apply("lesion_erase", data.train.images[picks], data.train.masks[picks], seed=0).images

    def _paste(self, real: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        from scipy import ndimage

        out = self.modes[np.arange(real.shape[0]) % self.N_MODES].clone()
        for i in range(real.shape[0]):
            region = ndimage.binary_dilation(masks[i, 0].numpy() > 0, iterations=2)
            w = torch.from_numpy(ndimage.gaussian_filter(region.astype(np.float32), 1.0))
            out[i] = w * real[i] + (1 - w) * out[i]  # every contrast: one mask, one blend
        return out

    def generate(self, masks: torch.Tensor, *, seed: int) -> torch.Tensor:
        return self._paste(super().generate(masks, seed=seed), masks)

    def sample(self, n: int | None, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = super().sample(n, seed=seed)
        return self._paste(images, masks), masks


@dataclass(frozen=True)
class Builtin:
    """A builtin stand-in: its factory and the behaviour it is known to have."""

    factory: Callable[[ReferenceData], Any]
    behaviour: str  # as for slices; lengths in "px"
    fit_for_release: bool

    def describe(self, spatial_dims: int = 2) -> str:
        """The behaviour for data of ``spatial_dims`` dimensions: lengths in voxels for volumes."""
        return self.behaviour if spatial_dims == 2 else self.behaviour.replace(" px", " voxels")


BUILTIN_MODELS: dict[str, Builtin] = {
    "real": Builtin(RealLookup, "held-out real images for the requested masks", True),
    "memoriser": Builtin(Memoriser, "copies training images (ignores the mask's position beyond the best overlap)", False),
    "noisy": Builtin(lambda d: Transformed(d, "rician", sigma=0.08), "real images with Rician noise sigma=0.08", False),
    "blurry": Builtin(lambda d: Transformed(d, "gaussian_blur", sigma=1.5), "real images blurred (Gaussian sigma=1.5 px)", False),
    "collapse": Builtin(Collapse, "two anatomies for every output; only the lesion follows the mask", False),
    "tumour-eraser": Builtin(lambda d: Transformed(d, "lesion_erase", amount=1.0), "real images with the lesion in-painted away", False),
    "boundary-blur": Builtin(lambda d: Transformed(d, "boundary_blur", sigma=3.0, width=3), "real images with lesion borders blurred (sigma 3 px, band 3 px)", False),
}
