"""One run's shared, lazily computed state: reference data, the model under test, segmenters, samples.

Everything expensive is computed once per run (and on disk by content hash where deterministic). A failure
while loading the data or the model is remembered and re-raised for every criterion that needs it, so each
one ERRORs with the same clear message instead of some passing.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .arrays import as_tensor, batches, scratch_array
from .cache import SCRATCH_KIND, DiskCache, content_hash
from .cache_admin import remove_stale_scratch
from .data import ReferenceData, load_data
from .devices import auto_batch_size, resolve_device
from .errors import ModelError, MriqError
from .figures import axial_sample
from .isolation import DEFAULT_TIMEOUT_S
from .metrics import Metric, Sample
from .models import ModelAdapter, ModelContext, load_model
from .seeding import derive_seed
from .segmenter import Segmenter, SegmenterConfig, get_segmenter

SPLITS = ("test", "train")
ITEM_KINDS = {2: "slices", 3: "volumes"}  # spatial dimensions → what one item of the data is


def item_kind(spatial_dims: int) -> str:
    """``slices`` for 2D data, ``volumes`` for 3D."""
    return ITEM_KINDS[spatial_dims]


@dataclass
class RunSettings:
    """The run's settings, as given on the command line or in the ini file."""

    model: str | None
    data: str | None
    device: str = "auto"
    seed: int = 0
    cache_dir: str = ""
    data_options: dict[str, Any] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT_S  # seconds per model call, loading included (--mriq-timeout)
    batch_size: int | str = "auto"  # items per model call and per batch of per-image scoring (--mriq-batch-size)
    workers: int | str = "auto"  # CPU processes for independent segmenter trainings (--mriq-workers; mriq_validate.parallel)


class _Lazy:
    """A value computed once; an exception is remembered and raised again on every access."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn, self.done, self.value, self.error = fn, False, None, None

    def get(self) -> Any:
        if not self.done:
            try:
                self.value = self.fn()
            except BaseException as exc:
                self.error = exc
            self.done = True
        if self.error is not None:
            raise self.error
        return self.value


class ReferenceSide:
    """The reference half of a run: the real data, the device, the cache and the segmenters trained on the real data.

    Kept apart from the model under test, so that several runs (one per model: the downstream table, the study) share
    one reference side and train its segmenters once. ``data`` given: used as is; else loaded from ``data_spec`` when
    first asked for."""

    def __init__(self, settings: RunSettings, data_spec: str, progress: Callable[[str], None] | None = None, *,
                 data: ReferenceData | None = None) -> None:
        self.settings, self.data_spec, self.seed = settings, data_spec, settings.seed
        self.cache = DiskCache(settings.cache_dir)
        self.progress = progress or (lambda msg: None)
        self._device = _Lazy(lambda: resolve_device(settings.device))
        self._data = _Lazy(lambda: data if data is not None else load_data(data_spec, self.cache, **settings.data_options))
        self._segmenters: dict[str, Segmenter] = {}

    @property
    def device(self) -> torch.device:
        return self._device.get()

    @property
    def data(self) -> ReferenceData:
        return self._data.get()

    @property
    def data_loaded(self) -> bool:
        """Whether the reference data has been loaded without error (nothing is loaded by asking)."""
        return self._data.done and self._data.error is None

    @property
    def workers(self) -> int:
        """CPU processes for independent segmenter trainings (:func:`mriq_validate.parallel.resolve_workers`)."""
        from .parallel import resolve_workers

        return resolve_workers(self.settings.workers, self.device)

    def real(self, split: str = "test") -> Sample:
        """A real split as a sample."""
        t = getattr(self.data, split)
        return Sample(t.images, t.masks, f"real {split}")

    @property
    def item_kind(self) -> str:
        """What one item of the data is, in words: ``slices`` (2D) or ``volumes`` (3D)."""
        return item_kind(self.data.spatial_dims)

    @property
    def n_classes(self) -> int:
        return max(self.data.labels.values()) + 1

    def segmenter(self, cfg: SegmenterConfig) -> Segmenter:
        """The segmenter of config ``cfg`` (resolved for the data's dimensionality) trained on the real training split
        (cached on disk)."""
        cfg = cfg.resolve(self.data.spatial_dims)
        key = json.dumps(asdict(cfg), sort_keys=True)
        if key not in self._segmenters:
            tr = self.data.train
            self.progress(f"segmenter: training or loading from cache ({len(tr)} real training {self.item_kind})")
            self._segmenters[key] = get_segmenter(tr.images, tr.masks, self.n_classes, cfg, self.device, self.cache, self.progress,
                                                  contrasts=tuple(self.data.contrasts))
        return self._segmenters[key]

    def segmenters(self, cfgs: list[SegmenterConfig]) -> list[Segmenter]:
        """The segmenters of ``cfgs`` (as :meth:`segmenter`), those not yet trained trained side by side on
        :attr:`workers` CPU processes first (:func:`mriq_validate.parallel.train_missing`; same weights as one by one)."""
        from .parallel import TrainingJob, train_missing

        resolved = [cfg.resolve(self.data.spatial_dims) for cfg in cfgs]
        todo = [cfg for cfg in resolved if json.dumps(asdict(cfg), sort_keys=True) not in self._segmenters]
        if len(todo) > 1 and self.workers > 1:
            tr = self.data.train
            train_missing([TrainingJob(cfg, tr.images, tr.masks) for cfg in todo], self.n_classes, self.cache, self.workers,
                          contrasts=tuple(self.data.contrasts), progress=self.progress)
        return [self.segmenter(cfg) for cfg in resolved]

    @functools.cached_property
    def data_digests(self) -> dict[str, str]:
        """The content hashes of the reference splits, computed once."""
        return self.data.digests()

    def provenance(self) -> dict[str, Any]:
        """What the report records about the reference side (only what has been loaded), segmenters aside
        (:meth:`segmenter_provenance`)."""
        out: dict[str, Any] = {"data_spec": self.data_spec, "data_options": dict(self.settings.data_options), "seed": self.seed,
                               "device": self.settings.device, "cache_events": list(self.cache.events),
                               "results_reused": self.cache.reused}
        if self.data_loaded:
            d = self.data
            out["data"] = {"name": d.name, "digests": self.data_digests, "n_train": len(d.train), "n_test": len(d.test),
                           "spatial_dims": d.spatial_dims, "item_kind": item_kind(d.spatial_dims),
                           "image_shape": list(d.image_shape), "spacing_mm": list(d.spacing_mm), "labels": d.labels,
                           "contrasts": list(d.contrasts), "has_masks": d.has_masks, "regions": {k: list(v) for k, v in d.regions.items()},
                           "provenance": d.provenance}
        if self._device.done and self._device.error is None:
            out["device"] = str(self.device)
            out["training_processes"] = self.workers
        return out

    def segmenter_provenance(self) -> dict[str, Any]:
        """Each segmenter used: its cache key and training history (losses left out)."""
        return {k: {"key": s.key, "history": {h: v for h, v in s.history.items() if h != "loss"}} for k, s in self._segmenters.items()}


class RunContext:
    """Shared state for the criteria of one (data, model) pair: a :class:`ReferenceSide` and the model's side.

    The reference data are loaded from ``data_spec`` and the model from ``settings.model`` when first asked for, unless
    they are given: ``data`` (a :class:`~mriq_validate.data.ReferenceData`), ``reference`` (a :class:`ReferenceSide`
    shared with other runs, its data and segmenters computed once) and ``model`` (an object with
    ``generate(masks, *, seed)`` and/or ``sample(n, *, seed)``, checked like every model; provenance kind
    ``in-process``), for runs built in code (tests, the study, the downstream table, notebooks)."""

    def __init__(self, settings: RunSettings, data_spec: str, progress: Callable[[str], None] | None = None, *,
                 data: ReferenceData | None = None, model: Any = None, reference: ReferenceSide | None = None) -> None:
        if reference is not None and data is not None:
            raise ValueError("RunContext: give the reference side or the data, not both")
        self.reference = reference or ReferenceSide(settings, data_spec, progress, data=data)
        self.settings = settings
        self.data_spec = data_spec
        self.seed = settings.seed
        self.cache = self.reference.cache
        self.progress = progress or (lambda msg: None)
        self._model = _Lazy(self._load_model if model is None else lambda: self._adapt(model))
        self._generated = {split: _Lazy(lambda split=split: self._generate(split)) for split in SPLITS}
        self._predictions: dict[tuple[str, str], torch.Tensor] = {}  # mapped scratch arrays, never held in memory
        self._prepared: dict[tuple[str, ...], Any] = {}
        self._digests: dict[tuple[Any, ...], tuple[str, torch.Tensor]] = {}
        self._scratch: Path | None = None
        self._n_scratch = 0

    @property
    def device(self) -> torch.device:
        return self.reference.device

    @property
    def data(self) -> ReferenceData:
        return self.reference.data

    @property
    def data_loaded(self) -> bool:
        """Whether the reference data has been loaded without error (nothing is loaded by asking)."""
        return self.reference.data_loaded

    @property
    def model(self) -> ModelAdapter:
        return self._model.get()

    def _adapt(self, model: Any) -> ModelAdapter:
        """A model given in code, behind the checks of every model."""
        ctx = ModelContext.for_data(self.data, self.device, derive_seed(self.seed, "model"))
        spec = self.settings.model or f"in-process:{type(model).__name__}"
        return ModelAdapter(model, spec, ctx, {"kind": "in-process", "class": type(model).__name__, "isolation": "in-process"})

    def _load_model(self) -> ModelAdapter:
        if not self.settings.model:
            raise MriqError("no model under test: pass --mriq-model")
        data = self.data
        ctx = ModelContext.for_data(data, self.device, derive_seed(self.seed, "model"))
        self.progress(f"loading model {self.settings.model}")
        return load_model(self.settings.model, ctx, data, timeout=self.settings.timeout)

    @property
    def batch_size(self) -> int:
        """Items per model call and per batch of per-image scoring: ``--mriq-batch-size``, or for ``auto``
        :func:`auto_batch_size` of the data's items on the run's device."""
        if self.settings.batch_size != "auto":
            return int(self.settings.batch_size)
        return auto_batch_size(tuple(self.data.image_shape), self.device)

    @property
    def scratch_dir(self) -> Path | None:
        """This run's scratch folder (``<cache>/scratch/<pid>-<random>/``), None until a mapped array needs it."""
        return self._scratch

    def scratch(self, shape: tuple[int, ...], dtype: Any) -> torch.Tensor:
        """A new zero-filled tensor of ``shape`` backed by a file in this run's scratch folder (removed by :meth:`close`)."""
        if self._scratch is None:
            root = self.cache.root / SCRATCH_KIND
            try:
                root.mkdir(parents=True, exist_ok=True)
                remove_stale_scratch(self.cache.root)
                folder = root / f"{os.getpid()}-{secrets.token_hex(4)}"
                folder.mkdir()
            except OSError as exc:
                raise MriqError(f"cannot create the run's scratch folder under {root} ({exc}); expected a writable cache "
                                f"folder (--mriq-cache)") from exc
            self._scratch = folder
            # a context never closed (a script's) still removes its folder when collected or at exit
            self._scratch_finalizer = weakref.finalize(self, shutil.rmtree, folder, True)
        self._n_scratch += 1
        return as_tensor(scratch_array(self._scratch / f"{self._n_scratch}.bin", shape, np.dtype(dtype)))

    def close(self) -> None:
        """Release what the run holds outside this process: the model's child process and the scratch folder."""
        if self._model.done and self._model.error is None:
            self.model.close()
        if self._scratch is not None:
            self._scratch_finalizer()  # removes the folder; mapped tensors stay readable until they are dropped
            self._scratch = None

    def batch_seed(self, split: str, k: int) -> int:
        """The seed of the ``k``-th model call for ``split``: batch 0 the split's seed (as one call for the whole split
        always had), batch k >= 1 its own."""
        return derive_seed(self.seed, "generated", split) if k == 0 else derive_seed(self.seed, "generated", split, k)

    def _generate(self, split: str) -> tuple[Sample, bool]:
        model, real = self.model, getattr(self.data, split)
        origin = f"generated ({split} masks)" if model.can_generate else "generated"
        self.progress(f"generating {len(real)} {self.item_kind} with {model.spec} ({split} masks)")
        if model.provenance.get("kind") == "folder" and not model.can_generate:  # the folder's images, as many as it holds
            images, masks = model.sample(None, seed=self.batch_seed(split, 0))
            return Sample(images, masks, origin), False
        n, bs = len(real), self.batch_size
        images = self.scratch((n, *self.data.image_shape), np.float32)
        masks = None
        for k, sl in enumerate(batches(n, bs)):
            items = f"items {sl.start}-{sl.stop - 1} of {n}"
            if model.can_generate:
                images[sl] = model.generate(real.masks[sl], seed=self.batch_seed(split, k), items=items)
            else:
                out, out_masks = model.sample(sl.stop - sl.start, seed=self.batch_seed(split, k), items=items)
                images[sl] = out
                if k == 0 and out_masks is not None:
                    masks = self.scratch((n, *out_masks.shape[1:]), out_masks.numpy().dtype)
                if (out_masks is None) != (masks is None):
                    raise ModelError(f"model {model.spec} sample() returned masks for some batches and none for others "
                                     f"({items}: {'none' if out_masks is None else 'masks'}); expected the same for every call")
                if masks is not None:
                    masks[sl] = out_masks
            if n > bs:
                self.progress(f"generating {sl.stop}/{n} {self.item_kind}")
        if model.can_generate:
            return Sample(images, real.masks, origin), True
        return Sample(images, masks, origin), False

    def generated(self, split: str = "test") -> tuple[Sample, bool]:
        """The model's images for the real ``split`` masks (``generate``), or its own sample; and whether the sample is
        paired item by item with the real ``split``."""
        return self._generated[split].get()

    def real(self, split: str = "test") -> Sample:
        """A real split as a sample."""
        return self.reference.real(split)

    @property
    def item_kind(self) -> str:
        """What one item of the data is, in words: ``slices`` (2D) or ``volumes`` (3D)."""
        return self.reference.item_kind

    @property
    def n_classes(self) -> int:
        return self.reference.n_classes

    def segmenter(self, cfg: SegmenterConfig) -> Segmenter:
        """:meth:`ReferenceSide.segmenter`: the segmenter of ``cfg`` trained on the real training split."""
        return self.reference.segmenter(cfg)

    def segmenters(self, cfgs: list[SegmenterConfig]) -> list[Segmenter]:
        """:meth:`ReferenceSide.segmenters`: several, those not yet trained trained side by side."""
        return self.reference.segmenters(cfgs)

    def predict(self, cfg: SegmenterConfig, images: torch.Tensor) -> torch.Tensor:
        """Segmenter labels for ``images``, memoised by content in a scratch mapped array (a large sample's predictions
        are never held in memory: per-image measures ask for one batch at a time)."""
        seg = self.segmenter(cfg)
        key = (seg.key, self.digest(images))
        if key not in self._predictions:
            out = self.scratch((images.shape[0], 1, *images.shape[2:]), np.int64)
            self._predictions[key] = seg.predict(images, out=out)
        return self._predictions[key]

    def digest(self, t: torch.Tensor) -> str:
        """``content_hash(t)``, computed once per tensor state: memoised by storage address, shape, strides, dtype and
        torch's version counter (which every in-place write bumps); the tensor is kept so that its address is not reused."""
        key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t._version)
        if key not in self._digests:
            self._digests[key] = (content_hash(t), t)
        return self._digests[key][0]

    def prepare(self, metric: Metric, sample: Sample) -> Any:
        """``metric.prepare`` memoised by metric configuration and sample content, in this run and, for per-item results,
        on disk across runs (:mod:`mriq_validate.memo`). A result read from disk still loads the real-data segmenter the
        measure names, so that the report lists the same segmenters as a run that computed it."""
        from .memo import cached_array, enabled, is_own, prepared_key

        config = metric.config()
        key = (json.dumps(config, sort_keys=True, default=str), self.digest(sample.images),
               self.digest(sample.masks) if sample.masks is not None else "")
        if key not in self._prepared:
            computed = []

            def compute() -> Any:
                computed.append(True)
                return metric.prepare(self, sample)

            disk_key = prepared_key(config, key[1], key[2], sample.channel, self.reference.data_digests, self.seed, self.device.type,
                                    self.batch_size) if is_own(metric) and enabled() else None
            self._prepared[key] = cached_array(self.cache, disk_key, compute)
            segmenter = getattr(metric, "segmenter", None)
            if not computed and isinstance(segmenter, SegmenterConfig):
                self.segmenter(segmenter)
        return self._prepared[key]

    def sample_images(self, k: int = 6) -> dict[str, Any] | None:
        """The first ``k`` real test slices (k×C×H×W), the model's images for their masks, the masks (k×H×W) and the contrast
        names, for the report's sample grid; for volumes, each item's axial slice through its lesion centroid
        (:func:`~mriq_validate.figures.axial_sample`; the indices under ``slice_index``), so that the grid travels as
        slices. None until the model has generated images for the test masks."""
        lazy = self._generated["test"]
        if not lazy.done or lazy.error is not None:
            return None
        sample, paired = lazy.value
        if not paired:
            return None
        t = self.data.test
        return axial_sample({"real": t.images[:k].numpy(), "generated": sample.images[:k].numpy(), "masks": t.masks[:k, 0].numpy(),
                             "contrasts": list(self.data.contrasts)})

    def provenance(self) -> dict[str, Any]:
        """What the report records about this run's data and model (only what has been loaded)."""
        out = self.reference.provenance()
        if self._model.done and self._model.error is None:
            out["model"] = {**self.model.provenance, "batch_size": self.batch_size,
                            "batch_seeding": "one call per batch of batch_size items; batch 0 seeded derive_seed(seed, "
                                             "'generated', split), batch k >= 1 derive_seed(seed, 'generated', split, k)"}
        out["segmenters"] = self.reference.segmenter_provenance()
        return out
