"""The package works as a wheel: built from the source, installed non-editable into a fresh virtual environment and
run from a folder outside the checkout, it finds its shipped suites (package data), lists them, and gates a model."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ONE_CRITERION = textwrap.dedent(
    """\
    mriq_suite:
      name: one
      context_of_use: a one-criterion gate from outside the checkout (tests)
      criteria:
        - id: INTENSITY
          requirement: brain 95th-percentile intensity within a factor sqrt(2) of real
          rationale: intensity scale
          metric: brain_intensity
          n_boot: 20
          params: {percentile: 95}
          threshold: {min: 0.7071, max: 1.4142, relative: ratio}
    """
)


def _run(args: list[str], cwd: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == code, f"{args}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.heavy  # a wheel build, a virtual environment and a gate run: about 40 s
def test_the_wheel_installs_into_a_fresh_venv_and_gates_from_outside_the_checkout(tmp_path: Path, cache_dir: Path) -> None:
    src = tmp_path / "src"  # the files a wheel is built from, so that the build writes nothing into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "mriq_validate", src / "mriq_validate", ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")], tmp_path)
    (wheel,) = (tmp_path / "dist").glob("mriq_validate-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    # the dependencies (torch, MONAI, ...) come from this environment's site-packages, the package only from the wheel
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp_path)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = _run([str(python), "-c", "import mriq_validate; print(mriq_validate.__file__)"], outside).stdout.strip()
    assert where.startswith(str(purelib)), where  # the installed copy, not the checkout
    cli = str(venv / "bin" / "mriq-validate")
    assert "--suites" in _run([cli, "demo", "--help"], outside).stdout
    assert _run([cli, "selftest"], outside).stdout.count("PASS ") == 5  # the known answers, from the installed package
    listed = _run([cli, "list"], outside).stdout
    shipped = purelib / "mriq_validate" / "suites"
    for name in ("brain_tumour.yaml", "brain_tumour_3d.yaml", "vessels.yaml"):
        assert f"{shipped / name}  " in listed, listed
    (outside / "one.yaml").write_text(ONE_CRITERION)
    gate = _run([str(python), "-m", "pytest", "one.yaml", "--mriq-model", "builtin:real", f"--mriq-cache={cache_dir}",
                 "-p", "no:cacheprovider", "-q", "--mriq-report", "out"], outside)
    assert "release decision: CLEARED" in gate.stdout
    assert (outside / "out" / "report.json").is_file()
    # a shipped suite, by the path `list` printed (collected only: the run is then INCOMPLETE, exit 1)
    collected = _run([str(python), "-m", "pytest", str(shipped / "vessels.yaml"), "--collect-only", "-q", "-p", "no:cacheprovider"],
                     outside, code=1)
    assert "12 tests collected" in collected.stdout and "release decision: INCOMPLETE" in collected.stdout
