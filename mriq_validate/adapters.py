"""Models as users ship them: a MONAI bundle folder or a diffusers pipeline folder, as ``--mriq-model PATH``.

Both are user code (a bundle's config runs ``$`` expressions and imports ``_target_`` classes; a pipeline imports
its components), so they are built and called in the model process like a ``file.py:NAME`` factory
(:mod:`mriq_validate.isolation`); the layout is checked here first, in the parent, so a missing file is named at
once. Nothing is downloaded: weights come from the folder only.

**MONAI bundle** (`MONAI bundle specification <https://docs.monai.io/en/stable/mb_specification.html>`_), recognised
by ``configs/metadata.json`` and ``configs/inference.json`` (or ``.yaml`` / ``.yml``). The supported subset:

* the network: config id ``network_def`` (else ``network``), built with :class:`monai.bundle.ConfigParser`
  (``bundle_root`` set to the folder, ``device`` to the run's device), weights from ``models/model.pt`` (a state
  dict, or a dict holding it under ``model`` / ``state_dict`` / ``network``); or a TorchScript ``models/model.ts``;
* the sampler: a MONAI scheduler at id ``scheduler`` (else ``noise_scheduler``, else ``inferer``'s ``scheduler``),
  e.g. :class:`monai.networks.schedulers.DDPMScheduler` / ``DDIMScheduler``, run for ``num_inference_steps`` (config
  id of that name, default 50) as :meth:`monai.inferers.DiffusionInferer.sample` does in ``mode="concat"``: the
  network sees the noisy image with the mask encoding concatenated on the channel axis and is called
  ``network(x, timesteps=t)``; each step gets the seeded generator. Without a scheduler the network maps
  ``[noise, mask encoding]`` to the image in one call (a GAN-like generator);
* the mask encoding (``conditioning``): ``onehot`` (one channel per lesion label of the data, in label-value order),
  ``labels`` (one channel, the integer label as a float) or ``none`` (unconditional: the model gets ``sample`` only);
  by default read from the network's ``in_channels``: C (contrasts) → none, C + 1 → labels, C + K labels → onehot;
* the output: C channels in ``output_range`` (default [0, 1]), mapped to [0, 1] and clipped as diffusers' pipelines do.

**diffusers pipeline** (``model_index.json`` and one subfolder per component), loaded with
``DiffusionPipeline.from_pretrained(folder, local_files_only=True)`` and called with a seeded ``torch.Generator`` and
``output_type="np"`` (images N×H×W×C in [0, 1], `diffusers docs <https://huggingface.co/docs/diffusers>`_). Pipelines
are unconditional or text-conditioned, so the model has ``sample(n, *, seed)`` only: criteria that need
mask-conditioned images (``generate``) do not apply to it.

Optional settings for either, in ``mriq.json`` next to the configs (see :data:`SETTINGS`): ``batch_size`` (default
8), ``num_inference_steps``, ``conditioning``, ``output_range``. Progress (batch and step) is printed to stderr, which
the model process keeps in its log (quoted when a call times out or fails).
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import MissingFileError, ModelError

if TYPE_CHECKING:
    from .contract import ModelContext

SETTINGS_FILE = "mriq.json"
#: mriq.json keys → (type check, what is expected)
SETTINGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "num_inference_steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "conditioning": (lambda v: v in CONDITIONING, "one of onehot, labels, none"),
    "output_range": (lambda v: isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and v[0] < v[1],
                     "[low, high] with low < high"),
}
DEFAULT_BATCH_SIZE = 8
DEFAULT_STEPS = 50
BUNDLE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")
NETWORK_IDS = ("network_def", "network")
SCHEDULER_IDS = ("scheduler", "noise_scheduler")
CHECKPOINT_KEYS = ("model", "state_dict", "network")
PIPELINE_INDEX = "model_index.json"


def _onehot(masks: torch.Tensor, labels: list[int]) -> torch.Tensor:
    return torch.cat([(masks == v).float() for v in labels], 1)


#: mask encoding name → (channels for K lesion labels, encode(masks N×1×..., sorted labels) → N×channels×...)
CONDITIONING: dict[str, tuple[Callable[[int], int], Callable[[torch.Tensor, list[int]], torch.Tensor] | None]] = {
    "onehot": (lambda k: k, _onehot),
    "labels": (lambda k: 1, lambda masks, labels: masks.float()),
    "none": (lambda k: 0, None),
}


def read_settings(folder: Path) -> dict[str, Any]:
    """``folder/mriq.json`` checked against :data:`SETTINGS` (empty when the file is absent)."""
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return {}
    settings = _read_json(path)
    for key, value in settings.items():
        if key not in SETTINGS:
            raise ModelError(f"{path}: unknown key {key!r}; expected some of {sorted(SETTINGS)}")
        ok, expected = SETTINGS[key]
        if not ok(value):
            raise ModelError(f"{path}: {key} = {value!r}; expected {expected}")
    return settings


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not readable JSON ({type(exc).__name__}: {exc})") from exc
    if not isinstance(value, dict):
        raise ModelError(f"{path}: a JSON {type(value).__name__}; expected an object")
    return value


# ---------------------------------------------------------------- recognising a folder


def _bundle_config(folder: Path) -> Path | None:
    return next((folder / "configs" / n for n in BUNDLE_CONFIGS if (folder / "configs" / n).is_file()), None)


def check_bundle(folder: Path) -> None:
    """The files a bundle needs: configs/metadata.json, configs/inference.json|yaml|yml, models/model.pt or model.ts."""
    if not (folder / "configs" / "metadata.json").is_file():
        raise ModelError(f"MONAI bundle {folder}: configs/metadata.json is missing (the bundle's metadata)")
    if _bundle_config(folder) is None:
        raise ModelError(f"MONAI bundle {folder}: configs/inference.json is missing (or inference.yaml); "
                         "it defines the network (network_def) and the scheduler")
    _read_json(folder / "configs" / "metadata.json")
    if not any((folder / "models" / n).is_file() for n in ("model.pt", "model.ts")):
        raise ModelError(f"MONAI bundle {folder}: models/model.pt is missing (the network's state dict; or a TorchScript models/model.ts)")
    read_settings(folder)


def check_pipeline(folder: Path) -> None:
    """model_index.json readable, and a subfolder for each component it names."""
    index = _read_json(folder / PIPELINE_INDEX)
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        if not (folder / name).is_dir():
            raise ModelError(f"diffusers pipeline {folder}: {PIPELINE_INDEX} names component {name!r} "
                             f"({'.'.join(map(str, entry))}) but the folder {name}/ is missing")
    read_settings(folder)


#: folder kind → (is it one, check its layout); the model kinds of models.USER_MODEL_BUILDERS
FOLDER_KINDS: dict[str, tuple[Callable[[Path], bool], Callable[[Path], None]]] = {
    "monai-bundle": (lambda f: (f / "configs" / "metadata.json").is_file() or _bundle_config(f) is not None, check_bundle),
    "diffusers": (lambda f: (f / PIPELINE_INDEX).is_file(), check_pipeline),
}


#: Subfolders a diffusers pipeline saves its components in, and files only a pipeline (not a folder of images) holds:
#: weights (``diffusion_pytorch_model.*``, ``*.safetensors``) and a scheduler's configuration (diffusers' save_pretrained).
PIPELINE_PARTS = ("unet", "transformer", "vae", "scheduler", "text_encoder", "tokenizer")
PIPELINE_FILES = ("diffusion_pytorch_model.*", "*.safetensors", "scheduler_config.json")


def pipeline_evidence(folder: Path) -> list[str]:
    """What makes ``folder`` look like a diffusers pipeline: its weight or scheduler files (top level or in a component
    subfolder), else two or more component subfolders; empty for a folder of images."""
    parts = [d for d in PIPELINE_PARTS if (folder / d).is_dir()]
    files = sorted({str(f.relative_to(folder)) for where in (folder, *(folder / d for d in parts))
                    for pattern in PIPELINE_FILES for f in where.glob(pattern) if f.is_file()})
    if files:
        return [*(f"{d}/" for d in parts), *files[:4]]
    return [f"{d}/" for d in parts] if len(parts) >= 2 else []


def folder_kind(folder: Path) -> str | None:
    """``monai-bundle``, ``diffusers`` or None (a folder of images) for a folder, its layout checked (ModelError); a
    folder that looks like a diffusers pipeline without its ``model_index.json`` is a ModelError, not a folder of images."""
    for kind, (recognise, check) in FOLDER_KINDS.items():
        if recognise(folder):
            check(folder)
            return kind
    evidence = pipeline_evidence(folder)
    if evidence:
        raise ModelError(f"model folder {folder} looks like a diffusers pipeline ({', '.join(evidence)}) but has no {PIPELINE_INDEX}, "
                         f"the file that names its components; save the pipeline with pipeline.save_pretrained(folder), which "
                         f"writes it, or copy it from where the pipeline came from (a folder of generated images holds no pipeline files)")
    return None


def describe_folder(folder: Path, kind: str) -> dict[str, Any]:
    """Provenance: the bundle's name and version from its metadata, or the pipeline's class."""
    if kind == "monai-bundle":
        meta = _read_json(folder / "configs" / "metadata.json")
        return {k: meta[k] for k in ("name", "version") if isinstance(meta.get(k), str)}
    index = _read_json(folder / PIPELINE_INDEX)
    return {"pipeline": index.get("_class_name"), "diffusers_version": index.get("_diffusers_version")}


# ---------------------------------------------------------------- shared


def _say(message: str) -> None:
    print(f"[mriq] {message}", file=sys.stderr, flush=True)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


# ---------------------------------------------------------------- MONAI bundle


class MonaiBundle:
    """A MONAI bundle folder as a model: ``generate(masks, *, seed)`` when the network is mask-conditioned, else
    ``sample(n, *, seed)``; see the module docstring for the contract."""

    def __init__(self, folder: str | Path, ctx: ModelContext) -> None:
        from monai.bundle import ConfigParser

        self.folder, self.ctx = Path(folder), ctx
        check_bundle(self.folder)
        self.settings = read_settings(self.folder)
        config = _bundle_config(self.folder)
        assert config is not None
        self.config_name = f"configs/{config.name}"
        parser = ConfigParser()
        try:
            parser.read_config(str(config))
            parser.read_meta(str(self.folder / "configs" / "metadata.json"))
        except Exception as exc:
            raise ModelError(f"MONAI bundle {self.folder}: {self.config_name} cannot be read ({type(exc).__name__}: {exc})") from exc
        parser["bundle_root"] = str(self.folder)
        parser["device"] = str(ctx.device)
        self.parser = parser
        self.network = self._network()
        self.scheduler = self._scheduler()
        steps = self.settings.get("num_inference_steps", parser.get("num_inference_steps", DEFAULT_STEPS))
        if not isinstance(steps, int) or steps < 1:
            raise ModelError(f"MONAI bundle {self.folder}: {self.config_name} num_inference_steps = {steps!r}; expected an integer >= 1")
        self.steps = steps
        self.batch_size = int(self.settings.get("batch_size", DEFAULT_BATCH_SIZE))
        self.labels = sorted(v for v in ctx.labels.values() if v != 0)
        self.conditioning, self.noise_channels = self._conditioning()
        low, high = self.settings.get("output_range", [0.0, 1.0])
        self.output_range = (float(low), float(high))
        if self.conditioning == "none":
            self.sample = self._sample
        else:
            self.generate = self._generate

    # building

    def _parsed(self, key: str) -> Any:
        try:
            return self.parser.get_parsed_content(key, instantiate=True)
        except Exception as exc:
            cause = exc.__cause__ or exc
            raise ModelError(f"MONAI bundle {self.folder}: {self.config_name} key {key!r} cannot be built "
                             f"({type(cause).__name__}: {cause}); expected a _target_ importable here with these arguments") from exc

    def _network(self) -> torch.nn.Module:
        pt, ts = self.folder / "models" / "model.pt", self.folder / "models" / "model.ts"
        key = next((k for k in NETWORK_IDS if self.parser.get(k) is not None), None)
        if key is None or not pt.is_file():
            if ts.is_file():
                try:
                    return torch.jit.load(str(ts), map_location=self.ctx.device).eval()
                except Exception as exc:
                    raise ModelError(f"MONAI bundle {self.folder}: models/model.ts is not loadable TorchScript ({type(exc).__name__}: {exc})") from exc
            missing = "models/model.pt" if key is not None else f"a network in {self.config_name} (key {' or '.join(NETWORK_IDS)})"
            raise ModelError(f"MONAI bundle {self.folder}: {missing} is missing")
        network = self._parsed(key)
        if not isinstance(network, torch.nn.Module):
            raise ModelError(f"MONAI bundle {self.folder}: {self.config_name} key {key!r} built a {type(network).__name__}; expected a torch.nn.Module")
        try:
            state = torch.load(str(pt), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(f"MONAI bundle {self.folder}: models/model.pt is not a loadable state dict ({type(exc).__name__}: {exc})") from exc
        if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
            state = next((state[k] for k in CHECKPOINT_KEYS if isinstance(state.get(k), dict)), state)
        try:
            network.load_state_dict(state)
        except Exception as exc:
            raise ModelError(f"MONAI bundle {self.folder}: models/model.pt does not fit {self.config_name} key {key!r} "
                             f"({type(network).__name__}): {exc}") from exc
        return network.to(self.ctx.device).eval()

    def _scheduler(self) -> Any:
        key = next((k for k in SCHEDULER_IDS if self.parser.get(k) is not None), None)
        if key is not None:
            scheduler = self._parsed(key)
        elif self.parser.get("inferer") is not None:
            key, scheduler = "inferer", getattr(self._parsed("inferer"), "scheduler", None)
        else:
            return None
        if scheduler is None or not (callable(getattr(scheduler, "set_timesteps", None)) and callable(getattr(scheduler, "step", None))):
            raise ModelError(f"MONAI bundle {self.folder}: {self.config_name} key {key!r} gives {type(scheduler).__name__}; expected a "
                             "MONAI scheduler with set_timesteps() and step() (monai.networks.schedulers)")
        return scheduler

    def _conditioning(self) -> tuple[str, int]:
        """The mask encoding and the number of noise channels the network takes besides it."""
        c, k = self.ctx.image_shape[0], len(self.labels)
        in_channels = getattr(self.network, "in_channels", None)
        mode = self.settings.get("conditioning")
        if mode is None:
            by_channels = {c: "none", c + 1: "labels", c + k: "onehot"}
            if not isinstance(in_channels, int) or in_channels not in by_channels:
                raise ModelError(f"MONAI bundle {self.folder}: the network takes in_channels = {in_channels}; expected {c} (unconditional, "
                                 f"{c} contrasts), {c + 1} (contrasts + a label map) or {c + k} (contrasts + one-hot of {k} labels); "
                                 f"or say which in {SETTINGS_FILE}: conditioning")
            mode = by_channels[in_channels]
        cond = CONDITIONING[mode][0](k)
        noise = in_channels - cond if isinstance(in_channels, int) else c
        if self.scheduler is not None and noise != c:
            raise ModelError(f"MONAI bundle {self.folder}: the diffusion network takes in_channels = {in_channels}; expected {c + cond} "
                             f"({c} contrasts + {cond} channel(s) of {mode} mask encoding)")
        return mode, noise

    # sampling

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.ctx.device).manual_seed(int(seed))

    @torch.no_grad()
    def _run(self, cond: torch.Tensor | None, n: int, spatial: tuple[int, ...], seed: int) -> torch.Tensor:
        gen, out = self._generator(seed), []
        parts = _batches(n, self.batch_size)
        for b, part in enumerate(parts):
            started = time.monotonic()
            c = cond[part].to(self.ctx.device) if cond is not None else None
            shape = (part.stop - part.start, self.noise_channels, *spatial)
            x = torch.randn(shape, generator=gen, device=self.ctx.device)
            out.append(self._denoise(x, c, gen, f"batch {b + 1}/{len(parts)}") if self.scheduler is not None
                       else self.network(torch.cat([x, c], 1) if c is not None else x))
            _say(f"{self.folder.name}: batch {b + 1}/{len(parts)} ({shape[0]} item(s)) in {time.monotonic() - started:.1f} s")
        low, high = self.output_range
        return ((torch.cat(out).float().cpu() - low) / (high - low)).clamp(0.0, 1.0)

    def _denoise(self, x: torch.Tensor, cond: torch.Tensor | None, gen: torch.Generator, where: str) -> torch.Tensor:
        self.scheduler.set_timesteps(min(self.steps, int(getattr(self.scheduler, "num_train_timesteps", self.steps))), device=self.ctx.device)
        timesteps = list(self.scheduler.timesteps)
        step_kw = {"generator": gen} if _accepts(self.scheduler.step, "generator") else {}
        every = max(1, len(timesteps) // 10)
        for i, t in enumerate(timesteps):
            inp = torch.cat([x, cond], 1) if cond is not None else x
            pred = self.network(inp, timesteps=torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long))
            if not isinstance(pred, torch.Tensor) or pred.shape != x.shape:
                got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
                raise ModelError(f"MONAI bundle {self.folder}: the diffusion network returned {got} for a noisy image of shape "
                                 f"{tuple(x.shape)}; expected the same shape (out_channels = {x.shape[1]}, one per contrast "
                                 f"{', '.join(self.ctx.contrasts)})")
            x, _ = self.scheduler.step(pred, t, x, **step_kw)
            if (i + 1) % every == 0 and i + 1 < len(timesteps):
                _say(f"{self.folder.name}: {where}, step {i + 1}/{len(timesteps)}")
        return x

    def _generate(self, masks: torch.Tensor, *, seed: int) -> torch.Tensor:
        encode = CONDITIONING[self.conditioning][1]
        assert encode is not None
        return self._run(encode(masks, self.labels), masks.shape[0], tuple(masks.shape[2:]), seed)

    def _sample(self, n: int, *, seed: int) -> torch.Tensor:
        return self._run(None, int(n), tuple(self.ctx.image_shape[1:]), seed)


# ---------------------------------------------------------------- diffusers


def import_diffusers() -> Any:
    """diffusers, offline, with torchvision importable (diffusers imports it); MissingFileError saying how to install."""
    from ._compat import ensure_torchvision, go_offline

    go_offline()
    ensure_torchvision()
    try:
        import diffusers
    except ImportError as exc:
        raise MissingFileError(f"a diffusers pipeline folder needs diffusers, which is not importable ({exc}); install it with "
                               "`pip install --no-deps -r requirements-nodeps.txt` (diffusers==0.42.1)") from None
    return diffusers


class DiffusersPipeline:
    """A diffusers pipeline folder as an unconditional model: ``sample(n, *, seed)``."""

    def __init__(self, folder: str | Path, ctx: ModelContext) -> None:
        self.folder, self.ctx = Path(folder), ctx
        check_pipeline(self.folder)
        self.settings = read_settings(self.folder)
        diffusers = import_diffusers()
        try:
            self.pipeline = diffusers.DiffusionPipeline.from_pretrained(str(self.folder), local_files_only=True)
        except Exception as exc:
            raise ModelError(f"diffusers pipeline {self.folder}: DiffusionPipeline.from_pretrained failed "
                             f"({type(exc).__name__}: {exc})") from exc
        self.pipeline.to(ctx.device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.batch_size = int(self.settings.get("batch_size", DEFAULT_BATCH_SIZE))
        self._check_unet()

    def _check_unet(self) -> None:
        config = getattr(getattr(self.pipeline, "unet", None), "config", None)
        if config is None or len(self.ctx.image_shape) != 3:
            return
        c, h, w = self.ctx.image_shape
        size = config.get("sample_size")
        size = (size, size) if isinstance(size, int) else tuple(size or ())
        channels = config.get("out_channels")
        if (channels, size) != (c, (h, w)):
            raise ModelError(f"diffusers pipeline {self.folder}: unet/config.json has out_channels = {channels}, sample_size = {list(size)}; "
                             f"the data's images are {c} contrast(s) of {h}×{w} (expected out_channels = {c}, sample_size = {[h, w]})")

    def sample(self, n: int, *, seed: int) -> torch.Tensor:
        call = self.pipeline.__call__
        kwargs: dict[str, Any] = {"output_type": "np"}
        if "num_inference_steps" in self.settings:
            kwargs["num_inference_steps"] = self.settings["num_inference_steps"]
        gen, out = torch.Generator(device=self.ctx.device).manual_seed(int(seed)), []
        parts = _batches(int(n), self.batch_size)
        for b, part in enumerate(parts):
            started = time.monotonic()
            size = part.stop - part.start
            result = call(batch_size=size, generator=gen, **kwargs) if _accepts(call, "batch_size") else call(generator=gen, **kwargs)
            out.append(self._as_images(getattr(result, "images", result)))
            _say(f"{self.folder.name}: batch {b + 1}/{len(parts)} ({size} item(s)) in {time.monotonic() - started:.1f} s")
        return torch.cat(out)

    def _as_images(self, images: Any) -> torch.Tensor:
        """Pipeline output (numpy N×H×W×C, or a tensor N×C×H×W) as N×C×H×W; grey H×W (N×H×W) gets a channel axis."""
        if isinstance(images, list):  # PIL images, when a pipeline ignores output_type
            import numpy as np

            images = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
        if not isinstance(images, torch.Tensor):
            images = torch.from_numpy(images)
            images = images[..., None] if images.ndim == 3 else images.movedim(-1, 1)
        return images.float().cpu()
