"""The embedded 3D cohort (``builtin:mni-tumour-3d``): its size, how long it takes to build from an empty cache and how
much cache it takes. Writes ``docs/generated/volumes.json``. About 15-30 s on one core.

    .venv/bin/python docs/generate/volumes.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import provenance, write

SPEC = "builtin:mni-tumour-3d"


def main() -> int:
    from mriq_validate.cache import DiskCache
    from mriq_validate.data import load_data

    with tempfile.TemporaryDirectory(prefix="mriq-volumes-") as tmp:
        t0 = time.perf_counter()
        data = load_data(SPEC, DiskCache(tmp))
        build = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
        cohort = {"n_train": int(data.train.images.shape[0]), "n_test": int(data.test.images.shape[0]),
                  "shape": [int(x) for x in data.train.images.shape[1:]], "spacing_mm": float(data.spacing_mm[0]),
                  "contrasts": list(data.contrasts)}
        del data
    write("volumes", {**provenance(f"load_data({SPEC!r}, DiskCache(<empty folder>)) (docs/generate/volumes.py)"),
                      "cohort": cohort, "build_s": round(build, 1), "cache_mb": round(size / 2**20, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
