"""Global acquisition artefacts: blur, bias field, k-space spikes, Gibbs ringing, ghosting.

MONAI's transforms are used where they exist (GaussianSmooth, RandBiasField, KSpaceSpikeNoise, GibbsNoise);
ghosting is written here as a k-space line modulation. Every random draw comes from the perturbation's ``rng``, once
per slice: the same field, spike position or ghosting pattern acts on every contrast channel of the slice.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Param, PerturbContext, channel_stack, per_channel, register
from .noise import monai_seed, plain


@register(
    "gaussian_blur",
    params=(Param("sigma", 1.0, 0.0, 8.0, identity=0.0, doc="Gaussian kernel std in pixels"),),
    scope="global",
    strength="sigma",
)
def gaussian_blur(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-image Gaussian smoothing (MONAI GaussianSmooth): a loss of resolution, like a wider point-spread
    function. Valid sigma: 0 to 8 px."""
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
    log b a 2D Legendre polynomial of ``degree`` whose coefficients are U(-coeff, coeff) (Van Leemput et al. 1999;
    MONAI RandBiasField, one field per slice, shared by its contrasts as the receive coil is). The field's global gain is divided out so only the inhomogeneity
    remains. Valid coeff: 0 to 1 (0 = identity)."""
    from monai.transforms import RandBiasField

    t = RandBiasField(degree=degree, coeff_range=(-coeff, coeff), prob=1.0, dtype=np.float64)
    t.set_random_state(seed=monai_seed(rng))
    ones = np.ones((1, *images.shape[-2:]), np.float64)
    fields = []
    for _ in range(images.shape[0]):
        b = np.asarray(plain(t(ones), torch.zeros((), dtype=torch.float64)))[0]
        fields.append(b / np.exp(np.log(b).mean()))
    out = images.double() * torch.from_numpy(np.stack(fields))[:, None]  # one field per slice, on every contrast
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
    spike at the same position, relative to its own |k(0)|. Valid intensity: 0 to 2."""
    from monai.transforms import Fourier, KSpaceSpikeNoise

    x = per_channel(images).double()  # (N·C)×H×W: slice i, contrast c at i·C + c
    c_n = images.shape[1]
    h, w = x.shape[-2:]
    k_abs = Fourier.shift_fourier(x, 2).abs().numpy()
    centre = np.array([h // 2, w // 2])
    locs: list[tuple[int, int, int]] = []
    values: list[float] = []
    for i in range(images.shape[0]):
        r = rng.uniform(0.15, 0.85) * min(h, w) / 2
        phi = rng.uniform(0, 2 * np.pi)
        y, xx = np.clip(np.round(centre + r * np.array([np.sin(phi), np.cos(phi)])).astype(int), 0, [h - 1, w - 1])
        for j in range(i * c_n, (i + 1) * c_n):  # the slice's spike, on each contrast relative to its own |k(0)|
            locs.append((j, int(y), int(xx)))
            values.append(float(np.log(k_abs[j, y, xx] + intensity * k_abs[j, centre[0], centre[1]] + 1e-10)))
    out = KSpaceSpikeNoise(loc=locs, k_intensity=values)(x)
    return channel_stack(plain(out, images), images), masks


@register(
    "gibbs",
    params=(Param("alpha", 0.5, 0.0, 0.9, identity=0.0, doc="k-space truncation: keep radius (1-alpha)·max(H,W)·√2/2; visible above ≈0.3"),),
    scope="global",
    strength="alpha",
)
def gibbs(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, ctx: PerturbContext, *, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gibbs ringing (truncation artefact): k-space outside a centred disk of radius (1-alpha)·max(H,W)·√2/2 is
    zeroed, which rings at sharp edges and blurs (MONAI GibbsNoise). Below alpha ≈ 0.29 only the k-space corners
    are cut, so the change is slight. Deterministic. Valid alpha: 0 to 0.9 (1 would remove everything)."""
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
    The magnitude of the complex image is returned (TorchIO RandomGhosting in spirit). Valid intensity: 0 to 1
    (0 = identity)."""
    x = images.double()
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    period = num_ghosts + 1
    gain = torch.ones((n, h, w), dtype=torch.float64)
    for i in range(n):
        axis = int(rng.integers(2))  # 0: phase-encode along rows (ghosts shift vertically), 1: along columns
        offset = int(rng.integers(period))
        lines = torch.zeros(h if axis == 0 else w, dtype=torch.bool)
        lines[offset::period] = True
        lines[0] = False  # keep the k-space centre line (TorchIO's ``restore``) so overall brightness is preserved
        gain[i] = torch.where(lines[:, None] if axis == 0 else lines[None, :], 1.0 - intensity, 1.0)
    out = torch.fft.ifft2(torch.fft.fft2(x) * gain[:, None]).abs()  # one line pattern per slice, on every contrast
    return out.to(images.dtype), masks
