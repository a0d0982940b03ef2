"""Default strength sweeps: the levels at which the study and the perturbation figure apply each perturbation."""

from __future__ import annotations

# Strength levels per perturbation (values of its ``strength`` parameter), mildest first. The families are those of
# Deo et al. 2025 (arXiv 2505.07175: noise, localised morphological alterations, distribution shifts including
# memorisation); the paper's levels are not public. The duplication fractions (5, 15, 30, 45 %) are the defaults of the
# same group's memorisation code (github.com/YashDeo-York/Mem-index, core/create_contamination.py); the noise levels
# span σ = 0.01-0.1 on [0, 1] slices, and the others span "barely visible" to "obvious".
DEFAULT_SWEEPS: dict[str, list[float]] = {
    "gaussian": [0.01, 0.02, 0.05, 0.1],
    "rician": [0.01, 0.02, 0.05, 0.1],
    "poisson": [1000, 300, 100, 30],
    "gaussian_blur": [0.5, 1.0, 2.0, 4.0],
    "bias_field": [0.1, 0.2, 0.4, 0.8],
    "kspace_spike": [0.05, 0.1, 0.25, 0.5],
    "gibbs": [0.3, 0.5, 0.7, 0.85],
    "ghosting": [0.25, 0.5, 0.75, 1.0],
    "boundary_blur": [1.0, 2.0, 4.0],
    "gradient": [0.1, 0.25, 0.5],
    "texture_flatten": [0.25, 0.5, 1.0],
    "lesion_erase": [0.25, 0.5, 1.0],
    "lesion_resize": [-4, -2, 2, 4],
    "one_contrast_erase": [0.25, 0.5, 1.0],
    "vessel_break": [1, 3, 5],
    "vessel_prune": [10, 30, 100],
    "external_duplication": [0.05, 0.15, 0.3, 0.45],
    "internal_duplication": [0.05, 0.15, 0.3, 0.45],
    "mode_collapse": [0.25, 0.5, 0.75, 1.0],
    "density_shift": [0.25, 0.5, 0.75, 1.0],
}
