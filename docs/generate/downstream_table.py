"""The downstream table (TRTR, protocol A, TSTR Dice and PIQE of every builtin stand-in, flags from the shipped suite)
as ``mriq-validate downstream-table`` prints it. Writes ``docs/generated/downstream_table.json``: the markdown and the
headline values (TRTR Dice, seed-to-seed SD, the TSTR bound).

    .venv/bin/python docs/generate/downstream_table.py        # cold: one segmenter training per TSTR model and seed
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from common import BIN, provenance, run, write


def values(markdown: str) -> dict[str, Any]:
    """TRTR Dice with its CI, the seed SD and the TSTR bound, read from the table's text."""
    trtr = re.search(r"\*\*TRTR\*\*.*?Dice ([\d.]+) \[([\d.]+), ([\d.]+)\]; seed-to-seed SD over (\d+) training seeds "
                     r"\*\*([\d.]+)\*\*", markdown)
    bound = re.search(r"\*\*TSTR\*\* \(DICE-TSTR-WT\) when .*?\((-?[\d.]+)\)", markdown)
    if not trtr:
        raise SystemExit("downstream-table: no TRTR line in its output; has its format changed?")
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and re.match(r"[+-]\d", cells[3]):
            rows.append({"model": cells[0], "piqe_delta": float(cells[3].split()[0]), "dice_a_delta": float(cells[5].split()[0]),
                         "flags": [] if cells[9] == "none" else [f.strip() for f in cells[9].split(",")]})
    return {"rows": rows, "trtr": float(trtr[1]), "trtr_ci": [float(trtr[2]), float(trtr[3])], "noise_seeds": int(trtr[4]),
            "seed_sd": float(trtr[5]), "tstr_bound": float(bound[1]) if bound else None}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "table.md"
        res, wall = run([str(BIN / "mriq-validate"), "downstream-table", "--out", str(out)])
        markdown = out.read_text(encoding="utf-8")
    write("downstream_table", {**provenance("mriq-validate downstream-table"), "markdown": markdown.strip("\n") + "\n",
                               **values(markdown), "wall_s": round(wall, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
