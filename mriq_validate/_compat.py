"""Import guards for optional, awkward dependencies (torchvision on a CPU-only torch, pyiqa offline)."""

from __future__ import annotations

import os
import sys
from types import ModuleType

_TV_STUB = None


def ensure_torchvision() -> str:
    """Import torchvision; return ``"native"`` or ``"stubbed"``.

    PyPI's torchvision 0.28.0 is a CUDA build: beside the CPU torch wheel its ``_meta_registrations`` fail with
    ``operator torchvision::nms does not exist``. Defining the two op schemas first lets models and transforms
    (all pyiqa needs) import; only ``torchvision.ops`` (nms, roi_align) stay unavailable. A no-op where
    torchvision imports normally (e.g. on a CUDA machine).
    """
    global _TV_STUB
    try:
        import torchvision  # noqa: F401

        return "native"
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    import torch

    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    if _TV_STUB is None:
        _TV_STUB = torch.library.Library("torchvision", "DEF")
        _TV_STUB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TV_STUB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401

    return "stubbed"


#: The environment that keeps the Hugging Face hub (pyiqa's weights) offline: a missing weight fails at once instead of
#: retrying for a minute. Read by ``huggingface_hub`` when it is first imported.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1"}


def go_offline() -> None:
    """Set :data:`OFFLINE_ENV` where the environment does not say otherwise (before pyiqa or the hub is imported)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def import_pyiqa() -> ModuleType:
    """Import pyiqa offline (:func:`go_offline`)."""
    go_offline()
    ensure_torchvision()
    try:
        import pyiqa
    except ImportError as exc:
        from .errors import MissingFileError

        raise MissingFileError(
            f"pyiqa is not importable ({exc}); install it with `pip install --no-deps pyiqa==0.1.16` "
            "(see requirements-nodeps.txt; its declared dependencies would replace the CPU torch)"
        ) from None
    return pyiqa
