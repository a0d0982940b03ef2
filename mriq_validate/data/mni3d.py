"""3D synthetic cases: whole-brain T1, T1c, T2 and FLAIR volumes with one glioma and its labels.

The anatomy is the MNI ICBM152 2009a nonlinear symmetric template (T1 and GM/WM maps, 1 mm, skull-stripped) from the
nilearn wheel, as in ``builtin:mni-tumour``. One call resamples it onto a chosen grid (voxel size and shape, the brain
centred in the field of view, world coordinates in MNI mm) through a smooth random deformation (small rotation and
scaling plus a coarse random displacement field), draws a star-shaped 3D tumour (oedema around an enhancing rim around
a necrotic core; 25 % without necrosis, 15 % oedema-only, as the 2D cohort), renders the four contrasts with
:mod:`.mri_contrast`, and applies one smooth bias field (a degree-3 Legendre polynomial, as MONAI ``RandBiasField``)
and one site's per-contrast gamma and Rician noise. The background stays exactly zero, as in skull-stripped BraTS
data (Bakas et al. 2017, Sci Data 4:170117). Pure: everything random comes from the ``rng`` argument.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import DataError
from .mni import BRAIN_THRESHOLD, SITE_PROFILES, SITE_WEIGHTS, template_paths
from .mri_contrast import CONTRASTS, TissueMaps, csf_probability, simulate_contrasts

#: BraTS geometry: 240×240×155 voxels of 1 mm (Menze et al. 2015; Bakas et al. 2017).
BRATS_SHAPE = (240, 240, 155)
TUMOUR_KINDS = {"necrotic": 0.6, "enhancing_no_necrosis": 0.25, "oedema_only": 0.15}  # as the 2D cohort
OEDEMA_RADIUS_MM = (12.0, 32.0)
RIM_MARGIN_MM = 2.25  # each inner boundary stays at least this far inside the outer one (1.5 px of the 2D cohort)
DEFORMATION = {"rotate_rad": 0.06, "scale": 0.06, "control_spacing_mm": 30.0, "displacement_mm": (1.0, 3.0)}
BIAS = {"degree": 3, "coeff_range": (0.05, 0.25)}  # MONAI RandBiasField defaults of the 2D cohort


@dataclass(frozen=True)
class Case3D:
    """One synthetic case: float32 volumes per contrast (in :data:`.mri_contrast.CONTRASTS` order; arbitrary units,
    the brain's 99th percentile near 1, background 0), uint8 labels in BraTS 2023 values (1 NETC, 2 SNFH, 3 ET), the
    4×4 RAS voxel-to-world affine (MNI mm) and covariates."""

    images: dict[str, np.ndarray]
    labels: np.ndarray
    affine: np.ndarray
    covariates: dict[str, Any] = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def native_template() -> tuple[np.ndarray, np.ndarray]:
    """The template T1, GM and WM maps at their native 1 mm as one uint8 array 3×X×Y×Z (RAS; 255 = 1), and the
    voxel-to-world affine. Read once per process."""
    import nibabel as nib

    arrays, affine = [], None
    for key, path in template_paths().items():
        img = nib.as_closest_canonical(nib.load(str(path)))
        if affine is None:
            affine = img.affine
        elif not np.allclose(img.affine, affine):
            raise DataError(f"MNI template file {path} has affine {img.affine.tolist()} unlike the T1's {affine.tolist()}")
        arrays.append(np.asarray(img.dataobj, dtype=np.uint8))
    assert affine is not None
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine)[:3])):
        raise DataError(f"MNI template affine {affine.tolist()} is not diagonal; expected the nilearn 1 mm RAS template")
    return np.stack(arrays), np.asarray(affine, dtype=np.float64)


def output_affine(voxel_mm: float, shape: tuple[int, int, int], tpl_affine: np.ndarray, brain_centre_mm: np.ndarray) -> np.ndarray:
    """RAS affine of a ``shape`` grid of ``voxel_mm`` voxels centred on the brain, its origin snapped to the template's
    voxel grid so that 1 mm sampling is exact."""
    v = float(voxel_mm)
    origin = brain_centre_mm - v * (np.asarray(shape) - 1) / 2
    tpl_origin, tpl_step = tpl_affine[:3, 3], np.diag(tpl_affine)[:3]
    origin = tpl_origin + np.round((origin - tpl_origin) / tpl_step) * tpl_step
    aff = np.diag([v, v, v, 1.0])
    aff[:3, 3] = origin
    return aff


def brain_centre_mm() -> np.ndarray:
    """World centre (mm) of the bounding box of the template brain."""
    _, aff = native_template()
    lo, hi = template_brain_box()
    return aff[:3, :3] @ ((lo + hi) / 2) + aff[:3, 3]


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def deformed_tissue(rng: np.random.Generator, voxel_mm: float, shape: tuple[int, int, int]) -> tuple[TissueMaps, tuple[slice, ...], np.ndarray, dict]:
    """The template resampled onto the output grid through a smooth random deformation. Only the box of the grid that
    the deformed brain can reach is sampled (everything outside it is background): returns the tissue maps of that box,
    the box (slices into the grid), the grid's affine and the deformation's parameters."""
    vol, tpl_aff = native_template()
    aff = output_affine(voxel_mm, shape, tpl_aff, brain_centre_mm())
    centre = aff[:3, :3] @ ((np.asarray(shape) - 1) / 2) + aff[:3, 3]
    angles = rng.uniform(-DEFORMATION["rotate_rad"], DEFORMATION["rotate_rad"], 3)
    scale = rng.uniform(1 - DEFORMATION["scale"], 1 + DEFORMATION["scale"], 3)
    m = _rotation(angles) @ np.diag(scale)  # output world → template world, about the grid centre
    to_index = np.linalg.inv(tpl_aff)
    lin = to_index[:3, :3] @ m @ aff[:3, :3]  # output index → template index
    off = to_index[:3, :3] @ (m @ (aff[:3, 3] - centre) + centre) + to_index[:3, 3]
    sd = rng.uniform(*DEFORMATION["displacement_mm"])
    n_ctrl = [max(2, int(np.ceil(n * voxel_mm / DEFORMATION["control_spacing_mm"])) + 1) for n in shape]
    ctrl = rng.normal(0.0, sd, (3, *n_ctrl))
    ctrl = np.einsum("ij,jxyz->ixyz", to_index[:3, :3], ctrl).astype(np.float32)  # mm → template voxels

    # the box: output voxels whose affine image lies within the template brain's bounding box grown by the largest
    # displacement (trilinear interpolation never exceeds its control values)
    reach = float(np.abs(ctrl).max()) + 1.0
    lo_t, hi_t = template_brain_box()
    corners = np.array(np.meshgrid(*zip(lo_t - reach, hi_t + reach), indexing="ij")).reshape(3, -1)
    out_idx = np.linalg.solve(lin, corners - off[:, None])
    lo = np.clip(np.floor(out_idx.min(1)).astype(int) - 1, 0, shape)
    hi = np.clip(np.ceil(out_idx.max(1)).astype(int) + 2, 0, shape)
    if np.any(hi - lo < 2):
        raise DataError(f"a {shape} grid of {voxel_mm} mm voxels does not hold the template brain; expected a field of "
                        "view that covers it")
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub = tuple(int(b - a) for a, b in zip(lo, hi))

    weights = [_linear_weights(n, c)[lo_i:hi_i] for n, c, lo_i, hi_i in zip(shape, n_ctrl, lo, hi)]
    disp = np.einsum("kabc,ia,jb->kijc", ctrl, weights[0], weights[1]) @ weights[2].T  # trilinear upsampling, separable
    ii, jj, kk = (np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi))
    coords = np.empty((3, *sub), np.float32)
    for k in range(3):  # template index of every box voxel
        coords[k] = (lin[k, 0] * ii[:, None, None] + lin[k, 1] * jj[None, :, None] + lin[k, 2] * kk[None, None, :]
                     + off[k]) + disp[k]
    out = [ndimage.map_coordinates(vol[i], coords, order=1, mode="constant", cval=0.0, output=np.float32) / 255.0 for i in range(3)]
    t1, gm, wm = out
    tissue = TissueMaps(t1, gm, wm, csf_probability(t1 > BRAIN_THRESHOLD, gm, wm))
    return tissue, box, aff, {"rotation_rad": angles.round(4).tolist(), "scale": scale.round(4).tolist(), "displacement_sd_mm": round(sd, 3)}


def _linear_weights(n: int, c: int) -> np.ndarray:
    """n×c matrix of linear interpolation from c control points to n points spanning the same interval (the weights of
    trilinear upsampling with aligned corners, one axis at a time)."""
    pos = np.linspace(0, c - 1, n)
    left = np.minimum(np.floor(pos).astype(int), c - 2)
    frac = pos - left
    w = np.zeros((n, c), np.float32)
    w[np.arange(n), left] = 1 - frac
    w[np.arange(n), left + 1] = frac
    return w


@functools.lru_cache(maxsize=1)
def template_brain_box() -> tuple[np.ndarray, np.ndarray]:
    """First and last template voxel indices (per axis) of the brain."""
    vol, _ = native_template()
    idx = np.argwhere(vol[0] > BRAIN_THRESHOLD * 255)
    return idx.min(0).astype(float), idx.max(0).astype(float)


def _boundary_profile(rng: np.random.Generator, amp: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An irregular star-shaped radius r(u) = base·(1 + Σ_k a_k T_k(u·v_k)), k = 2..5 (T_k Chebyshev, so the term is
    cos(k·angle between u and the random axis v_k)); returns (orders, amplitudes, axes)."""
    ks = np.arange(2, 6)
    axes = rng.standard_normal((ks.size, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    return ks, rng.uniform(0, amp, ks.size) / ks**0.5, axes


def _radius(u: np.ndarray, base: float, profile: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    ks, amps, axes = profile
    r = np.ones(u.shape[1:], np.float32)
    for k, a, v in zip(ks, amps, axes):
        coef = np.zeros(k + 1)
        coef[k] = a
        r += np.polynomial.chebyshev.chebval(np.tensordot(v, u, axes=1), coef).astype(np.float32)
    return base * r


def tumour_labels_3d(brain: np.ndarray, wm: np.ndarray, rng: np.random.Generator, voxel_mm: float) -> tuple[np.ndarray, dict]:
    """One 3D tumour in canonical labels (1 necrotic core, 2 oedema, 3 enhancing) and its covariates. The centre lies
    in white matter deep enough for most of the oedema to fit; labels outside the brain are cleared."""
    kind = int(rng.choice(len(TUMOUR_KINDS), p=list(TUMOUR_KINDS.values())))
    r_ed = rng.uniform(*OEDEMA_RADIUS_MM)
    step = max(1, int(round(4.0 / voxel_mm)))  # candidate centres on a ~4 mm grid (fast distance transform)
    coarse = brain[::step, ::step, ::step]
    depth = ndimage.distance_transform_edt(coarse, sampling=step * voxel_mm)
    candidates = np.argwhere((depth > 0.8 * r_ed + 3) & (wm[::step, ::step, ::step] > 0.5))
    if len(candidates) == 0:
        candidates = np.argwhere(depth >= depth.max() * 0.7) if depth.max() > 0 else candidates
    if len(candidates) == 0:
        raise DataError(f"the resampled template holds no brain at {voxel_mm} mm on a {brain.shape} grid; expected a "
                        "field of view that contains the brain")
    centre = candidates[rng.integers(len(candidates))] * step + rng.uniform(0, step, 3)

    amp_ed, amp_en, amp_nc = 0.35, 0.25, 0.2
    prof_ed = _boundary_profile(rng, amp_ed)
    r_en = r_ed * rng.uniform(0.45, 0.75)
    prof_en = _boundary_profile(rng, amp_en)
    r_nc = r_en * rng.uniform(0.4, 0.7)
    prof_nc = _boundary_profile(rng, amp_nc)

    reach = r_ed * (1 + amp_ed * float((1 / np.sqrt(np.arange(2, 6))).sum())) / voxel_mm + 2
    lo = np.maximum(np.floor(centre - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, brain.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    d = np.stack(np.meshgrid(*[(np.arange(a, b) - c) * voxel_mm for a, b, c in zip(lo, hi, centre)], indexing="ij")).astype(np.float32)
    rho = np.sqrt((d**2).sum(0))
    u = d / np.maximum(rho, 1e-6)
    lab = np.zeros(rho.shape, np.uint8)
    edge_ed = _radius(u, r_ed, prof_ed)
    lab[rho < edge_ed] = 2
    if kind in (0, 1):
        edge_en = np.minimum(_radius(u, r_en, prof_en), edge_ed - RIM_MARGIN_MM)
        lab[rho < edge_en] = 3
        if kind == 0:
            lab[rho < np.minimum(_radius(u, r_nc, prof_nc), edge_en - RIM_MARGIN_MM)] = 1
    labels = np.zeros(brain.shape, np.uint8)
    labels[box] = lab * brain[box]
    vox_ml = voxel_mm**3 / 1000
    cov = {"kind": list(TUMOUR_KINDS)[kind], "centre_voxel": centre.round(1).tolist(), "oedema_radius_mm": round(r_ed, 2),
           "volume_ml": {name: round(float((labels == v).sum() * vox_ml), 2) for name, v in (("netc", 1), ("snfh", 2), ("et", 3))}}
    return labels, cov


def bias_field(shape: tuple[int, int, int], rng: np.random.Generator, box: tuple[slice, ...] | None = None) -> np.ndarray:
    """exp of a random Legendre polynomial of total degree ≤ 3 over the grid scaled to [-1, 1]³ (as MONAI
    ``RandBiasField``: coefficients uniform in ``BIAS['coeff_range']``), evaluated on ``box`` (default: all)."""
    deg = BIAS["degree"]
    coeff = np.zeros((deg + 1,) * 3)
    idx = [(a, b, c) for a in range(deg + 1) for b in range(deg + 1 - a) for c in range(deg + 1 - a - b)]
    values = rng.uniform(*BIAS["coeff_range"], len(idx))
    for (a, b, c), val in zip(idx, values):
        coeff[a, b, c] = val
    box = box or tuple(slice(0, n) for n in shape)
    px, py, pz = (np.polynomial.legendre.legvander(np.linspace(-1, 1, n)[b], deg) for n, b in zip(shape, box))
    poly = np.einsum("abc,ia,jb->ijc", coeff, px, py) @ pz.T  # separable: the last, largest product is one matmul
    return np.exp(poly.astype(np.float32))


def apply_site_3d(image: np.ndarray, brain: np.ndarray, profile: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """One contrast through a site's acquisition: scaled to its 99th brain percentile, gamma (jittered ±8 %), Rician
    magnitude noise inside the brain; the background stays zero (skull-stripped)."""
    inside = image[brain]
    ref = max(float(np.percentile(inside, 99)), 1e-6)
    x = np.clip(inside / ref, 0, None) ** (profile["gamma"] * rng.uniform(0.92, 1.08))
    n1, n2 = rng.standard_normal((2, x.size), dtype=np.float32) * np.float32(profile["noise"])
    out = np.zeros_like(image)
    out[brain] = np.sqrt((x + n1) ** 2 + n2**2)
    return out


def check_geometry(voxel_mm: float, shape: tuple[int, int, int]) -> None:
    """DataError unless ``voxel_mm`` is a positive number and ``shape`` three integers of at least 8."""
    ok_vox = isinstance(voxel_mm, (int, float)) and np.isfinite(voxel_mm) and voxel_mm > 0
    ok_shape = len(tuple(shape)) == 3 and all(isinstance(n, (int, np.integer)) and n >= 8 for n in shape)
    if not (ok_vox and ok_shape):
        raise DataError(f"3D case geometry voxel_mm={voxel_mm!r}, shape={tuple(shape)!r}: expected voxel_mm > 0 and "
                        "three integer axis lengths of at least 8 voxels")


def synthesise_volume(rng: np.random.Generator, *, voxel_mm: float = 1.0, shape: tuple[int, int, int] = BRATS_SHAPE) -> Case3D:
    """One 3D case on a ``shape`` grid of ``voxel_mm`` isotropic voxels (default: BraTS 240×240×155 at 1 mm)."""
    check_geometry(voxel_mm, shape)
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    tissue, box, affine, deform = deformed_tissue(rng, voxel_mm, shape)
    brain = tissue.t1 > BRAIN_THRESHOLD
    labels_box, cov = tumour_labels_3d(brain, tissue.wm, rng, voxel_mm)
    images = simulate_contrasts(tissue, labels_box, rng, voxel_mm=voxel_mm)
    field_ = bias_field(shape, rng, box)
    site = int(rng.choice(len(SITE_PROFILES), p=SITE_WEIGHTS))
    out, labels = {}, np.zeros(shape, np.uint8)
    labels[box] = labels_box
    for c in CONTRASTS:
        out[c] = np.zeros(shape, np.float32)
        out[c][box] = apply_site_3d(images[c] * field_, brain, SITE_PROFILES[site][c], rng)
    cov.update(site=site, deformation=deform, voxel_mm=float(voxel_mm),
               centre_voxel=[round(c + b.start, 1) for c, b in zip(cov["centre_voxel"], box)])
    return Case3D(out, labels, affine, cov)
