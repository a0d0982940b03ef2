"""A folder of images generated beforehand, used as a model.

Plain layouts (a model with ``sample``): ``<name>.<ext>`` with masks beside as ``<name>_seg.<ext>``, or ``images/`` +
``labels/`` with equal names. Formats: ``.npy``, ``.png`` (grey, 1-16 bit), ``.nii``/``.nii.gz`` (one 2D slice).
Files are read in name order; the folder defines the set (``sample(None)`` returns all of it).

Contrasts. The images have one channel per contrast of the reference data (C of them, in the data's order, e.g.
t1, t1c, t2, flair). Each entry ``<name>`` is either

* one file holding every contrast: for C = 1 (today's naming) an H×W slice or an N×H×W / N×1×H×W stack in any format;
  for C > 1 an ``.npy`` of C×H×W (one slice) or N×C×H×W (a stack), channels in the data's contrast order; or
* (C > 1) one grey file per contrast, ``<name>_<contrast>.<ext>`` (e.g. ``case_z042_t1.png``, ``case_z042_flair.png``;
  any format above, each H×W or N×H×W). The contrast part may be the canonical name or a synonym
  (``t1n``/``T1w``, ``t1ce``/``t1gd``, ``t2w``, ``t2f``/``FLAIR``; ``mriq_validate.data.contrasts``). A missing
  contrast file is an error naming the files expected; so is an entry given both ways. Files of contrasts the run
  does not use (``case_z042_t2.png`` beside ``case_z042_t1.png`` when the run uses t1 and flair) are left out and
  listed in the provenance (``unused_files``).

The mask of ``<name>`` is ``<name>_seg.<ext>`` (or ``labels/<name>.<ext>``), one per entry whatever C is.

Volumes (data of volumes C×D×H×W, ``image_shape`` of length 4): one volume per entry, as NIfTI (``.nii``/``.nii.gz``:
X×Y×Z for one contrast, X×Y×Z×C with the contrasts along the fourth axis, or one X×Y×Z file per contrast
``<name>_<contrast>.nii.gz``) or as ``.npy`` already on the data's grid (D×H×W, C×D×H×W; a stack N×C×D×H×W). A NIfTI
file is read in any orientation: the caller's ``VolumeGrid`` turns it into the data's D×H×W grid (RAS, axial slices
as 2D slices) and gives its voxel spacing, which must match the data's ``spacing_mm`` (D, H, W); a file of the wrong
shape or spacing is an error naming the file, what it holds and what was expected. PNG files hold slices, not volumes.
Masks follow the same rules (``<name>_seg.nii.gz``).

Export layout (a mask-conditioned model with ``generate``): what ``mriq-validate export-masks OUT`` writes,
``OUT/mriq_masks.json`` (the manifest: original slice ids, file stems, contrasts, shape, labels, data source) and
``OUT/test/<stem>_seg.npy``, ``OUT/train/<stem>_seg.npy`` (volumes: ``<stem>_seg.nii.gz`` on the data's grid). A slice
(volume) id becomes a portable stem by replacing each character outside ``A-Z a-z 0-9 . _ -`` with ``_`` (``case:z042``
→ ``case_z042``; :func:`portable_stems`). The model's image for a mask is saved beside it under the same stem, as
above (``<stem>.npy`` or ``<stem>_<contrast>.png``, ...; volumes ``<stem>.nii.gz`` or ``<stem>_<contrast>.nii.gz``).
``generate(masks)`` then returns the saved images for the real test masks (mask-conditioned criteria) and for the
real train masks (train-on-synthetic criteria such as ``dice_tstr`` and ``dice_augmented``); a split whose images are
all missing is allowed (criteria that need it say what to save), a split with only some is an error.

Masks are read as stored, never scaled: they must hold integer labels of the data's label set (an 8- or 16-bit
grey or palette PNG, an integer or integer-valued array).

Images are read onto [0, 1] by the first rule that applies:

1. ``mriq_folder.json`` in the folder, ``{"range": [low, high]}``: ``low`` means 0 and ``high`` means 1, for every
   image file (e.g. ``[0, 4095]`` for 12-bit values stored in 16-bit PNGs or ``uint16`` arrays);
2. a PNG's ``sBIT`` chunk (significant bits b, PNG specification ISO/IEC 15948 §11.3.3.4): samples up to 2^b-1
   are divided by 2^b-1; samples scaled up to the file's bit depth, as the specification asks of encoders, are
   shifted back to b bits first;
3. integer samples: divided by the type's maximum (255 for 8 bit, 65535 for 16 bit, 32767 for ``int16``), but
   never as a guess: when the largest value of all such files of one type is below 2^(b-2) (b the type's value bits,
   e.g. 12-bit values in 16-bit files) the folder is refused, naming the files and how to state the range
   (:mod:`mriq_validate.bitdepth`). This covers integer NIfTI files too: ``scl_slope``/``scl_inter`` (NIfTI-1 header)
   are applied when set, giving floating-point values (rule 4); without them an ``int16`` MRI scan with values up to
   a few thousand would be read by 32767, so it is refused rather than read many times too dark;
4. floating-point values: taken as they are; they must already lie in [0, 1].

How the images were read is recorded in the model's provenance (``scaling``, e.g. ``sBIT 12 bits`` or ``dtype max
255 (largest stored value 230)``), so the report says it. Values outside [0, 1] after scaling are an error that
names the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .export import EXPORT_FORMAT, EXPORT_VERSION, MaskFolderModel, SPLIT_USES, portable_stems, read_manifest, write_mask_folder
from .matching import Unit, folder_units, pair_files
from .model import FolderModel
from .reading import IMAGE_SUFFIXES, MANIFEST, PNG_SIGNATURE, SIDECAR, Stored, VolumeGrid, png_chunks, read_range, read_stored, to_labels, to_unit


def open_folder_model(folder: Path, image_shape: tuple[int, ...], labels: set[int] | None = None,
                      contrasts: tuple[str, ...] = (), name_of: Callable[[str], str] | None = None,
                      grid: VolumeGrid | None = None) -> FolderModel:
    """The model of a folder: :class:`MaskFolderModel` when it holds an export manifest (``mriq_masks.json``), else
    :class:`FolderModel`."""
    cls = MaskFolderModel if (folder / MANIFEST).is_file() else FolderModel
    return cls(folder, image_shape, labels, contrasts, name_of, grid)
