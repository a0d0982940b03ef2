"""False-alarm rate of the training-noise bound (``unit: seed_sd``) on faithful models, measured by
``benchmarks/seed_floor.py`` (a source checkout's benchmark) with explicit options, so its defaults do not matter.
Trains 10 TRTR segmenters on one thread (cached; about 1 min each on a quiet core) and writes
``docs/generated/seed_floor.json``: the per-seed Dice means and, per k and rule, the analytic and measured rates.
``make docs-long``.

    .venv/bin/python docs/generate/seed_floor.py [--seeds 10]
    .venv/bin/python docs/generate/seed_floor.py --from LOG   # reads the output of a run of the same command
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path
from typing import Any

from common import BIN, ROOT, provenance, run, write

K_SHIPPED = 5  # DICE-TSTR-WT's noise_seeds in suites/brain_tumour.yaml
ROW = re.compile(r"^\| (\d+) \| ([^|]+?) \| ([\d.]+) \| ([\d.]+) \| (\d+)/(\d+) = [\d.]+ \| (\d+)/(\d+) = [\d.]+ \|$")


def parse(out: str) -> dict[str, Any]:
    """Seed means, SD and the table rows from the benchmark's printout."""
    means = re.search(r"over \d+ training seeds: ([\d., ]+)\n", out)
    if not means:
        raise SystemExit("seed_floor.py: no per-seed means in its output; has its format changed?")
    seed_means = [float(x) for x in means[1].split(",")]
    rows = []
    for line in out.splitlines():
        m = ROW.match(line.strip())
        if m:
            rows.append({"k": int(m[1]), "rule": m[2].strip(), "multiplier": float(m[3]), "analytic": float(m[4]),
                         "baseline0_n": int(m[6]), "baseline0_rate": int(m[5]) / int(m[6]),
                         "every_n": int(m[8]), "every_rate": int(m[7]) / int(m[8])})
    if not any(r["k"] == K_SHIPPED for r in rows):
        raise SystemExit(f"seed_floor.py: no row for k = {K_SHIPPED} in its output")
    return {"seed_means": seed_means, "sd": statistics.stdev(seed_means), "rows": rows, "k_shipped": K_SHIPPED}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--c", type=float, default=3.0)
    ap.add_argument("--from", dest="source", type=Path, help="a saved printout of the same command")
    args = ap.parse_args(argv)
    opts = ["--seeds", str(args.seeds), "--k", "3", str(K_SHIPPED), "--c", f"{args.c:g}", "--cache", ".mriq-cache"]
    shown = "MRIQ_TORCH_THREADS=1 python benchmarks/seed_floor.py " + " ".join(opts)
    if args.source:
        out, wall = args.source.read_text(), None
    else:
        res, wall = run([str(BIN / "python"), str(ROOT / "benchmarks" / "seed_floor.py"), *opts])
        out = res.stdout
    rec = {**provenance(shown), **parse(out), "c": args.c, "printout": out}
    if wall is not None:
        rec["wall_s"] = round(wall, 1)
    write("seed_floor", rec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
