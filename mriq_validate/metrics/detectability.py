"""Detectability of the generated images: a classifier two-sample test (C2ST; Lopez-Paz & Oquab 2017, arXiv 1610.06545)
as a set-level measure, ``c2st_auc`` (maths in :mod:`.functional.detectability`).

A small CNN learns to tell the evaluated images (label 1) from the real images of a reference split (label 0, the
real *training* split by default), all contrasts as input channels. Every image is scored by a classifier that did not
train on it (stratified, seeded k-fold cross-fitting), and the value is the ROC-AUC of those held-out scores: 0.5 when
the classifier cannot tell the two sets apart, towards 1 when it recognises the evaluated images, below 0.5 when it
systematically mistakes them for the real ones (e.g. copies of the reference images it was trained on as real).

Why the training split is the reference: the model generates for the real *test* masks, and a faithful model (the
``builtin:real`` stand-in, a copy of the test images) against the test images would put identical images on both
sides, an AUC of 0.5 by construction whatever the model does. Against the training split the question is the honest
one: can new real images (the test split) and generated ones be told apart from the real images the model learnt from?

The classifiers are trained once, in ``prepare`` (cached with the run's results, a deterministic function of the images,
the configuration, the run seed and the device type); the CI resamples the held-out scores (percentile bootstrap), so it
holds the sampling noise of the scored images, not that of the training.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from ..arrays import batches, gather
from ..contract import MeasureContext
from ..errors import MetricError
from ..segnets import torch_threads
from ..seeding import derive_seed
from .base import Metric, Sample, check_int, check_number, register_metric
from .functional import detectability as F
from .functional.pairwise import capped_rows

#: The default classifier: three stride-2 convolutions of 8, 16 and 32 channels on slices average-pooled 2×, 2-fold
#: cross-fitting, 15 epochs: 3-9 s on one thread of a shared 2-core CPU for 128 + 256 slices of 4×128×128 (measured).
DEFAULTS: dict[str, Any] = {"reference": "train", "folds": 2, "epochs": 15, "channels": (8, 16, 32), "downsample": 2,
                            "batch_size": 32, "lr": 3e-3, "max_items": 2048}
READ_ROWS = 64  # items read (and average-pooled) at a time from a possibly memory-mapped set


@register_metric
class C2stAuc(Metric):
    """Held-out ROC-AUC of a small CNN trained to tell the evaluated images from real reference images."""

    name, higher_is_better, valid_range = "c2st_auc", False, (0.0, 1.0)
    kind: ClassVar[Literal["per_image", "set", "paired"]] = "set"
    functional = staticmethod(F.roc_auc)
    resample: ClassVar[str] = "bootstrap"
    default_n_boot: ClassVar[int] = 1000
    summary = "held-out ROC-AUC of a CNN telling the images from real training images (0.5: indistinguishable)"
    limitations = (
        "Detectable is not harmful: a capable classifier flags differences no reader or downstream model cares about "
        "(a noise texture, an intensity offset), so an AUC far from 0.5 says the images can be told from real ones, not "
        "that they are unfit; it is advisory.",
        "Near 0.5 is not proof of fidelity: the CNN is small and trained briefly (the budget is in the configuration), and "
        "a localised error in a few images barely moves a set-level AUC.",
        "Blind to memorisation: copies of the reference (training) images are real images, so they score at or below 0.5 "
        "(copy detection is MEM-COPY's job).",
        "Small sets give a wide CI (about ±0.06 at 128 + 256 images), and the CI resamples the held-out scores with the "
        "classifiers fixed, so it leaves out their training noise (measured separately: docs/measures.md).",
    )

    def __init__(self, reference: str = DEFAULTS["reference"], folds: int = DEFAULTS["folds"], epochs: int = DEFAULTS["epochs"],
                 channels: Any = DEFAULTS["channels"], downsample: int = DEFAULTS["downsample"],
                 batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"], max_items: int = DEFAULTS["max_items"]) -> None:
        if reference not in ("train", "test"):
            raise MetricError(f"metric {self.name!r}: reference must be 'train' or 'test' (the real split the images are told "
                              f"apart from), got {reference!r}")
        if (not isinstance(channels, (list, tuple)) or not 1 <= len(channels) <= 6
                or any(isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= 512 for c in channels)):
            raise MetricError(f"metric {self.name!r}: channels must be a list of 1 to 6 integers in [1, 512] (one per "
                              f"convolution), got {channels!r}")
        self.reference, self.channels_per_layer = reference, tuple(int(c) for c in channels)
        self.folds = check_int(self.name, "folds", folds, 2, 10)
        self.epochs = check_int(self.name, "epochs", epochs, 1, 1000)
        self.downsample = check_int(self.name, "downsample", downsample, 1, 16)
        self.batch_size = check_int(self.name, "batch_size", batch_size, 2)
        self.lr = check_number(self.name, "lr", lr, lambda v: 0 < v <= 1, "in (0, 1]")
        self.max_items = check_int(self.name, "max_items", max_items, 2 * self.folds)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name, "reference": f"real {self.reference} split",
            "positive": "the evaluated images (AUC > 0.5: the classifier ranks them as not real)",
            "classifier": {
                "architecture": "per layer Conv(3, stride 2) + BatchNorm + LeakyReLU(0.1); global average pool; linear to one logit",
                "channels": list(self.channels_per_layer),
                "input": f"all contrasts as channels, average-pooled {self.downsample}x",
                "epochs": self.epochs, "batch_size": self.batch_size, "optimiser": f"Adam, lr {self.lr:g}, constant",
                "loss": "binary cross-entropy, the classes weighted to equal total weight"},
            "split": f"stratified {self.folds}-fold cross-fitting: each image scored by the classifier trained on the other "
                     f"folds; scores ranked within their fold",
            "max_items": self.max_items,
            "subset": "a set larger than max_items: a random subset of max_items items (seeded by the run seed and the set's role)",
            "seed": "derived from the run seed and this configuration",
            "ci": "percentile bootstrap of the held-out scores, both classes resampled together (the classifiers are trained once)",
        }

    def prepare(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        """Rows (label, held-out score): the evaluated images first (label 1), then the real reference images (0)."""
        self.check_sample(sample)
        real = sample.same_contrasts(getattr(ctx.data, self.reference).images)
        if tuple(real.shape[1:]) != tuple(sample.images.shape[1:]):
            raise MetricError(f"metric {self.name!r}: the {sample.origin} images are {tuple(sample.images.shape[1:])} and the real "
                              f"{self.reference} images {tuple(real.shape[1:])}; expected the same item shape")
        seed = derive_seed(ctx.seed, self.name, json.dumps(self.config(), sort_keys=True))
        own = pooled(sample.images, capped_rows(len(sample), self.max_items, derive_seed(seed, "evaluated")), self.downsample)
        ref = pooled(real, capped_rows(len(real), self.max_items, derive_seed(seed, "reference")), self.downsample)
        if len(ref) < self.folds:
            raise MetricError(f"metric {self.name!r}: the real {self.reference} split has {len(ref)} item(s), fewer than the "
                              f"{self.folds} folds")
        if len(own) < self.folds:
            raise MetricError(f"metric {self.name!r}: {sample.origin} has {len(own)} item(s), fewer than the {self.folds} folds")
        labels = np.r_[np.ones(len(own)), np.zeros(len(ref))]
        scores = held_out_scores(torch.cat([own, ref]), labels, self, ctx.device, seed,
                                 lambda msg: ctx.progress(f"{self.name} on {sample.origin}: {msg}"))
        return np.stack([labels, scores], axis=1).astype(np.float64)

    def compute(self, prepared: np.ndarray, index: np.ndarray) -> float:
        return F.auc_of_labels(prepared[index, 0], prepared[index, 1])


def pooled(images: torch.Tensor, rows: np.ndarray | None, factor: int) -> torch.Tensor:
    """``images[rows]`` (all when None) as float32, average-pooled ``factor``× in every spatial axis, read
    :data:`READ_ROWS` items at a time (a mapped set is never read whole)."""
    pool = {4: torch.nn.functional.avg_pool2d, 5: torch.nn.functional.avg_pool3d}.get(images.ndim)
    if pool is None:
        raise MetricError(f"c2st_auc: expected N×C×H×W slices or N×C×D×H×W volumes, got shape {tuple(images.shape)}")
    n = len(images) if rows is None else len(rows)
    parts = []
    for sl in batches(n, READ_ROWS):
        x = (images[sl] if rows is None else gather(images, rows[sl])).float()
        parts.append(pool(x, factor) if factor > 1 else x.clone())
    return torch.cat(parts)


def classifier(in_channels: int, channels: tuple[int, ...], spatial_dims: int) -> torch.nn.Module:
    """The CNN: per entry of ``channels`` a 3-wide stride-2 convolution, batch norm and LeakyReLU(0.1); then a global
    average pool and a linear layer to one logit."""
    conv, norm = {2: (torch.nn.Conv2d, torch.nn.BatchNorm2d), 3: (torch.nn.Conv3d, torch.nn.BatchNorm3d)}[spatial_dims]
    layers: list[torch.nn.Module] = []
    prev = in_channels
    for c in channels:
        layers += [conv(prev, c, 3, stride=2, padding=1), norm(c), torch.nn.LeakyReLU(0.1)]
        prev = c
    pool = torch.nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else torch.nn.AdaptiveAvgPool3d(1)
    return torch.nn.Sequential(*layers, pool, torch.nn.Flatten(), torch.nn.Linear(prev, 1))


def held_out_scores(x: torch.Tensor, labels: np.ndarray, metric: C2stAuc, device: torch.device, seed: int,
                    progress: Callable[[str], None] | None = None) -> np.ndarray:
    """The held-out score of every item of ``x`` (N×C×… , labels 0/1): for each fold, a classifier of ``metric``'s
    configuration trained on the other folds (seeded by ``seed`` and the fold) scores it; the scores are ranked within
    their fold (:func:`~.functional.detectability.within_fold_ranks`). Deterministic on CPU."""
    fold = F.crossfit_folds(labels, metric.folds, derive_seed(seed, "folds"))
    y = torch.as_tensor(labels, dtype=torch.float32)
    logits = np.zeros(len(labels))
    with torch.random.fork_rng(devices=[]), torch_threads(device):
        xd, yd = x.to(device), y.to(device)
        for f in range(metric.folds):
            train = torch.as_tensor(np.flatnonzero(fold != f))
            held = torch.as_tensor(np.flatnonzero(fold == f))
            net = _train(xd, yd, train, metric, device, derive_seed(seed, "fold", f))
            with torch.no_grad():
                logits[held.numpy()] = torch.cat([net(xd[held[sl].to(device)]).squeeze(1).float().cpu()
                                                   for sl in batches(len(held), 256)]).double().numpy()
            if progress:
                progress(f"fold {f + 1}/{metric.folds} trained and scored ({len(train)} training, {len(held)} held-out items)")
    if not np.all(np.isfinite(logits)):
        raise MetricError(f"metric {metric.name!r}: the classifier gave non-finite scores (the training diverged; lower lr)")
    return F.within_fold_ranks(logits, fold)


def _train(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, metric: C2stAuc, device: torch.device, seed: int) -> torch.nn.Module:
    """A classifier trained on ``x[rows]`` for ``metric.epochs`` epochs of shuffled batches (seeded), in eval mode."""
    torch.manual_seed(seed)
    net = classifier(x.shape[1], metric.channels_per_layer, x.ndim - 2).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=metric.lr)
    pos = float(y[rows.to(device)].sum())
    weight = torch.tensor((len(rows) - pos) / max(pos, 1.0), device=device)  # positives weigh as much as negatives in all
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=weight)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(metric.epochs):
        perm = rows[torch.randperm(len(rows), generator=g)]
        for i in range(0, len(perm), metric.batch_size):
            b = perm[i:i + metric.batch_size].to(device)
            if len(b) < 2:  # batch norm needs two items
                continue
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x[b]).squeeze(1), y[b]).backward()
            opt.step()
    return net.eval()
