"""``mriq-validate selftest`` runs known answers from the installed package, and fails when one breaks."""

from __future__ import annotations

import pytest

from mriq_validate import selftest
from mriq_validate.cli import main as cli_main


def test_every_check_passes_and_the_command_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["selftest"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[:2] for line in out.splitlines()] == [["PASS", name] for name in selftest.CHECKS]


@pytest.mark.parametrize("target, broken", [
    ("mriq_validate.metrics.functional.downstream.dice_per_image", lambda p, t: __import__("numpy").full(len(p), 0.5)),
    ("mriq_validate.metrics.functional.distribution.frechet_distance", lambda *a: 0.0),
    ("mriq_validate.bounds.seed_sd_multiplier", lambda c, k: c),  # the bound not widened for the SD's own uncertainty
])
def test_a_broken_implementation_fails_its_check_and_the_command(target: str, broken, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(target, broken)
    assert cli_main(["selftest"]) == 1
    assert "FAIL " in capsys.readouterr().out
