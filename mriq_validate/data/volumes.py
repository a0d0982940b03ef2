"""3D volumes: the D×H×W convention, its affine, and the volume preprocessing of a case, as pure functions.

A volume is indexed [D, H, W]: D the axial slice index (inferior → superior) and each D-slice an axial slice in the
2D display orientation of :func:`.preprocess.axial_to_display` (anterior at the top), so ``volume[..., d, :, :]`` is a
2D slice of the same convention. It is the RAS array X×Y×Z with ``out[d, h, w] = xyz[w, Y - 1 - h, d]``.

Per case (``slicing: volume`` of a NIfTI folder): the RAS volumes are resampled in one step to ``spacing_mm``
isotropic voxels on a ``shape`` (D×H×W) grid centred on the brain's bounding box (the non-zero voxels of any
contrast), trilinear for images and nearest for labels, zero outside the source (crop and zero-pad at once); then
each contrast is normalised within the brain (non-zero in any contrast, as nnU-Net's ``create_nonzero_mask``:
Isensee et al. 2021, Nat Methods 18:203): clipped to the brain's 1st–99th percentile and min-max scaled to [0, 1],
the background kept at 0 (the per-volume form of the per-slice scaling of Deo et al. 2025).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import DataError
from .preprocess import axial_to_display, normalise_slice, voxel_sizes

VOLUME_PREPROCESSING = {
    "orientation": "reoriented to RAS from each file's affine (LPS and RAS files give the same volumes); volumes D×H×W "
                   "with D the axial index (inferior to superior) and every D-slice in the 2D slice orientation "
                   "(anterior at the top)",
    "resampling": "one resampling (scipy.ndimage.affine_transform) to isotropic voxels of the target spacing along the "
                  "RAS-reordered file axes, trilinear for images and nearest for labels; the grid's origin is snapped to "
                  "a source voxel, so a target spacing equal to the source's copies voxels exactly",
    "crop": "the target shape centred on the bounding box of the brain (non-zero voxels of any contrast), zero outside "
            "the source volume (crop and zero-pad)",
    "intensity": "per volume and contrast: clip to the [p1, p99] of the brain voxels (non-zero in any contrast), min-max "
                 "to [0, 1] (eps 1e-6), background 0 (nnU-Net's non-zero-mask normalisation, Isensee et al. 2021; the "
                 "per-volume form of Deo et al. 2025's per-slice scaling)",
}


def display_volume(xyz: np.ndarray) -> np.ndarray:
    """RAS X×Y×Z (the last three axes; leading axes kept) as D×H×W: D = Z, each D-slice as :func:`axial_to_display`."""
    turned = axial_to_display(np.moveaxis(xyz, (-3, -2), (0, 1)))  # H×W×...×D
    return np.ascontiguousarray(np.moveaxis(turned, (0, 1, -1), (-2, -1, -3)))


def volume_from_display(dhw: np.ndarray) -> np.ndarray:
    """The inverse of :func:`display_volume`: D×H×W (last three axes) back to RAS X×Y×Z."""
    return np.ascontiguousarray(np.moveaxis(np.rot90(dhw, k=-1, axes=(-2, -1)), -3, -1))


def _display_index(shape_dhw: Sequence[int]) -> np.ndarray:
    """4×4 map of a D×H×W index (d, h, w, 1) to the X×Y×Z index (w, Y - 1 - h, d, 1)."""
    p = np.zeros((4, 4))
    p[0, 2] = p[2, 0] = p[3, 3] = 1.0
    p[1, 1], p[1, 3] = -1.0, float(shape_dhw[1] - 1)
    return p


def display_affine(affine_xyz: np.ndarray, shape_xyz: Sequence[int]) -> np.ndarray:
    """The voxel-to-world affine of the D×H×W volume whose RAS X×Y×Z array has ``affine_xyz``."""
    x, y, z = (int(n) for n in shape_xyz)
    return np.asarray(affine_xyz, dtype=np.float64) @ _display_index((z, y, x))


def xyz_affine(affine_dhw: np.ndarray, shape_dhw: Sequence[int]) -> np.ndarray:
    """The inverse of :func:`display_affine`: the affine of the X×Y×Z array of a D×H×W volume (for NIfTI export)."""
    return np.asarray(affine_dhw, dtype=np.float64) @ np.linalg.inv(_display_index(shape_dhw))


def item_affine(provenance: Mapping[str, Any], item_id: str) -> np.ndarray:
    """The D×H×W affine of volume ``item_id`` from data provenance ``affine_dhw`` (one 4×4 for a grid every volume
    shares, or ``{id: 4×4}``); DataError when the data do not record it."""
    rec = provenance.get("affine_dhw")
    if isinstance(rec, Mapping):
        rec = rec.get(item_id)
    arr = np.asarray(rec, dtype=np.float64) if rec is not None else None
    if arr is None or arr.shape != (4, 4):
        raise DataError(f"volume {item_id!r}: the data's provenance records no 4×4 'affine_dhw' for it; expected volume data "
                        "(slicing: volume, or a 3D builtin)")
    return arr


def normalise_volume(stack: np.ndarray) -> np.ndarray:
    """C×... float32 volumes, each contrast clipped to the [p1, p99] of the brain (non-zero in any contrast) and scaled
    to [0, 1], background 0 (:func:`.preprocess.normalise_slice` within the brain)."""
    brain = (stack != 0).any(axis=0)
    return np.stack([normalise_slice(c, within=brain) for c in stack])


def check_volume_geometry(spacing_mm: Any, shape: Any, where: str) -> tuple[float, tuple[int, int, int]]:
    """(spacing, shape) checked: a positive finite spacing and three positive integer axis lengths; DataError naming
    ``where`` and the field otherwise."""
    ok = isinstance(spacing_mm, (int, float, np.integer, np.floating)) and not isinstance(spacing_mm, bool)
    if not ok or not np.isfinite(spacing_mm) or spacing_mm <= 0:
        raise DataError(f"{where}: spacing_mm {spacing_mm!r}; expected a positive number of mm (isotropic voxels)")
    dims = tuple(shape) if isinstance(shape, (list, tuple)) else ()
    if len(dims) != 3 or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in dims):
        raise DataError(f"{where}: shape {shape!r}; expected three positive integers D×H×W")
    return float(spacing_mm), tuple(int(n) for n in dims)  # type: ignore[return-value]


def resampling_grid(affine: np.ndarray, stack: np.ndarray, spacing_mm: float, shape_dhw: Sequence[int]) -> dict[str, Any]:
    """Where the target grid lies in the source voxels (RAS X×Y×Z ``stack``, C×X×Y×Z, with ``affine``): ``zoom``
    (source voxels per target voxel, per axis), ``offset`` (the source index of target voxel 0, snapped to a source
    voxel), the target's X×Y×Z ``shape`` and ``affine``, and the brain's and the grid's boxes in source voxels."""
    out_xyz = np.array([shape_dhw[2], shape_dhw[1], shape_dhw[0]])
    zoom = spacing_mm / np.asarray(voxel_sizes(affine))
    brain = np.argwhere((stack != 0).any(axis=0))
    lo, hi = (brain.min(0), brain.max(0)) if len(brain) else (np.zeros(3, int), np.asarray(stack.shape[1:]) - 1)
    offset = np.round((lo + hi) / 2 - zoom * (out_xyz - 1) / 2)
    step = np.eye(4)
    step[:3, :3] = np.diag(zoom)
    step[:3, 3] = offset
    return {"zoom": zoom, "offset": offset, "shape": tuple(int(n) for n in out_xyz), "affine": np.asarray(affine) @ step,
            "brain_box": [[int(a), int(b) + 1] for a, b in zip(lo, hi)],
            "grid_box": [[round(float(o), 3), round(float(o + z * n), 3)] for o, z, n in zip(offset, zoom, out_xyz)]}


def case_volume(volumes: Sequence[np.ndarray], label: np.ndarray | None, affine: np.ndarray, spacing_mm: float,
                shape_dhw: Sequence[int]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One case as a volume: RAS X×Y×Z ``volumes`` (one per contrast) and ``label`` (or None) sharing ``affine`` →
    images C×D×H×W float32 (resampled, cropped or padded around the brain, normalised), labels D×H×W int32 (the values
    as given, zero without a label) and the grid (``affine_dhw``, boxes in source voxels)."""
    stack = np.stack(volumes).astype(np.float32, copy=False)
    grid = resampling_grid(affine, stack, spacing_mm, shape_dhw)

    def resample(vol: np.ndarray, order: int) -> np.ndarray:
        return ndimage.affine_transform(vol, grid["zoom"], grid["offset"], output_shape=grid["shape"], order=order,
                                        mode="constant", cval=0.0)

    images = display_volume(normalise_volume(np.stack([resample(v, 1) for v in stack])))
    labels = np.zeros(tuple(int(n) for n in shape_dhw), np.int32)
    if label is not None:
        labels = display_volume(resample(label.astype(np.int32, copy=False), 0))
    meta = {"affine_dhw": display_affine(grid["affine"], grid["shape"]).round(6).tolist(),
            "brain_box_source_voxels": grid["brain_box"], "grid_box_source_voxels": grid["grid_box"]}
    return images, labels, meta
