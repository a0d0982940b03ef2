"""Global noise: additive Gaussian, Poisson (photon-count) and MRI magnitude (Rician) noise.

All three act on every pixel (voxel, for N×C×D×H×W volumes) of every image and every contrast, with independent
draws per voxel and per contrast channel (each contrast is its own acquisition) at the same strength; MONAI's
transforms are used where they exist (Gaussian, Rician; n-dimensional, a C×D×H×W array is a volume to them), each
seeded from the perturbation's ``rng`` so the same seed replays the same draw. The draw helpers shared by the
artefacts and the lesion edits live here too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import Param, PerturbContext, channel_stack, per_channel, register


def monai_seed(rng: np.random.Generator) -> int:
    """A seed for MONAI's ``set_random_state`` drawn from ``rng`` (MONAI wants a value below 2**32)."""
    return int(rng.integers(0, 2**32 - 1))


def random_direction(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """A unit vector with uniformly distributed direction in ``ndim`` dimensions (axis order of the array).

    2D: (sin φ, cos φ), φ ~ U(0, 2π) (one draw; the draw slices always got). n-D: a standard normal vector
    normalised, which is uniform on the sphere (Muller 1959, "A note on a method for generating points uniformly on
    n-dimensional spheres")."""
    if ndim == 2:
        phi = rng.uniform(0, 2 * np.pi)
        return np.array([np.sin(phi), np.cos(phi)])
    v = rng.normal(size=ndim)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def plain(x: Any, like: torch.Tensor) -> torch.Tensor:
    """A plain ``torch.Tensor`` (not a MONAI MetaTensor) with the dtype of ``like``."""
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    return torch.as_tensor(x).to(like.dtype)


@register(
    "gaussian",
    params=(Param("sigma", 0.05, 0.0, 0.5, identity=0.0, doc="noise std in image units (images are in [0, 1]); 0 = identity"),),
    scope="global",
    strength="sigma",
)
def gaussian(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive white Gaussian noise I' = I + n, n ~ N(0, sigma^2) i.i.d. per pixel, then clipped to [0, 1]
    (MONAI RandGaussianNoise). Valid sigma: 0 to 0.5."""
    from monai.transforms import RandGaussianNoise

    t = RandGaussianNoise(prob=1.0, mean=0.0, std=sigma, sample_std=False)
    t.set_random_state(seed=monai_seed(rng))
    return channel_stack(plain(t(per_channel(images).float()), images), images), masks


@register(
    "poisson",
    params=(Param("lam", 100.0, 1.0, 1e6, identity=None,
                  doc="photon count at intensity 1; noise variance is I/lam, so the strength grows with 1/lam (no identity)"),),
    scope="global",
    strength="lam",
)
def poisson(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shot (photon-counting) noise I' = Poisson(lam·I) / lam: mean I, variance I/lam, so it is signal dependent
    and dark background stays nearly clean. lam is a photon count (1 to 1e6): *smaller* lam is *stronger* noise
    (the strength is 1/lam); there is no identity value, lam → ∞ tends to the clean image."""
    x = images.detach().double().numpy()
    counts = rng.poisson(lam * np.clip(x, 0.0, None))
    return torch.from_numpy(counts / lam).to(images.dtype), masks


@register(
    "rician",
    params=(Param("sigma", 0.05, 0.0, 0.5, identity=0.0, doc="std of each Gaussian component, image units"),),
    scope="global",
    strength="sigma",
)
def rician(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rician magnitude noise I' = sqrt((I + n1)^2 + n2^2), n1, n2 ~ N(0, sigma^2) (Gudbjartsson & Patz 1995;
    MONAI RandRicianNoise): the noise of a magnitude image reconstructed from complex data. It biases dark
    regions upwards (background mean ≈ sigma·sqrt(pi/2)). Valid sigma: 0 to 0.5."""
    from monai.transforms import RandRicianNoise

    t = RandRicianNoise(prob=1.0, mean=0.0, std=sigma, relative=False, channel_wise=False, sample_std=False)
    t.set_random_state(seed=monai_seed(rng))
    return channel_stack(plain(t(per_channel(images).float()), images), images), masks
