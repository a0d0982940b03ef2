"""The README's first example: the shipped 2D suite against ``builtin:tumour-eraser`` (real images with the lesion
in-painted away), which must end NOT CLEARED on DICE-WT while PIQE does not object. Writes ``docs/generated/eraser.json``
(DICE-WT's message as the run printed it, the decision, the exit status, PIQE on the eraser's and the real images).

    .venv/bin/python docs/generate/eraser.py                  # runs the gate (a few minutes with a warm cache)
    .venv/bin/python docs/generate/eraser.py --from DIR       # reads the report of a run made with that command
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import BIN, provenance, run, write

SUITE = "suites/brain_tumour.yaml"
EXIT = {"CLEARED": 0, "NOT CLEARED": 1}  # the plugin's exit status for a complete decision


def command(report: str) -> list[str]:
    return [str(BIN / "python"), "-m", "pytest", SUITE, "--mriq-model", "builtin:tumour-eraser", "--mriq-report",
            report, "-p", "no:cacheprovider", "-q"]


def record(report_dir: Path, exit_status: int | None) -> dict[str, Any]:
    """The values the docs show, read from the run's ``report.json``."""
    rep = json.loads((report_dir / "report.json").read_text())
    by_id = {r["criterion_id"]: r for r in rep["results"]}
    dice, piqe = by_id["DICE-WT"], by_id["IQA-PIQE"]
    per = {c: {"model": v["value"]["value"], "real": v["baseline"]["value"], "verdict": v["verdict"]}
           for c, v in (piqe.get("per_contrast") or {}).items()}
    dec = rep["decision"]
    return {"decision": dec["status"], "exit_status": EXIT.get(dec["status"]) if exit_status is None else exit_status,
            "failed_gating": sorted({i.split("::")[-1].split("[")[0] for i in dec["failed_gating"]}),
            "dice_wt_message": dice["message"],
            "dice_wt": {"generated": dice["compared"]["value"], "real": dice["value"]["value"], "checked": dice["checked"]},
            "piqe": {"verdict": piqe["verdict"], "per_contrast": per or {"all": {"model": piqe["value"]["value"],
                     "real": piqe["baseline"]["value"], "verdict": piqe["verdict"]}}}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", type=Path, help="a report folder of this command's run, instead of running it")
    args = ap.parse_args(argv)
    shown = ["pytest", *command("REPORT_DIR")[3:]]
    if args.source:
        rec = record(args.source, None)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            res, wall = run(command(tmp), check=False)
            sys.stdout.write(res.stdout[-2000:])
            rec = record(Path(tmp), res.returncode)
            rec["wall_s"] = round(wall, 1)
    write("eraser", {**provenance(shown), **rec})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
