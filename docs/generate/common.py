"""What every generator under ``docs/generate/`` shares: running the real command, the provenance of a measurement
(commit, date, machine, command) and writing ``docs/generated/<name>.json``.

A generator measures and records; it never writes prose. The prose is rendered from the JSON by :mod:`render`, so the
text in README.md and docs/*.md can be checked against the JSON (``tests/test_docs_generated.py``).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "docs" / "generated"
BIN = Path(sys.executable).parent  # the venv that runs the generator (``make docs`` runs them with .venv/bin/python)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else :func:`platform.processor`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Cores, CPU model, architecture, OS and the accelerator a measurement ran on (``cpu`` when none)."""
    device = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu_model(), "arch": platform.machine(), "os": platform.system(),
            "device": device, "torch_threads": int(os.environ.get("MRIQ_TORCH_THREADS", "1")),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def commit() -> str:
    """HEAD's commit, with ``+dirty`` when the working tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def provenance(command: str | list[str]) -> dict[str, Any]:
    """The fields every ``docs/generated/*.json`` carries: ``commit``, ``date`` (UTC, ISO), ``machine``, ``command``."""
    cmd = command if isinstance(command, str) else shlex.join(command)
    return {"commit": commit(), "date": datetime.now(timezone.utc).date().isoformat(), "machine": machine(), "command": cmd}


def env() -> dict[str, str]:
    """The environment the commands run in: one torch thread (as the docs' figures were measured), the repo's cache."""
    e = dict(os.environ)
    e.setdefault("MRIQ_TORCH_THREADS", "1")
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    return e


def run(cmd: list[str], *, cwd: Path = ROOT, check: bool = True, echo: bool = True) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``cmd`` (stdout captured, stderr passed through so progress shows); (the result, wall seconds)."""
    if echo:
        print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if check and res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:])
        raise SystemExit(f"{shlex.join(cmd)} exited {res.returncode}")
    return res, wall


def write(name: str, record: dict[str, Any], *, fill: bool = True) -> Path:
    """Write ``docs/generated/<name>.json`` (it must carry :func:`provenance`'s fields) and, with ``fill``, refill
    the docs' blocks rendered from it (:func:`render.fill_all`)."""
    missing = [k for k in ("commit", "date", "machine", "command") if k not in record]
    if missing:
        raise ValueError(f"{name}: the record lacks {missing}")
    GENERATED.mkdir(parents=True, exist_ok=True)
    path = GENERATED / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    if fill:
        from render import fill_all

        for doc in fill_all({name}):
            print(f"filled {doc.relative_to(ROOT)}", file=sys.stderr)
    return path
