"""The run's results: per-criterion records, the release decision, provenance, and ``verdicts.json``."""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

REPORT_SCHEMA_VERSION = "0.1"
PACKAGES = ("mriq-validate", "torch", "monai", "pyiqa", "numpy", "scipy", "pydantic", "nibabel", "pytest")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that change the numbers."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def decision(results: list[dict[str, Any]]) -> dict[str, Any]:
    """CLEARED when every gating criterion passed; INCOMPLETE when any criterion ERRORed or a gating one was skipped or
    did not run; NOT CLEARED when a gating criterion FAILed (and nothing was incomplete)."""
    gating = [r for r in results if r["gate"]]
    errors = [r["item_id"] for r in results if r["verdict"] == "ERROR"]
    skipped = [r["item_id"] for r in gating if r["verdict"] == "SKIP"]
    failed = [r["item_id"] for r in gating if r["verdict"] == "FAIL"]
    if errors or skipped or not gating:
        status = "INCOMPLETE"
    elif failed:
        status = "NOT CLEARED"
    else:
        status = "CLEARED"
    return {"status": status, "failed_gating": failed, "errors": errors, "skipped_gating": skipped,
            "n_criteria": len(results), "n_gating": len(gating)}


def now_iso() -> str:
    """UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_report(results: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: schema version, decision, run settings and provenance, results in node-id order."""
    ordered = sorted(results, key=lambda r: r["item_id"])
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "decision": decision(ordered),
        "run": {**run, "python": sys.version.split()[0], "platform": platform.platform(), "packages": package_versions()},
        "results": ordered,
    }


def write_report(report: dict[str, Any], folder: Path) -> Path:
    """Write ``verdicts.json`` into ``folder``; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "verdicts.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    return path
