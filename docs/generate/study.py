"""The metric study on the embedded data (Deo et al. 2025, *Metrics that matter*, arXiv 2505.07175): every measure ×
every perturbation and stand-in, against Dice. Runs ``mriq-validate study --data builtin:mni-tumour --seed 0`` (about
20-60 min on 2 CPU cores), copies its figures to ``docs/study_*.png`` and writes ``docs/generated/study.json``: the
generated part of docs/study.md as the study rendered it, and the values the summaries show. ``make docs-long``.

    .venv/bin/python docs/generate/study.py                   # runs the study into a temporary folder
    .venv/bin/python docs/generate/study.py --from DIR        # reads a finished run of that command (its --out DIR)
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from common import BIN, ROOT, provenance, run, write

ARGS = ["--data", "builtin:mni-tumour", "--seed", "0"]


def record(out: Path) -> dict[str, Any]:
    """What the docs show, from the study's ``study.json`` and ``study.md``."""
    s = json.loads((out / "study.json").read_text())
    corr = [{"measure": r["measure"], "family": r["family"], "spearman": r["spearman"], "ci_low": r["spearman_ci_low"],
             "ci_high": r["spearman_ci_high"], "label": r["label"]} for r in s["correlation"]]
    f = s["findings"]
    return {"data": s["config"]["data"], "seed": s["config"]["seed"], "region": s["region"],
            "n_measures": len(s["measures"]), "n_conditions": len(s["conditions"]),
            "runtime_s": s["provenance"]["runtime_s"], "correlation": corr,
            "ranking": {"dice": f["ranking"]["dice"], "median_other": f["ranking"]["nr_median"]},
            "global_noise_detected_at_strongest": f["global_noise"]["nr_detection_rate_strongest"],
            "localised_edits_detected": f["localised_edits"]["nr_detection_rate"],
            "markdown": (out / "study.md").read_text(encoding="utf-8")}


def copy_figures(out: Path) -> None:
    """The study's figures next to docs/study.md (its generated block links them)."""
    for fig in sorted((out / "figures").glob("study_*.png")):
        shutil.copyfile(fig, ROOT / "docs" / fig.name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", type=Path, help="the --out folder of a finished run of this command")
    args = ap.parse_args(argv)
    shown = "mriq-validate study " + " ".join(ARGS)
    if args.source:
        rec = record(args.source)
        copy_figures(args.source)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run([str(BIN / "mriq-validate"), "study", *ARGS, "--out", tmp])
            rec = record(Path(tmp))
            copy_figures(Path(tmp))
    write("study", {**provenance(shown), **rec})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
