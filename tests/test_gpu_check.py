"""benchmarks/gpu_check.py: refuses without CUDA, and its CPU smoke run prints every row of its table and writes every
field of its JSON, all numbers finite (the measured values themselves are not checked: they depend on the machine)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mriq_validate.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
FIELDS = ("card", "torch", "monai", "date", "command", "smoke", "sizes", "throughput", "bf16", "suite", "plugin",
          "peak_memory_mb", "peak_memory_kind", "wall_s", "table")


def run(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MRIQ_TORCH_THREADS": "1", "MRIQ_CACHE_DIR": str(tmp / "cache")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=600)


def numbers(value: Any) -> list[float]:
    """Every number in a JSON value."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda(tmp_path: Path) -> None:
    done = run(tmp=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "CUDA" in done.stderr and "--smoke" in done.stderr
    assert done.stdout == ""


@pytest.mark.heavy
def test_smoke_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    done = run("--smoke", "--json", str(out), tmp=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| part ")]
    items = {tuple(c.strip() for c in line.strip("|").split("|")[:2]) for line in rows}
    parts = {part for part, _ in items}
    assert parts == {"throughput", "bf16", "suite", "plugin", "memory", "total"}
    for precision in ("fp32", "bf16"):
        for source in ("memory", "mapped"):
            assert any(p == "throughput" and item.endswith(f"{precision} {source}") for p, item in items)
    for region in ("WT", "TC", "ET"):
        assert any(p == "bf16" and item.startswith(f"Dice {region} ") for p, item in items)
    for stage in ("build", "load", "generate", "segmenter", "suite"):
        assert any(p == "suite" and item.endswith(f": {stage}") for p, item in items)
        assert any(p == "memory" and item == f"peak suite/{stage}" for p, item in items)
    for crit in load_suite(ROOT / "mriq_validate" / "suites" / "brain_tumour.yaml").criteria:
        assert any(p == "suite" and item.startswith(f"criterion {crit.id}") for p, item in items), crit.id
    assert {("memory", "peak throughput"), ("memory", "peak bf16"), ("total", "wall time")} <= items

    result = json.loads(out.read_text())
    assert set(FIELDS) <= set(result)
    assert result["smoke"] is True and result["table"] in done.stdout
    assert all(math.isfinite(x) for x in numbers(result)), "a measured value is not finite"
    assert all(t["ratio"] > 0 and t["bare_img_s"] > 0 and t["mriq_img_s"] > 0 for t in result["throughput"])
    assert all(0 <= result["bf16"][r][p] <= 1 for r in ("WT", "TC", "ET") for p in ("fp32", "bf16"))
    assert result["suite"]["stages"]["generate"]["items"] > 0
    assert result["plugin"]["as_expected"] and result["plugin"]["verdicts"]
    assert all(mb > 0 for mb in result["peak_memory_mb"].values())
