"""Model adapters: everything ``--mriq-model`` accepts, behind one checked interface.

Forms: ``builtin:NAME`` (stand-ins with known behaviour), ``path/file.py:NAME`` or ``package.module:NAME``
(a factory called with a :class:`ModelContext`), a folder of pre-generated images, a TorchScript file, a MONAI bundle
folder or a diffusers pipeline folder (:mod:`mriq_validate.adapters`).
A model has ``generate(masks, *, seed)`` (mask-conditioned) and/or ``sample(n, *, seed)`` (unconditional,
images or (images, masks)). Masks are N×1×H×W integer labels; images are N×C×H×W floats in [0, 1] with one channel
per contrast of the reference data (for volume data: masks N×1×D×H×W, images N×C×D×H×W, D the axial slice index
inferior to superior, each D-slice oriented as a 2D slice), in its order (``ModelContext.contrasts``, e.g. t1, t1c, t2, flair; a suite picks
them with ``data: contrasts:``). Every output is checked; a violation raises :class:`ModelError` saying what was
expected and what came back.

User code (python files, modules, TorchScript) is imported, built and called in a child process behind an
:class:`~mriq_validate.isolation.IsolatedModel` (see isolation.py), so a model that hangs, exits or crashes cannot
take the run down; the builtin stand-ins and folder models are this tool's own code and run in-process.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adapters import DiffusersPipeline, MonaiBundle, describe_folder, folder_kind
from .axis_order import FIX, axis_order_message, axis_order_scores, mean_volume
from .builtin_models import BUILTIN_MODELS
from .cache import content_hash
from .contract import ModelContext
from .data.core import ReferenceData
from .errors import ModelError
from .isolation import DEFAULT_TIMEOUT_S, IsolatedModel
from .model_spec import ModelSpec, parse_model_spec


def _out_of_memory(exc: BaseException) -> bool:
    """MemoryError (numpy's included), torch's OutOfMemoryError, or the CPU allocator's "can't allocate memory"."""
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(exc)


def _raised(exc: BaseException) -> str:
    """``Type: message (at file:line)`` with the innermost frame of the traceback."""
    tb = traceback.extract_tb(exc.__traceback__)
    return f"{type(exc).__name__}: {exc}" + (f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else "")


def describe_raise(spec: str, what: str, exc: BaseException) -> str:
    """What the model raised in ``what`` (type, message, file:line), for a :class:`ModelError`."""
    return f"model {spec} {'ran out of memory in' if _out_of_memory(exc) else 'raised in'} {what}: {_raised(exc)}"


def _shape_text(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def check_images(out: Any, n: int | None, shape: tuple[int, ...], source: str, contrasts: tuple[str, ...] = ()) -> torch.Tensor:
    """``out`` as float32 N×C×H×W (or N×C×D×H×W) in [0, 1], ``shape`` = (C, H, W) (or (C, D, H, W)) with one channel
    per contrast in ``contrasts`` (their names, in order, for the message); ModelError saying what was expected and
    what came back."""
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    want = (n if n is not None else "N", *shape)
    per_contrast = f": one channel per contrast {', '.join(contrasts)}" if contrasts else ""
    per_contrast += " (volumes N×C×D×H×W)" if len(shape) == 4 else ""
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"{source} returned {type(out).__name__}; expected a torch.Tensor of shape {_shape_text(want)}{per_contrast}")
    if out.ndim != len(shape) + 1 or tuple(out.shape[1:]) != tuple(shape) or (n is not None and out.shape[0] != n):
        hint = ""
        if out.ndim == len(shape) + 2 and tuple(out.shape[2:]) == tuple(shape) and out.shape[1] == 1:
            hint = " (an extra axis: drop it)"
        elif out.ndim == len(shape) and len(shape) == 4:
            hint = " (4 axes: a volume model must return N volumes C×D×H×W, not slices N×C×H×W)"
        elif (out.ndim == len(shape) + 1 and len(shape) == 4 and out.shape[1] == shape[0]
              and sorted(out.shape[2:]) == sorted(shape[1:]) and tuple(out.shape[2:]) != tuple(shape[1:])):
            hint = (" (the spatial axes in another order: volumes are D×H×W, D the axial slice index inferior to superior, "
                    f"each slice H×W oriented as the data's 2D slices; an answer in X×Y×Z (NIfTI, RAS) order becomes that with {FIX})")
        elif out.ndim == len(shape) + 1 and tuple(out.shape[2:]) == tuple(shape[1:]) and out.shape[1] != shape[0]:
            hint = (f" ({out.shape[1]} channel(s) for {shape[0]} contrast(s): return every contrast the data has, in its order, "
                    f"or select the contrasts the model makes with the suite's data: contrasts)")
        raise ModelError(f"{source} returned shape {_shape_text(tuple(out.shape))}; expected {_shape_text(want)}{per_contrast}{hint}")
    if not out.is_floating_point():
        raise ModelError(f"{source} returned dtype {out.dtype}; expected a floating-point tensor with values in [0, 1]")
    out = out.detach().to("cpu", torch.float32)
    finite = torch.isfinite(out)
    if not bool(finite.all()):
        bad = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
        raise ModelError(f"{source} returned non-finite values (NaN/inf) in image(s) {bad[:10]}; expected finite values in [0, 1]")
    lo, hi = float(out.min()), float(out.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ModelError(f"{source} returned values in [{lo:.4g}, {hi:.4g}]; expected [0, 1] (normalise the output, e.g. min-max per slice)")
    return out.clamp_(0.0, 1.0)


def check_masks(out: Any, n: int, shape: tuple[int, ...], labels: set[int], source: str) -> torch.Tensor:
    """``out`` as int64 N×1×H×W or N×1×D×H×W (``shape`` = (1, H, W) or (1, D, H, W)) whose labels are all in
    ``labels`` (0 = background is always allowed)."""
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, *shape):
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        kind = " (volumes N×1×D×H×W)" if len(shape) == 4 else ""
        raise ModelError(f"{source} returned masks {got}; expected a tensor of shape {(n, *shape)}{kind}")
    if out.is_floating_point() and not bool((out == out.round()).all()):
        raise ModelError(f"{source} returned non-integer mask values; expected integer labels {sorted(labels | {0})}")
    out = out.detach().to("cpu").long()
    found = {int(v) for v in out.unique()}
    extra = found - labels - {0}
    if extra:
        raise ModelError(f"{source} returned mask labels {sorted(found)}; labels {sorted(extra)} are outside the data's label set {sorted(labels | {0})}")
    return out


def _for(items: str) -> str:
    return f" for {items}" if items else ""


class ModelAdapter:
    """The model under test, with checked outputs and a description for the report."""

    def __init__(self, model: Any, spec: str, ctx: ModelContext, provenance: dict[str, Any] | None = None) -> None:
        self.model, self.spec, self.ctx = model, spec, ctx
        self.provenance = {"spec": spec, **(provenance or {})}
        self._axis_reference: np.ndarray | None = None  # the training volumes' mean, for the axis-order check
        if not (self.can_generate or self.can_sample):
            raise ModelError(f"--mriq-model {spec}: the model ({type(model).__name__}) has neither generate(masks, *, seed) nor sample(n, *, seed)")

    @property
    def can_generate(self) -> bool:
        return callable(getattr(self.model, "generate", None))

    @property
    def can_sample(self) -> bool:
        return callable(getattr(self.model, "sample", None))

    def _call(self, what: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.model, what)(*args, **kwargs)
        except ModelError:  # already says what went wrong (e.g. the model process died or timed out)
            raise
        except Exception as exc:  # the model raised: report where, never pass
            raise ModelError(describe_raise(self.spec, f"{what}()", exc)) from exc

    def close(self) -> None:
        """Release the model (stop its process when it runs in one)."""
        close = getattr(self.model, "close", None)
        if callable(close):
            close()

    def generate(self, masks: torch.Tensor, *, seed: int, items: str = "") -> torch.Tensor:
        """Images N×C×H×W (N×C×D×H×W; one channel per contrast of the context) for ``masks`` (N×1×H×W or N×1×D×H×W),
        checked; ``items`` (e.g. ``items 256-511 of 1000``) names the call's batch in error messages."""
        if not self.can_generate:
            raise ModelError(f"model {self.spec} has no generate(masks, *, seed); this criterion needs mask-conditioned images")
        out = self._call("generate", masks.clone(), seed=seed)
        shape = (self.ctx.image_shape[0], *masks.shape[2:])
        source = f"model {self.spec} generate(){_for(items)}"
        return self._axis_order(check_images(out, masks.shape[0], shape, source, self.ctx.contrasts), source)

    def sample(self, n: int | None, *, seed: int, items: str = "") -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` unconditional images and their masks when the model makes masks (else None), checked; ``items`` names
        the call's batch in error messages."""
        if not self.can_sample:
            raise ModelError(f"model {self.spec} has no sample(n, *, seed)")
        out = self._call("sample", n, seed=seed)
        images, masks = out if isinstance(out, tuple) else (out, None)
        source = f"model {self.spec} sample(){_for(items)}"
        images = self._axis_order(check_images(images, n, self.ctx.image_shape, source, self.ctx.contrasts), source)
        if masks is not None:
            masks = check_masks(masks, images.shape[0], (1, *self.ctx.image_shape[1:]), set(self.ctx.labels.values()), source)
        return images, masks

    def _axis_order(self, images: torch.Tensor, source: str) -> torch.Tensor:
        """``images``; ModelError when they are volumes on a grid with D = W (where an X×Y×Z answer has the right shape)
        that look D↔W swapped against the training volumes (:mod:`mriq_validate.axis_order`)."""
        ref = self.ctx.train_images
        if images.ndim != 5 or images.shape[2] != images.shape[4] or not len(images) or not len(ref) or ref.shape[2:] != images.shape[2:]:
            return images
        if self._axis_reference is None:
            self._axis_reference = mean_volume(ref)
        scores = axis_order_scores(mean_volume(images, None), self._axis_reference, self.ctx.spacing_mm)
        if scores.flagged:
            raise ModelError(axis_order_message(scores, source))
        return images


# ---------------------------------------------------------------- loading


def _load_file(path: Path, name: str, spec: str) -> Callable[[ModelContext], Any]:
    if not path.is_file():
        raise ModelError(f"--mriq-model {spec}: file {path} does not exist")
    mod_name = f"mriq_user_model_{content_hash(str(path.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelError(f"--mriq-model {spec}: importing {path} raised {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, name):
        raise ModelError(f"--mriq-model {spec}: {path} defines no {name!r}")
    return getattr(module, name)


def _load_module(module_name: str, name: str, spec: str) -> Callable[[ModelContext], Any]:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelError(f"--mriq-model {spec}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, name):
        raise ModelError(f"--mriq-model {spec}: module {module_name!r} defines no {name!r}")
    return getattr(module, name)


class TorchScriptModel:
    """A TorchScript file called as ``generate``: ``module(masks.float())`` → images, with torch's default generators
    seeded with ``seed`` for the call only (a scripted module draws from them; the caller's RNG state is restored)."""

    def __init__(self, path: Path, device: torch.device) -> None:
        try:
            self.module = torch.jit.load(str(path), map_location=device)
        except Exception as exc:
            raise ModelError(f"--mriq-model {path}: not a loadable TorchScript file ({type(exc).__name__}: {exc})") from exc
        self.device = device

    @torch.no_grad()
    def generate(self, masks: torch.Tensor, *, seed: int) -> torch.Tensor:
        cuda: list[int] = []
        if self.device.type == "cuda":
            cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=cuda):
            torch.random.default_generator.manual_seed(seed)
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
            return self.module(masks.float().to(self.device))


def nifti_to_grid(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """A NIfTI array X×Y×Z (or X×Y×Z×C) and its affine on the reference data's volume grid: reoriented to RAS
    (:func:`~mriq_validate.data.preprocess.to_ras`) and turned into D×H×W (C×D×H×W) as the data's volumes are
    (:func:`~mriq_validate.data.volumes.display_volume`); and its voxel spacing (D, H, W) in mm."""
    from .data.preprocess import to_ras, voxel_sizes
    from .data.volumes import display_volume

    if np.ndim(array) not in (3, 4):
        raise ModelError(f"a NIfTI array of shape {tuple(np.shape(array))}; expected a volume X×Y×Z (or X×Y×Z×C)")
    ras, ras_affine, _ = to_ras(np.asarray(array), np.asarray(affine))
    sx, sy, sz = voxel_sizes(ras_affine)
    return display_volume(np.moveaxis(ras, 3, 0) if ras.ndim == 4 else ras), (sz, sy, sx)


def _call_factory(factory: Callable[[ModelContext], Any], spec: str, ctx: ModelContext) -> Any:
    try:
        return factory(ctx)
    except Exception as exc:
        oom = " (out of memory)" if _out_of_memory(exc) else ""
        raise ModelError(f"--mriq-model {spec}: the factory raised {_raised(exc)}{oom}") from exc


# user-code forms: kind → build(target, name, spec, ctx); called in the model process (isolation.py)
USER_MODEL_BUILDERS: dict[str, Callable[[str, str, str, ModelContext], Any]] = {
    "python-file": lambda target, name, spec, ctx: _call_factory(_load_file(Path(target), name, spec), spec, ctx),
    "module": lambda target, name, spec, ctx: _call_factory(_load_module(target, name, spec), spec, ctx),
    "torchscript": lambda target, name, spec, ctx: TorchScriptModel(Path(target), ctx.device),
    "monai-bundle": lambda target, name, spec, ctx: MonaiBundle(target, ctx),
    "diffusers": lambda target, name, spec, ctx: DiffusersPipeline(target, ctx),
}
# the class each folder kind is built with, named in the model process's loading step
FOLDER_MODEL_NAMES = {"monai-bundle": "MonaiBundle", "diffusers": "DiffusersPipeline"}


def build_user_model(kind: str, target: str, name: str, spec: str, ctx: ModelContext) -> Any:
    """Import and build user code of form ``kind``; ModelError when it cannot be loaded or has neither method."""
    model = USER_MODEL_BUILDERS[kind](target, name, spec, ctx)
    ModelAdapter(model, spec, ctx)  # neither generate nor sample: the same error as for any model
    return model


def _isolated(kind: str, target: str, name: str, spec: str, ctx: ModelContext, timeout: float,
              provenance: dict[str, Any]) -> ModelAdapter:
    model = IsolatedModel(kind, target, name, spec, ctx, timeout)
    try:
        return ModelAdapter(model, spec, ctx, {"kind": kind, **provenance, "isolation": "process", "timeout_s": timeout})
    except BaseException:
        model.close()
        raise


def _builtin(spec: ModelSpec, ctx: ModelContext, data: ReferenceData, timeout: float) -> ModelAdapter:
    if spec.target not in BUILTIN_MODELS:
        raise ModelError(f"--mriq-model {spec.text}: unknown builtin; expected one of {sorted('builtin:' + n for n in BUILTIN_MODELS)}")
    b = BUILTIN_MODELS[spec.target]
    dims = len(ctx.image_shape) - 1
    return ModelAdapter(b.factory(data), spec.text, ctx, {"kind": "builtin", "behaviour": b.describe(dims), "isolation": "in-process"})


def _file_model(spec: ModelSpec, ctx: ModelContext, data: ReferenceData, timeout: float) -> ModelAdapter:
    path = Path(spec.target)
    if not path.is_file():
        what = "TorchScript file" if spec.kind == "torchscript" else "file"
        raise ModelError(f"--mriq-model {spec.text}: {what} {path} does not exist")
    return _isolated(spec.kind, str(path.resolve()), spec.name, spec.text, ctx, timeout, {"sha256": spec.sha256()})


def _folder(spec: ModelSpec, ctx: ModelContext, data: ReferenceData, timeout: float) -> ModelAdapter:
    from .data.contrasts import contrast_name
    from .folder_model import VolumeGrid, open_folder_model

    path = Path(spec.target)
    if (kind := folder_kind(path)) is not None:  # layout checked here, built in the child
        return _isolated(kind, str(path.resolve()), FOLDER_MODEL_NAMES[kind], spec.text, ctx, timeout, describe_folder(path, kind))
    grid = VolumeGrid(tuple(data.spacing_mm), nifti_to_grid) if len(ctx.image_shape) == 4 and data is not None else None
    folder = open_folder_model(path, ctx.image_shape, set(ctx.labels.values()), ctx.contrasts, contrast_name, grid)
    return ModelAdapter(folder, spec.text, ctx, {"kind": "folder", **folder.describe(), "isolation": "in-process"})


def _module(spec: ModelSpec, ctx: ModelContext, data: ReferenceData, timeout: float) -> ModelAdapter:
    return _isolated("module", spec.target, spec.name, spec.text, ctx, timeout, {})


#: model kind (:data:`mriq_validate.model_spec.KINDS`) → what builds its checked adapter
LOADERS: dict[str, Callable[[ModelSpec, ModelContext, ReferenceData, float], ModelAdapter]] = {
    "builtin": _builtin, "torchscript": _file_model, "folder": _folder, "python-file": _file_model, "module": _module,
}


def load_model(spec: str | ModelSpec, ctx: ModelContext, data: ReferenceData, *, timeout: float = DEFAULT_TIMEOUT_S) -> ModelAdapter:
    """Resolve ``--mriq-model`` ``spec`` (:func:`~mriq_validate.model_spec.parse_model_spec`) into a checked
    :class:`ModelAdapter`; user code runs in a child process whose every call (loading included) must return within
    ``timeout`` seconds. A context without contrasts gets the data's."""
    parsed = spec if isinstance(spec, ModelSpec) else parse_model_spec(spec)
    if not ctx.contrasts and data is not None and len(data.contrasts) == ctx.image_shape[0]:
        ctx = replace(ctx, contrasts=tuple(data.contrasts))
    return LOADERS[parsed.kind](parsed, ctx, data, timeout)
