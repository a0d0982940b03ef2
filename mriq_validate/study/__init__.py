"""``mriq-validate study``: the Deo et al. 2025 ("Metrics that matter", arXiv 2505.07175) experiment on the user's data.

Grid (:mod:`.grid`): every registered measure that makes sense on the data × every perturbation family at its
:data:`~mriq_validate.perturb.sweeps.DEFAULT_SWEEPS` strengths (applied to the real test images) and every builtin
stand-in generator. For each (measure, condition) (:mod:`.run`):

* ``value``: the measure on the condition's images (full set, no resampling);
* ``baseline``: the measure on the clean real test images;
* ``se``: the measure's resampling standard error on the clean real test images, its noise floor
  (:func:`mriq_validate.stats.noise_floor`). Per-image measures: bootstrap SE (``n_boot`` resamples with
  replacement). Set-level measures (``resample == "subsample"``): SD over ``n_boot`` random 80 % subsets, scaled by
  ``sqrt(m / (n - m))`` (the delete-d jackknife, Shao & Wu 1989), because subsets of 80 % vary less than whole sets of
  the same size would;
* ``change = value - baseline``; ``worse = change`` signed so that positive means worse; ``z = worse / se``;
* ``detected``: ``worse > 3·se`` (the measure moved beyond its own noise floor, towards worse).

The downstream target is protocol-A Dice (metric ``dice``) of the data's main region (``whole_tumour`` for the tumour
data, ``vessel`` for the vessel data). The tables (:mod:`.analysis`): ``correlation.csv`` gives, for each measure,
Spearman and Pearson correlation between its signed value (higher = worse) and Dice across all conditions, with seeded
percentile-bootstrap 95 % CIs over conditions: a measure aligned with utility has a clearly negative correlation.
``memorisation.csv`` asks whether each measure gets better as a growing share of the set is duplicated (the
memorisation paradox). Outputs (:mod:`.render`, :mod:`.figures`): CSV, ``study.json``, ``study.html``, ``study.md``.

Measures that need a user weights file (``pyiqa``) or train one segmenter per condition (``dice_tstr``,
``dice_augmented``: protocol B, about 2–3 min each on 2 CPU cores) are left out and listed in ``study.json``.
Every random draw derives from ``--seed`` through :func:`mriq_validate.seeding.derive_seed`.
"""

from .grid import TRUE_QUALITY, Condition, StudyConfig
from .render import CORR_COLUMNS, MEMO_COLUMNS, RANK_COLUMNS, SENS_COLUMNS, write_outputs
from .result import StudyResult
from .run import floor_rng, run_study

__all__ = ["CORR_COLUMNS", "MEMO_COLUMNS", "RANK_COLUMNS", "SENS_COLUMNS", "TRUE_QUALITY", "Condition", "StudyConfig",
           "StudyResult", "floor_rng", "run_study", "write_outputs"]
