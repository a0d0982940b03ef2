"""``mriq-validate selftest``: known-answer checks of the measures, perturbations, statistics and report that run
from the installed package (the wheel ships no tests), so a user can rerun what a report's ``self_check`` cites.

Each check is a function that raises AssertionError saying what differed; :data:`CHECKS` registers them in the order
they run. The full test suite (``make test`` in a checkout) checks much more; these are the answers that must hold
wherever the package is installed (another platform, another numpy, torch or MONAI build).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch


def dice_known_answers() -> None:
    """Dice of identical masks is 1, of disjoint masks 0, of two empty masks 1 (MONAI compute_dice, empty = 1)."""
    from .metrics.functional.downstream import dice_per_image

    a = torch.zeros(3, 1, 8, 8, dtype=torch.int64)
    a[0, 0, 2:5, 2:5], a[1, 0, 1:3, 1:3] = 1, 1
    b = torch.zeros_like(a)
    b[1, 0, 5:7, 5:7] = 1
    got = dice_per_image(a, a).tolist(), dice_per_image(a[1:2], b[1:2]).tolist(), dice_per_image(a[2:3], b[2:3]).tolist()
    assert got == ([1.0, 1.0, 1.0], [0.0], [1.0]), f"Dice (identical, disjoint, empty) = {got}, expected ([1, 1, 1], [0], [1])"


def fid_known_answers() -> None:
    """FID of a set with itself is 0; of two Gaussians it is the closed form ‖μ₁−μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½)."""
    from .metrics.functional.distribution import frechet_distance

    mu, cov = np.zeros(3), np.diag([1.0, 2.0, 3.0])
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-9, "FID of identical statistics is not 0"
    got = frechet_distance(mu, cov, mu + 1.0, 4.0 * cov)  # (Σ·4Σ)^½ = 2Σ: tr(Σ + 4Σ − 4Σ) = tr Σ = 6, plus 3
    assert math.isclose(got, 9.0, rel_tol=1e-9), f"FID of N(0, Σ) and N(1, 4Σ) = {got}, expected 9"


def perturbations_replay() -> None:
    """A perturbation replays with its seed, leaves the input unchanged at strength 0, and 2σ noise has 4× the variance."""
    from .perturb import apply

    g = torch.Generator().manual_seed(0)
    images, masks = torch.rand(4, 1, 32, 32, generator=g), torch.zeros(4, 1, 32, 32, dtype=torch.int64)
    one, two = (apply("gaussian", images, masks, seed=7, sigma=0.05).images for _ in range(2))
    assert torch.equal(one, two), "the same seed gave different images"
    assert torch.equal(apply("gaussian", images, masks, seed=7, sigma=0.0).images, images), "sigma 0 changed the images"
    ratio = float((apply("gaussian", images, masks, seed=7, sigma=0.1).images - images).var() / (one - images).var())
    assert 3.0 < ratio < 5.0, f"variance ratio of sigma 0.1 to 0.05 is {ratio:.2f}, expected about 4"


def seed_sd_bound_keeps_its_rate() -> None:
    """A bound of c seed SDs estimated from k trainings is widened so that its false-alarm rate is Φ(−c/√2)."""
    from scipy import stats

    from .bounds import seed_sd_false_alarm, seed_sd_multiplier

    for c, k in ((3.0, 3), (3.0, 5), (2.0, 10)):
        m = seed_sd_multiplier(c, k)
        want = float(stats.norm.cdf(-c / math.sqrt(2)))
        assert m > c and math.isclose(seed_sd_false_alarm(m, k), want, rel_tol=1e-6), (c, k, m)


def report_seal_and_rederivation() -> None:
    """A report validates against the schema, its seal verifies, and a flipped verdict is found by re-derivation."""
    import json

    from .integrity import check_seal, report_problems, seal, validate_report
    from .report import build_report

    est = {"value": -0.2, "ci_low": -0.25, "ci_high": -0.15, "se": 0.02, "n": 8, "n_boot": 100, "ci_level": 0.95}
    record = {"item_id": "s.yaml::A", "criterion_id": "A", "level": {}, "suite": "s.yaml", "gate": True, "kind": "model",
              "requirement": "r", "hazard": None, "rationale": "x", "message": "m", "verdict": "FAIL", "metric": {"name": "dice"},
              "compared": est, "value": est, "baseline": est, "threshold": {"min": -0.05, "relative": "difference"},
              "bounds": {"min": -0.05, "max": None}, "checked": -0.2, "seed": 1}
    report = json.loads(json.dumps(seal(build_report([record], {"settings": {"seed": 0}, "finished": "2026-01-01T00:00:00+00:00"}))))
    validate_report(report)
    assert report["decision"]["status"] == "NOT CLEARED" and report_problems(report, None) == ([], "not signed")
    report["results"][0]["verdict"] = "PASS"
    problems, _ = report_problems(report, None)
    assert any("A: verdict is PASS, but its values and threshold give FAIL" in p for p in problems), problems
    assert check_seal(report, None)[0], "an edited report kept its seal"


#: name → check, in the order ``mriq-validate selftest`` runs them
CHECKS: dict[str, Callable[[], None]] = {
    "dice": dice_known_answers, "fid": fid_known_answers, "perturbations": perturbations_replay,
    "seed-sd-bound": seed_sd_bound_keeps_its_rate, "report": report_seal_and_rederivation,
}


def run_selftest(say: Callable[[str], None] = print) -> bool:
    """Run every check, saying PASS or FAIL with its time and first docstring line; whether all passed."""
    ok = True
    for name, check in CHECKS.items():
        start = time.perf_counter()
        try:
            check()
            verdict, why = "PASS", ""
        except AssertionError as exc:
            ok, verdict, why = False, "FAIL", f": {exc}"
        doc = (check.__doc__ or "").strip().splitlines()[0]
        say(f"{verdict:<5} {name:<14} {time.perf_counter() - start:5.2f} s  {doc}{why}")
    return ok
