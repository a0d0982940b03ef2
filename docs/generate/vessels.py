"""The shipped vessel suite against ``builtin:real`` on ``builtin:mni-vessel``: how many items it runs and its decision.
Writes ``docs/generated/vessels.json``. A minute or two with a warm cache (``<repo>/.mriq-cache``).

    .venv/bin/python docs/generate/vessels.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from common import BIN, provenance, run, write

SUITE = "suites/vessels.yaml"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mriq-vessels-") as tmp:
        res, wall = run([str(BIN / "python"), "-m", "pytest", SUITE, "--mriq-model", "builtin:real", "--mriq-report", tmp,
                         "-p", "no:cacheprovider", "-q"], check=False)
        rep = json.loads((Path(tmp) / "report.json").read_text())
    dec = rep["decision"]
    write("vessels", {**provenance(f"pytest {SUITE} --mriq-model builtin:real"), "items": dec["n_criteria"],
                      "gating_items": dec["n_gating"], "decision": dec["status"], "exit_status": res.returncode,
                      "advisory_failed": sorted(i.split("::")[-1] for i in dec["advisory_failed"]), "wall_s": round(wall, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
