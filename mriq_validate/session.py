"""One run's shared, lazily computed state: reference data, the model under test, segmenters, samples.

Everything expensive is computed once per run (and on disk by content hash where deterministic). A failure
while loading the data or the model is remembered and re-raised for every criterion that needs it, so each
one ERRORs with the same clear message instead of some passing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .cache import DiskCache, content_hash
from .data import ReferenceData, load_data
from .errors import MriqError
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


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MriqError(f"--mriq-device {name}: CUDA is not available on this machine (torch {torch.__version__}); use cpu or auto")
    return torch.device(name)


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


class RunContext:
    """Shared state for the criteria of one (data, model) pair."""

    def __init__(self, settings: RunSettings, data_spec: str, progress: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.data_spec = data_spec
        self.seed = settings.seed
        self.cache = DiskCache(settings.cache_dir)
        self.progress = progress or (lambda msg: None)
        self._device = _Lazy(lambda: resolve_device(settings.device))
        self._data = _Lazy(lambda: load_data(data_spec, self.cache, **settings.data_options))
        self._model = _Lazy(self._load_model)
        self._generated = {split: _Lazy(lambda split=split: self._generate(split)) for split in SPLITS}
        self._segmenters: dict[str, Segmenter] = {}
        self._predictions: dict[tuple[str, str], torch.Tensor] = {}
        self._prepared: dict[tuple[str, str], Any] = {}

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
    def model(self) -> ModelAdapter:
        return self._model.get()

    def _load_model(self) -> ModelAdapter:
        if not self.settings.model:
            raise MriqError("no model under test: pass --mriq-model")
        data = self.data
        ctx = ModelContext.for_data(data, self.device, derive_seed(self.seed, "model"))
        self.progress(f"loading model {self.settings.model}")
        return load_model(self.settings.model, ctx, data, timeout=self.settings.timeout)

    def close(self) -> None:
        """Release what the run holds outside this process: the model's child process."""
        if self._model.done and self._model.error is None:
            self.model.close()

    def _generate(self, split: str) -> tuple[Sample, bool]:
        model, real = self.model, getattr(self.data, split)
        seed = derive_seed(self.seed, "generated", split)
        origin = f"generated ({split} masks)" if model.can_generate else "generated"
        self.progress(f"generating {len(real)} {self.item_kind} with {model.spec} ({split} masks)")
        if model.can_generate:
            return Sample(model.generate(real.masks, seed=seed), real.masks, origin), True
        n = None if model.provenance.get("kind") == "folder" else len(real)
        images, masks = model.sample(n, seed=seed)
        return Sample(images, masks, origin), False

    def generated(self, split: str = "test") -> tuple[Sample, bool]:
        """The model's images for the real ``split`` masks (``generate``), or its own sample; and whether the sample is
        paired item by item with the real ``split``."""
        return self._generated[split].get()

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

    def predict(self, cfg: SegmenterConfig, images: torch.Tensor) -> torch.Tensor:
        """Segmenter labels for ``images``, memoised by content."""
        seg = self.segmenter(cfg)
        key = (seg.key, content_hash(images))
        if key not in self._predictions:
            self._predictions[key] = seg.predict(images)
        return self._predictions[key]

    def prepare(self, metric: Metric, sample: Sample) -> Any:
        """``metric.prepare`` memoised by metric configuration and sample content."""
        key = (json.dumps(metric.config(), sort_keys=True, default=str), content_hash(sample.images, sample.masks if sample.masks is not None else b""))
        if key not in self._prepared:
            self._prepared[key] = metric.prepare(self, sample)
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
        out: dict[str, Any] = {"data_spec": self.data_spec, "data_options": dict(self.settings.data_options), "seed": self.seed,
                               "device": self.settings.device, "cache_events": list(self.cache.events)}
        if self._data.done and self._data.error is None:
            d = self.data
            out["data"] = {"name": d.name, "digests": d.digests(), "n_train": len(d.train), "n_test": len(d.test),
                           "spatial_dims": d.spatial_dims, "item_kind": item_kind(d.spatial_dims),
                           "image_shape": list(d.image_shape), "spacing_mm": list(d.spacing_mm), "labels": d.labels,
                           "contrasts": list(d.contrasts), "has_masks": d.has_masks, "regions": {k: list(v) for k, v in d.regions.items()},
                           "provenance": d.provenance}
        if self._device.done and self._device.error is None:
            out["device"] = str(self.device)
        if self._model.done and self._model.error is None:
            out["model"] = self.model.provenance
        out["segmenters"] = {k: {"key": s.key, "history": {h: v for h, v in s.history.items() if h != "loss"}} for k, s in self._segmenters.items()}
        return out
