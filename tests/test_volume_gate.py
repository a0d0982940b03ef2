"""A gate run on volumes, end to end through the plugin: a BraTS 2021 cohort of NIfTI volumes read with
``slicing: volume``, a suite of the shipped 3D suite's gating measures (3D Dice, copy detection on volumes, a 3D
self-check), builtin:real CLEARED and builtin:tumour-eraser NOT CLEARED by the Dice gate. The shipped suite itself on
the embedded 3D data is measured by benchmarks/volume_gate.py (minutes, not a test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mriq_validate.data.cohort_writer import write_cohort

# 10 cases at 6 mm on a 32×40×32 grid: 6 train / 4 test volumes. Four held-out volumes allow a copy test at alpha ≥ 1/5.
SUITE = """
mriq_suite:
  name: volume-gate-test
  context_of_use: a small cohort of 3D tumour volumes for the plugin's volume path
  data:
    slicing: volume
    spacing_mm: 6.0
    shape: [32, 40, 32]
    test_fraction: 0.4
  criteria:
    - id: DICE-WT
      requirement: whole-tumour Dice per volume on generated volumes at most 0.05 below real volumes with the same masks
      rationale: as suites/brain_tumour_3d.yaml
      gate: true
      metric: dice
      params: {region: whole_tumour, segmenter: {channels: [8, 16, 32], strides: [2, 2], epochs: 24}}
      threshold: {min: -0.05, relative: difference}
    - id: MEM-COPY
      requirement: generated volumes are not copies of training volumes (conformal test on volumes)
      rationale: alpha 0.2 is the smallest the four held-out volumes allow
      gate: true
      metric: copy_fraction
      params: {alpha: 0.2}
      threshold: {max: 0.2, on: lower_ci}
    - id: SELF-DICE-ERASE
      kind: sensitivity
      requirement: 3D Dice drops by at least 0.1 when the tumour is erased
      rationale: as suites/brain_tumour_3d.yaml
      gate: true
      metric: dice
      params: {region: whole_tumour, segmenter: {channels: [8, 16, 32], strides: [2, 2], epochs: 24}}
      perturbation: {name: lesion_erase, amount: 1.0}
      threshold: {min: 0.1}
"""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("volumes") / "brats2021"
    write_cohort(folder, "brats2021", 10, seed=3, voxel_mm=6.0, shape=(32, 40, 32), orientation="LPS")
    return folder


def _run(run_plugin, pytester: pytest.Pytester, cohort: Path, model: str) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    suite = pytester.path / "volumes.yaml"
    suite.write_text(SUITE)
    out = pytester.path / f"out-{model.split(':')[-1]}"
    result = run_plugin(str(suite), "--rootdir", str(pytester.path), f"--mriq-model={model}", f"--mriq-data={cohort}",
                        f"--mriq-report={out}", "--mriq-device=cpu")
    return int(result.ret), json.loads((out / "report.json").read_text())


def test_real_volumes_clear_and_erased_tumours_fail_the_dice_gate(run_plugin, pytester, cohort) -> None:  # type: ignore[no-untyped-def]
    code, report = _run(run_plugin, pytester, cohort, "builtin:real")
    assert report["decision"]["status"] == "CLEARED", report["decision"]
    assert code == 0
    data = report["provenance"]["contexts"]
    ctx = next(iter(data.values())) if isinstance(data, dict) else data[0]
    assert ctx["data"]["item_kind"] == "volumes" and ctx["data"]["image_shape"] == [4, 32, 40, 32], ctx["data"]

    code, report = _run(run_plugin, pytester, cohort, "builtin:tumour-eraser")
    assert code != 0 and report["decision"]["status"] == "NOT CLEARED"
    assert any(item.endswith("::DICE-WT") for item in report["decision"]["failed_gating"]), report["decision"]
    dice = next(r for r in report["results"] if r["criterion_id"] == "DICE-WT")
    assert dice["checked"] < -0.1  # an erased tumour is not found in 3D (measured: the difference is the whole real Dice)
