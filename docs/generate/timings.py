"""Wall times a newcomer meets, from a fresh clone of HEAD: ``make venv``, ``make demo`` with an empty cache and again
warm, ``make test`` (and, with ``--heavy``, ``make test-heavy``). Writes ``docs/generated/timings.json``. About
25 min on 2 CPU cores (45 with ``--heavy``); run it on a machine otherwise quiet, since the figures are wall times.
``make docs-long``.

    .venv/bin/python docs/generate/timings.py [--heavy] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from common import ROOT, provenance, run, write

HEAVY_TESTS = ("the end-to-end runs of the shipped suite, protocol B through the plugin, the noise-floor trainings, "
               "the xdist and shard report identities, the quick study, the downstream table, the example generator's "
               "reduced training gated while it trains, and flat memory on a 6000-slice mapped split: `-m heavy`")


def passed(out: str) -> int:
    """The number of tests pytest's last summary line counts as passed."""
    m = re.findall(r"(\d+) passed", out)
    if not m:
        raise SystemExit("no 'N passed' in make's output")
    return int(m[-1])


def demo_result(out: str) -> tuple[str, int]:
    """The release decision and the number of criterion items (every test pytest's summary line counts) of a
    ``make demo`` run."""
    dec = re.findall(r"release decision: ([A-Z ]+?)(?: \(|\s*$)", out, re.M)
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed)", line)][-1]
    return (dec[-1] if dec else "unknown"), sum(int(n) for n in re.findall(r"(\d+) (?:passed|failed|skipped|errors?)\b", summary))


def du_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 1e9


def measure(clone: Path, heavy: bool) -> dict[str, Any]:
    v: dict[str, Any] = {}
    _, v["venv_s"] = run(["make", "venv"], cwd=clone)
    v["venv_gb"] = round(du_gb(clone / ".venv"), 2)
    res, v["demo_cold_s"] = run(["make", "demo"], cwd=clone)
    v["demo_decision"], v["demo_items"] = demo_result(res.stdout)
    _, v["demo_warm_s"] = run(["make", "demo"], cwd=clone)
    shutil.rmtree(clone / ".mriq-cache", ignore_errors=True)  # make test from an empty cache, as CI runs it
    res, v["test_s"] = run(["make", "test"], cwd=clone)
    v["test_count"] = passed(res.stdout)
    if heavy:
        res, v["test_heavy_s"] = run(["make", "test-heavy"], cwd=clone)
        v["test_heavy_count"] = passed(res.stdout)
    return {k: round(x, 1) if isinstance(x, float) else x for k, x in v.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heavy", action="store_true", help="also time make test-heavy")
    ap.add_argument("--keep", type=Path, help="clone into this (new) folder and keep it")
    args = ap.parse_args(argv)
    os.environ.pop("MRIQ_CACHE_DIR", None)  # the clone's own empty cache (<clone>/.mriq-cache), never a shared one
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="mriq-timings-")
    clone = args.keep or Path(tmp.name) / "clone"
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        values = measure(clone, args.heavy)
    finally:
        if tmp:
            tmp.cleanup()
    steps = "make venv; make demo (empty cache); make demo (warm); make test (empty cache)" + ("; make test-heavy" if args.heavy else "")
    write("timings", {**provenance(f"python docs/generate/timings.py{' --heavy' if args.heavy else ''} "
                                   f"(a fresh clone of HEAD: {steps})"),
                      "conditions": "fresh clone, otherwise quiet machine:", "values": values,
                      **({"heavy_tests": HEAVY_TESTS} if args.heavy else {})})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
