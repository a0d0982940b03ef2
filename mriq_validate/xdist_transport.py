"""pytest-xdist: what a worker hands the controller so that the controller writes one report.

Each criterion's record travels with its test report (``rep.mriq_record``). What only the workers know (the suites,
the collected plan, threshold overrides, the context provenance, the optional sample images and the worst-case
gallery's images) is sent once, when a worker's session ends, as JSON text under ``workeroutput["mriq"]``; arrays are
sent as base64 bytes with their dtype and shape.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run_state import MriqRun

WORKER_OUTPUT_KEY = "mriq"


def worker_payload(run: MriqRun) -> str:
    """On a worker, at the end of its session: what the controller needs from this worker, as JSON text."""
    return json.dumps({
        "suites": run.suites, "deviations": run.deviations, "planned": run.planned, "collected": run.collected,
        "criterion_ids": sorted(run.criterion_ids),
        "contexts": [c.provenance() for c in run.contexts.values()],
        "sample_images": encode_arrays(run.sample_images) if run.sample_images else None,
        "gallery_images": {k: {"meta": g["meta"], "arrays": encode_arrays(g["arrays"])} for k, g in run.gallery_images.items()},
    }, default=str)


def merge_payload(run: MriqRun, payload: str) -> None:
    """On the controller, when a worker goes down: merge what the worker knows (from :func:`worker_payload`) into ``run``."""
    data = json.loads(payload)
    run.xdist_workers += 1
    for path, suite in data["suites"].items():
        run.suites.setdefault(path, suite)
    for dev in data["deviations"]:
        if dev not in run.deviations:
            run.deviations.append(dev)
    for item_id, entry in data["planned"].items():
        run.planned.setdefault(item_id, entry)
    for item_id, entry in data["collected"].items():
        run.collected.setdefault(item_id, entry)
    run.criterion_ids.update(data["criterion_ids"])
    run.worker_contexts.extend(data["contexts"])
    if run.sample_images is None and data.get("sample_images"):
        run.sample_images = decode_arrays(data["sample_images"])
    for item_id, g in (data.get("gallery_images") or {}).items():
        run.gallery_images.setdefault(item_id, {"meta": g["meta"], "arrays": decode_arrays(g["arrays"])})


def _as_numpy(x: Any) -> Any:
    import numpy as np

    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def encode_arrays(arrays: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Arrays (numpy or torch; None values are left out) as JSON-able ``{dtype, shape, base64}``; floats as float32."""
    out = {}
    for key, value in arrays.items():
        if value is None:
            continue
        a = _as_numpy(value)
        a = a.astype("float32") if a.dtype.kind == "f" else a
        out[key] = {"dtype": a.dtype.str, "shape": list(a.shape), "base64": base64.b64encode(a.tobytes()).decode("ascii")}
    return out


def decode_arrays(encoded: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The inverse of :func:`encode_arrays` (numpy arrays)."""
    import numpy as np

    return {k: np.frombuffer(base64.b64decode(v["base64"]), dtype=np.dtype(v["dtype"])).reshape(v["shape"]).copy()
            for k, v in encoded.items()}
