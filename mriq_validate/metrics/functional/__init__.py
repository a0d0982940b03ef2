"""The metrics' maths as plain functions on tensors and arrays, usable without a run (torchmetrics-style).

One module per family; each registered metric class names its entry point here in its ``functional`` attribute:

* :mod:`.distribution`: FID, FRD, KID, MMD², PRDC, Vendi on feature arrays;
* :mod:`.memorisation`: copy distances and the conformal copy test;
* :mod:`.detectability`: ROC-AUC (Mann-Whitney, DeLong CI) of a real-vs-generated classifier's held-out scores;
* :mod:`.diversity`: intra-set MS-SSIM, region presence;
* :mod:`.downstream`: Dice and HD95 of label maps;
* :mod:`.lesionwise`: BraTS 2023 lesion-wise Dice and HD95;
* :mod:`.intensity`: brain intensity percentiles;
* :mod:`.constraint`: anatomical rules of the tumour sub-regions per contrast;
* :mod:`.iqa`: pyiqa no-reference scores (PIQE, weight-based metrics);
* :mod:`.niqe`: NIQE with a pristine model fitted on MRI;
* :mod:`.radiomics`: handcrafted radiomic features (for FRD).
"""

from .constraint import constraint_violations
from .detectability import roc_auc
from .distribution import fid_from_features, frd, kid, mmd2, prdc, vendi_score
from .diversity import ms_ssim_pairs, region_presence
from .downstream import dice_per_image, hd95_per_image
from .intensity import brain_percentile
from .iqa import piqe, pyiqa_scores
from .lesionwise import lesionwise_dice_hd95
from .memorisation import conformal_flags, copy_distances, copy_flags
from .niqe import niqe_mri
from .radiomics import radiomic_features

__all__ = ["brain_percentile", "conformal_flags", "constraint_violations", "copy_distances", "copy_flags", "dice_per_image",
           "fid_from_features", "frd", "hd95_per_image", "kid", "lesionwise_dice_hd95", "mmd2", "ms_ssim_pairs", "niqe_mri", "piqe",
           "prdc", "pyiqa_scores", "radiomic_features", "region_presence", "roc_auc", "vendi_score"]
