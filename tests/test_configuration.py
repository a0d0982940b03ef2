"""One source of configuration: the checkout's conftest (cache folder, offline), the option parsers the plugin and the CLI
share, the CLI's errors (one paragraph, exit 2, no traceback) and the NIfTI loading defaults."""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mriq_validate import cli, options, plugin
from mriq_validate._compat import OFFLINE_ENV
from mriq_validate.data import nifti
from mriq_validate.suite import DataOptions

REPO = Path(__file__).resolve().parents[1]


def _clean_env() -> dict[str, str]:
    """This environment without the settings the checkout's conftest provides."""
    return {k: v for k, v in os.environ.items() if k not in ("MRIQ_CACHE_DIR", *OFFLINE_ENV, "PYTEST_ADDOPTS")}


def test_a_run_from_the_checkout_uses_the_repository_cache_and_stays_offline() -> None:
    """pytest started in the repository (as `make test` and .ci/run do) gets <repo>/.mriq-cache and the offline setting
    from the top-level conftest, with neither set in the environment. (docs/ holds no tests, so only the top-level
    conftest is loaded; pytest then exits 5, no tests collected.)"""
    keys = sorted(OFFLINE_ENV)
    code = ("import os, pytest\n"
            "code = pytest.main(['-q', '-p', 'no:cacheprovider', 'docs'])\n"
            "print('EXIT', int(code))\n"
            "print('CACHE', os.environ.get('MRIQ_CACHE_DIR', '-'))\n"
            f"print('OFFLINE', *(os.environ.get(k, '-') for k in {keys!r}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert "EXIT 5" in lines, done.stdout + done.stderr
    assert f"CACHE {REPO / '.mriq-cache'}" in lines
    assert f"OFFLINE {' '.join(OFFLINE_ENV[k] for k in keys)}" in lines


# ------------------------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("argv", [["study"], ["downstream-table"], ["calibrate", "--suite", "s.yaml", "--out", "o.yaml"]])
@pytest.mark.parametrize("option, value, parser", [("--seed", "-1", options.parse_seed), ("--seed", "1.5", options.parse_seed),
                                                   ("--device", "gpu", options.parse_device), ("--device", "cuda:", options.parse_device)])
def test_the_cli_refuses_what_the_plugin_refuses(argv: list[str], option: str, value: str, parser: object,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--seed and --device take the values --mriq-seed and --mriq-device take, with the same message, before any work."""
    with pytest.raises(argparse.ArgumentTypeError) as expected:
        parser(value)  # type: ignore[operator]
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args([*argv, option, value])
    assert exit_.value.code == 2
    assert f"argument {option}: {expected.value}" in capsys.readouterr().err
    assert plugin.parse_seed is options.parse_seed and plugin.parse_device is options.parse_device  # the plugin's, too


def test_the_cli_accepts_what_the_plugin_accepts() -> None:
    args = cli.build_parser().parse_args(["study", "--seed", "7", "--device", "cuda:1"])
    assert (args.seed, args.device) == (7, "cuda:1")


@pytest.mark.parametrize("argv", [
    ["study", "--data", "{missing}", "--out", "{tmp}/study"],
    ["downstream-table", "--data", "{missing}"],
    ["export-masks", "{tmp}/masks", "--data", "{missing}"],
    ["calibrate", "--suite", "{missing}.yaml", "--out", "{tmp}/o.yaml"],
    ["demo", "--suites", "{missing}"],
])
def test_a_user_error_is_one_paragraph_with_exit_status_2(argv: list[str], tmp_path: Path, cache_dir: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-folder"
    argv = [a.format(missing=missing, tmp=tmp_path) for a in argv]
    assert cli.main([*argv, *(["--cache", str(cache_dir)] if argv[0] in ("study", "downstream-table", "export-masks") else [])]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mriq-validate {argv[0]}: ") and str(missing) in err
    assert "Traceback" not in err and "\n\n" not in err.strip()


def test_a_multi_line_suite_error_stays_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text("mriq_suite:\n  name: x\n  criteria:\n    - id: A\n      metric: dicee\n    - id: B\n      metric: fidd\n")
    assert cli.main(["calibrate", "--suite", str(suite), "--out", str(tmp_path / "o.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mriq-validate calibrate: invalid suite:") and "Traceback" not in err and "\n\n" not in err
    assert f"{suite}:5: mriq_suite.criteria[0].metric: unknown metric 'dicee'" in err and "unknown metric 'fidd'" in err


# ----------------------------------------------------------------------------------------------------- NIfTI defaults


def test_a_suite_without_data_options_loads_a_folder_with_the_loaders_defaults() -> None:
    """The loader's defaults are the module constants, and a suite without a data block loads a folder with them (whether
    the suite passes them on or leaves them to the loader)."""
    defaults = {"modality": nifti.DEFAULT_MODALITY, "crop": nifti.DEFAULT_CROP, "test_fraction": nifti.DEFAULT_TEST_FRACTION,
                "slices": nifti.DEFAULT_SLICES}
    signature = inspect.signature(nifti.load_nifti_folder).parameters
    assert {k: signature[k].default for k in defaults} == defaults
    assert {**defaults, **DataOptions().options_for("some/folder")} == defaults
