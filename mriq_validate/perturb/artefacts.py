"""Global acquisition artefacts: blur, bias field, k-space spikes, Gibbs ringing, ghosting.

MONAI's transforms are used where they exist (GaussianSmooth, RandBiasField, KSpaceSpikeNoise, GibbsNoise);
ghosting is written here as a k-space line modulation. Every random draw comes from the perturbation's ``rng``, once
per image: the same field, spike position or ghosting pattern acts on every contrast channel of the image.

Volumes (N×C×D×H×W) are one 3D acquisition each: the draws are made once per volume, the field is a 3D polynomial,
and the k-space artefacts (spike, Gibbs, ghosting) act in 3D k-space (MONAI's transforms are n-dimensional when given
C×D×H×W), not slice by slice. Lengths are in pixels (voxels), isotropic in 3D.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Param, PerturbContext, channel_stack, per_channel, register
from .noise import monai_seed, plain, random_direction


@register(
    "gaussian_blur",
    params=(Param("sigma", 1.0, 0.0, 8.0, identity=0.0, doc="Gaussian kernel std in pixels (voxels, isotropic, in 3D)"),),
    scope="global",
    strength="sigma",
)
def gaussian_blur(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-image Gaussian smoothing (MONAI GaussianSmooth): a loss of resolution, like a wider point-spread
    function. sigma is in pixels, in voxels along every axis of a volume (isotropic 3D kernel). Valid sigma: 0 to 8 px."""
    from monai.transforms import GaussianSmooth

    return channel_stack(plain(GaussianSmooth(sigma=sigma)(per_channel(images).float()), images), images), masks


@register(
    "bias_field",
    params=(
        Param("coeff", 0.3, 0.0, 1.0, identity=0.0, doc="magnitude of the Legendre coefficients of the log field, drawn from U(-coeff, coeff)"),
        Param("degree", 3, 1, 5, doc="polynomial degree of the field", integer=True),
    ),
    scope="global",
    strength="coeff",
)
def bias_field(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, coeff: float, degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth multiplicative intensity inhomogeneity (receive-coil sensitivity): I' = I·b/exp(mean log b), with
    log b a 2D (3D for volumes) Legendre polynomial of ``degree`` whose coefficients are U(-coeff, coeff)
    (Van Leemput et al. 1999; MONAI RandBiasField, one field per slice or volume, shared by its contrasts as the
    receive coil is). The field's global gain is divided out so only the inhomogeneity remains. Valid coeff: 0 to 1
    (0 = identity)."""
    from monai.transforms import RandBiasField

    t = RandBiasField(degree=degree, coeff_range=(-coeff, coeff), prob=1.0, dtype=np.float64)
    t.set_random_state(seed=monai_seed(rng))
    ones = np.ones((1, *images.shape[2:]), np.float64)
    fields = []
    for _ in range(images.shape[0]):
        b = np.asarray(plain(t(ones), torch.zeros((), dtype=torch.float64)))[0]
        fields.append(b / np.exp(np.log(b).mean()))
    out = images.double() * torch.from_numpy(np.stack(fields))[:, None]  # one field per image, on every contrast
    return out.to(images.dtype), masks


@register(
    "kspace_spike",
    params=(
        Param("intensity", 0.5, 0.0, 2.0, identity=0.0,
              doc="spike magnitude as a multiple of the k-space centre |k(0)|: herringbone stripes of amplitude ≈ intensity·mean(I)"),
    ),
    scope="global",
    strength="intensity",
)
def kspace_spike(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, intensity: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Spike (herringbone) artefact: one corrupted k-space sample (e.g. an RF discharge) at a random location
    between 15 % and 85 % of the k-space half-width, per image. Its magnitude is raised by intensity·|k(0)|
    (phase kept), which adds a plane wave of amplitude ≈ intensity·mean(I) across the whole image (Graves &
    Mitchell 2013; MONAI KSpaceSpikeNoise with the log-intensity set accordingly). Every contrast of a slice gets the
    spike at the same position, relative to its own |k(0)|. A volume gets one spike in its 3D k-space (a random
    direction on the sphere, radius as above relative to the smallest half-width). Valid intensity: 0 to 2."""
    from monai.transforms import Fourier, KSpaceSpikeNoise

    x = per_channel(images).double()  # (N·C)×H×W (or ×D×H×W): image i, contrast c at i·C + c
    c_n = images.shape[1]
    shape = np.array(x.shape[1:])
    k_abs = Fourier.shift_fourier(x, len(shape)).abs().numpy()
    centre = shape // 2
    locs: list[tuple[int, ...]] = []
    values: list[float] = []
    for i in range(images.shape[0]):
        r = rng.uniform(0.15, 0.85) * shape.min() / 2
        spike = np.round(centre + r * random_direction(rng, len(shape))).astype(int)
        at = tuple(int(v) for v in np.clip(spike, 0, shape - 1))
        for j in range(i * c_n, (i + 1) * c_n):  # the image's spike, on each contrast relative to its own |k(0)|
            locs.append((j, *at))
            values.append(float(np.log(k_abs[(j, *at)] + intensity * k_abs[(j, *centre)] + 1e-10)))
    out = KSpaceSpikeNoise(loc=locs, k_intensity=values)(x)
    return channel_stack(plain(out, images), images), masks


@register(
    "gibbs",
    params=(Param("alpha", 0.5, 0.0, 0.9, identity=0.0,
                  doc="k-space truncation: keep radius (1-alpha)·max(H,W)·√2/2 (max(D,H,W) in 3D); visible above ≈0.3"),),
    scope="global",
    strength="alpha",
)
def gibbs(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gibbs ringing (truncation artefact): k-space outside a centred disk of radius (1-alpha)·max(H,W)·√2/2 is
    zeroed, which rings at sharp edges and blurs (MONAI GibbsNoise). Below alpha ≈ 0.29 only the k-space corners
    are cut, so the change is slight. A volume is truncated in 3D k-space: outside the ball of radius
    (1-alpha)·max(D,H,W)·√2/2 (MONAI's mask in n-D). Deterministic. Valid alpha: 0 to 0.9 (1 would remove everything)."""
    from monai.transforms import GibbsNoise

    return channel_stack(plain(GibbsNoise(alpha=alpha)(per_channel(images).float()), images), images), masks


@register(
    "ghosting",
    params=(
        Param("intensity", 0.5, 0.0, 1.0, identity=0.0, doc="attenuation of every modulated phase-encode line; each ghost has amplitude intensity/(num_ghosts+1)"),
        Param("num_ghosts", 4, 1, 8, doc="ghost copies; they are spaced H/(num_ghosts+1) apart along the phase-encode axis", integer=True),
    ),
    scope="global",
    strength="intensity",
)
def ghosting(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, intensity: float, num_ghosts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Motion / periodic-signal ghosting: every P-th phase-encode line of k-space (P = num_ghosts + 1, random
    offset) is scaled by (1 - intensity), as when the object moves periodically between line acquisitions.
    By the convolution theorem this adds P - 1 shifted copies of the image, spaced H/P apart along the
    phase-encode axis (rows or columns, drawn per image), each of amplitude intensity/P, and scales the
    original by 1 - intensity/P. The centre line (k = 0) is never modulated, so the mean brightness is kept.
    A volume is modulated in 3D k-space: every P-th plane across a phase-encode axis drawn from D, H, W (a 3D
    acquisition may phase-encode along any of them), so the ghosts shift along that axis.
    The magnitude of the complex image is returned (TorchIO RandomGhosting in spirit). Valid intensity: 0 to 1
    (0 = identity)."""
    x = images.double()
    spatial = x.shape[2:]
    period = num_ghosts + 1
    gain = torch.ones((x.shape[0], *spatial), dtype=torch.float64)
    for i in range(x.shape[0]):
        axis = int(rng.integers(len(spatial)))  # 2D: 0 phase-encode along rows (ghosts shift vertically), 1 columns
        offset = int(rng.integers(period))
        lines = torch.zeros(spatial[axis], dtype=torch.bool)
        lines[offset::period] = True
        lines[0] = False  # keep the k-space centre line (TorchIO's ``restore``) so overall brightness is preserved
        across = [1] * len(spatial)
        across[axis] = spatial[axis]
        gain[i] = torch.where(lines.reshape(across), 1.0 - intensity, 1.0).expand(spatial)
    dims = tuple(range(2, x.ndim))  # one line pattern per image, on every contrast
    out = torch.fft.ifftn(torch.fft.fftn(x, dim=dims) * gain[:, None], dim=dims).abs()
    return out.to(images.dtype), masks
