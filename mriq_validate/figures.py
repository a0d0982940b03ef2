"""Figures for the evidence report, drawn with matplotlib's Agg canvas (no pyplot state, no display) and returned as
PNG bytes or ``data:`` URIs, so ``report.html`` stays one self-contained file.

- :func:`criteria_figure`: each criterion's compared quantity with its CI against the threshold (dot and whisker);
- :func:`dose_response_figure`: sweeps (one criterion at several perturbation levels) as dose-response curves;
- :func:`sample_grid_figure`: real and generated slices side by side with the mask outlines, a row pair per contrast;
  volumes are shown by the axial slice through each lesion's centroid (:func:`axial_sample`), its index written;
- :func:`gallery_figure`: a criterion's worst generated items over the real items with the same masks
  (:func:`worst_case_images` gathers them while the run holds the images);
- :func:`new_figure`, :func:`png_bytes`, :func:`data_uri`: the canvas and encoding the study's figures use too.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np

VERDICT_COLOURS = {"PASS": "#1a7f37", "FAIL": "#cf222e", "ERROR": "#8250df", "SKIP": "#6e7781"}
ADVISORY_FAIL = "#bf8700"
LABEL_COLOURS = ("#ff4d4d", "#ffd11a", "#33ccff", "#66ff66", "#ff66ff", "#ff9933")
FONT = 8


def new_figure(width: float, height: float) -> Any:
    """An empty matplotlib figure of ``width`` × ``height`` inches on its own Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (no timestamp metadata, so equal figures give equal bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _colour(r: dict[str, Any]) -> str:
    if r["verdict"] == "FAIL" and not r.get("gate", True):
        return ADVISORY_FAIL
    return VERDICT_COLOURS.get(r["verdict"], "#6e7781")


def _label(r: dict[str, Any]) -> str:
    return r["item_id"].split("::")[-1]


def quantity_label(r: dict[str, Any]) -> str:
    th = r.get("threshold") or r.get("threshold_spec") or {}
    metric = (r.get("metric") or {}).get("name") or r.get("metric_name") or "?"
    region = (r.get("metric") or {}).get("region") or (r.get("params") or {}).get("region")
    name = f"{metric} ({region})" if region else metric
    if r.get("kind") == "sensitivity":
        return f"{name}: change towards worse under the perturbation"
    rel = th.get("relative", "none")
    text = {"difference": f"{name}: generated − real", "ratio": f"{name}: generated / real"}.get(rel, f"{name}: generated")
    on = th.get("on", "value")
    if on != "value":
        text += f" (checked: {on.replace('_', ' ')})"
    return text


def _finite(*xs: Any) -> list[float]:
    return [float(x) for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]


def criteria_figure(results: list[dict[str, Any]]) -> Any | None:
    """One row per criterion item: the compared quantity (value, difference or ratio to real) with its bootstrap CI,
    the threshold bounds as red dashed lines and the acceptable region shaded; items that were not evaluated are
    named with their verdict. None when there is nothing to draw."""
    if not results:
        return None
    short = [_label(r) for r in results]
    labels = [r["item_id"] if short.count(s) > 1 else s for r, s in zip(results, short)]
    n = len(results)
    row = 0.78
    fig = new_figure(10.5, row * n + 0.3)
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, r, label in zip(axes, results, labels):
        colour = _colour(r)
        gate = "gate" if r.get("gate", True) else "advisory"
        ax.set_yticks([0])
        ax.set_yticklabels([label], fontsize=FONT + 1, fontweight="bold")
        ax.tick_params(axis="x", labelsize=FONT - 1, length=2, pad=1)
        ax.tick_params(axis="y", length=0)
        ax.set_ylim(-1, 1)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        if not isinstance(r.get("compared"), dict):
            ax.set_xticks([])
            ax.spines["bottom"].set_visible(False)
            ax.text(0.0, 0.0, f"{r['verdict']} ({gate}): not evaluated", transform=ax.transAxes, va="center",
                    fontsize=FONT + 1, color=colour, fontweight="bold")
            continue
        c, bounds = r["compared"], r.get("bounds") or {}
        lo_b, hi_b = bounds.get("min"), bounds.get("max")
        xs = _finite(c.get("value"), c.get("ci_low"), c.get("ci_high"), lo_b, hi_b, r.get("checked"))
        lo, hi = (min(xs), max(xs)) if xs else (-1.0, 1.0)
        span = hi - lo if hi > lo else max(abs(hi), 1.0)
        left, right = lo - 0.08 * span, hi + 0.08 * span
        ax.set_xlim(left, right)
        ax.axvspan(lo_b if lo_b is not None else left, hi_b if hi_b is not None else right, color="#dafbe1", zorder=0)
        for b in (lo_b, hi_b):
            if b is not None:
                ax.axvline(b, color="#cf222e", ls="--", lw=1.2, zorder=1)
        value = c.get("value")
        if c.get("n_boot") and _finite(c.get("ci_low"), c.get("ci_high")) and value is not None:
            ax.errorbar([value], [0], xerr=[[max(value - c["ci_low"], 0.0)], [max(c["ci_high"] - value, 0.0)]], fmt="o",
                        color=colour, ms=6, capsize=4, lw=1.6, zorder=3)
        elif value is not None:
            ax.plot([value], [0], "o", color=colour, ms=6, zorder=3)
        checked = r.get("checked")
        if checked is not None and value is not None and checked != value:
            ax.plot([checked], [0], "|", color="black", ms=14, mew=2, zorder=4)
        rule = " and ".join(f"{k} {v:.3g}" for k, v in bounds.items() if v is not None)
        ax.text(0.0, 1.0, f"{r['verdict']} ({gate})", transform=ax.transAxes, ha="left", va="bottom", fontsize=FONT,
                color=colour, fontweight="bold")
        ax.text(0.16, 1.0, f"{quantity_label(r)}    threshold: {rule}", transform=ax.transAxes, ha="left", va="bottom",
                fontsize=FONT, color="#57606a")
    fig.subplots_adjust(hspace=1.25, left=0.24, right=0.985, top=1 - 0.28 / (row * n + 0.3), bottom=0.18 / (row * n + 0.3))
    return fig


def sweep_groups(results: list[dict[str, Any]]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """Records that share a criterion id (in one suite) at two or more levels of one parameter:
    ``(criterion id, parameter, records sorted by level)``."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        if r.get("level"):
            groups.setdefault((r.get("suite", ""), r["criterion_id"]), []).append(r)
    out = []
    for (_, cid), recs in groups.items():
        if len(recs) < 2:
            continue
        keys = sorted({k for r in recs for k in r["level"]})
        varying = [k for k in keys if len({repr(r["level"].get(k)) for r in recs}) > 1]
        if not varying:
            continue
        key = varying[0]
        try:
            recs = sorted(recs, key=lambda r: float(r["level"][key]))
        except (TypeError, ValueError):
            recs = sorted(recs, key=lambda r: str(r["level"][key]))
        out.append((cid, key, recs))
    return out


def dose_response_figure(results: list[dict[str, Any]]) -> Any | None:
    """One panel per sweep: the compared quantity (with CI band) against the perturbation level, the threshold bounds
    dashed, each level coloured by its verdict. None without sweeps."""
    groups = sweep_groups(results)
    if not groups:
        return None
    cols = min(2, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = new_figure(5.2 * cols, 3.3 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    for ax, (cid, key, recs) in zip(axes, groups):
        numeric = all(isinstance(r["level"][key], (int, float)) for r in recs)
        xs = [float(r["level"][key]) if numeric else i for i, r in enumerate(recs)]
        ok = [(x, r) for x, r in zip(xs, recs) if isinstance(r.get("compared"), dict)]
        if ok:
            px = [x for x, _ in ok]
            val = [r["compared"]["value"] for _, r in ok]
            lo = [r["compared"]["ci_low"] if r["compared"].get("ci_low") is not None else r["compared"]["value"] for _, r in ok]
            hi = [r["compared"]["ci_high"] if r["compared"].get("ci_high") is not None else r["compared"]["value"] for _, r in ok]
            ax.fill_between(px, lo, hi, color="#0969da", alpha=0.15, lw=0, label="95% CI")
            ax.plot(px, val, "-", color="#0969da", lw=1.4)
            for x, r in ok:
                ax.plot([x], [r["compared"]["value"]], "o", color=_colour(r), ms=7, zorder=3)
            for name in ("min", "max"):  # per level: bounds in standard errors differ from level to level
                pts = [(x, (r.get("bounds") or {}).get(name)) for x, r in ok]
                pts = [(x, b) for x, b in pts if b is not None]
                if len({b for _, b in pts}) == 1:
                    ax.axhline(pts[0][1], color="#cf222e", ls="--", lw=1.1, label=f"threshold ({name})")
                elif pts:
                    ax.plot([x for x, _ in pts], [b for _, b in pts], ls="--", color="#cf222e", lw=1.1, label=f"threshold ({name})")
        for x, r in zip(xs, recs):
            if not isinstance(r.get("compared"), dict):
                ax.annotate(r["verdict"], (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 4), textcoords="offset points",
                            ha="center", fontsize=FONT, color=_colour(r))
        if not numeric:
            ax.set_xticks(xs)
            ax.set_xticklabels([str(r["level"][key]) for r in recs], fontsize=FONT)
        ax.set_title(cid, fontsize=FONT + 2, fontweight="bold", loc="left")
        ax.set_xlabel(key, fontsize=FONT + 1)
        ax.set_ylabel(quantity_label(recs[0]).replace(": change towards worse under the perturbation", ": change towards worse"), fontsize=FONT)
        ax.tick_params(labelsize=FONT)
        ax.grid(alpha=0.3, lw=0.5)
        ax.legend(fontsize=FONT - 1, loc="best", frameon=False)
    fig.tight_layout()
    return fig


def lesion_slice(mask: Any) -> int:
    """The axial slice (index along D) through the lesion centroid of a D×H×W mask (labels > 0): the mean D index of
    its lesion voxels, rounded half up; the mid slice D // 2 when the mask has no lesion."""
    m = np.asarray(mask) > 0
    if m.ndim != 3:
        raise ValueError(f"lesion_slice: expected a D×H×W mask, got shape {m.shape}")
    if not m.any():
        return m.shape[0] // 2
    return int(np.floor(np.nonzero(m)[0].mean() + 0.5))


def axial_sample(samples: dict[str, Any]) -> dict[str, Any]:
    """A sample grid's arrays with volumes turned into slices: ``real`` / ``generated`` N×C×D×H×W become N×C×H×W,
    ``masks`` / ``generated_masks`` (N×1×D×H×W or N×D×H×W) N×H×W, each item cut at the axial slice through its lesion
    centroid (:func:`lesion_slice` of ``masks``, the mid slice without masks or lesion), the indices under
    ``slice_index``. Samples of slices (no 5D images) come back unchanged."""
    arrays = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in samples.items()
              if k in ("real", "generated", "masks", "generated_masks") and v is not None}
    if not any(arrays.get(k) is not None and arrays[k].ndim == 5 for k in ("real", "generated")):
        return samples
    masks = {k: (a[:, 0] if a.ndim == 5 else a) for k, a in arrays.items() if k in ("masks", "generated_masks")}
    n = max(len(a) for a in arrays.values())
    ref = masks.get("masks")
    depth = next(a.shape[2] for k, a in arrays.items() if k in ("real", "generated") and a.ndim == 5)
    index = np.array([lesion_slice(ref[i]) if ref is not None and i < len(ref) else depth // 2 for i in range(n)], dtype=np.int64)
    out = dict(samples)
    for k, a in arrays.items():
        vol = masks.get(k, a)
        out[k] = np.stack([vol[i][:, index[i]] if vol.ndim == 5 else vol[i][index[i]] for i in range(len(vol))])
    out["slice_index"] = index
    return out


def _slices(a: Any, n: int) -> np.ndarray:
    """Masks (or one-channel images) N×H×W from N×1×H×W, N×H×W or H×W; the first ``n``."""
    arr = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
    if arr.ndim == 4:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"sample images: expected N×H×W or N×1×H×W, got shape {arr.shape}")
    return arr[:n]


def _channels(a: Any, n: int) -> np.ndarray:
    """Images N×C×H×W (one channel per contrast) from N×C×H×W, N×H×W or H×W; the first ``n``."""
    arr = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
    if arr.ndim == 2:
        arr = arr[None, None]
    elif arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ValueError(f"sample images: expected N×C×H×W, N×H×W or H×W, got shape {arr.shape}")
    return arr[:n]


def _contrast_names(given: Any, c: int) -> list[str]:
    names = [str(x) for x in np.asarray(given).ravel()] if given is not None else []
    return names if len(names) == c else [f"channel {k}" for k in range(c)] if c > 1 else [""]


def sample_grid_figure(samples: dict[str, Any] | None, n: int = 6, label_names: dict[int, str] | None = None,
                       contrasts: list[str] | tuple[str, ...] | None = None) -> Any | None:
    """Real and generated slices, first ``n`` (columns), with the outline of each mask label drawn on both. One pair of
    rows (real, generated) per contrast, each row labelled with its contrast (``contrasts``, or ``samples["contrasts"]``;
    ``channel k`` when no names are given). ``samples``: ``real``, ``generated`` (N×C×H×W, or N×H×W for one contrast)
    and optionally ``masks`` (shared) or ``generated_masks``. Volumes (N×C×D×H×W) are cut by :func:`axial_sample`, and
    a sample with ``slice_index`` has each column titled with its axial slice. None when ``samples`` is missing or has
    neither row."""
    if not samples:
        return None
    samples = axial_sample(samples)
    sets = [(name, _channels(samples[name], n)) for name in ("real", "generated") if samples.get(name) is not None]
    if not sets:
        return None
    c = max(a.shape[1] for _, a in sets)
    names = _contrast_names(contrasts if contrasts is not None else samples.get("contrasts"), c)
    rows = [(f"{name}\n{names[k]}".strip(), name, a[:, k]) for k in range(c) for name, a in sets if k < a.shape[1]]
    masks = _slices(samples["masks"], n) if samples.get("masks") is not None else None
    gen_masks = _slices(samples["generated_masks"], n) if samples.get("generated_masks") is not None else masks
    cols = max(len(a) for _, _, a in rows)
    index = np.asarray(samples["slice_index"]).ravel() if samples.get("slice_index") is not None else None
    fig = new_figure(1.75 * cols + 0.4, 1.85 * len(rows))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    labels = sorted({int(v) for m in (masks, gen_masks) if m is not None for v in np.unique(m) if v > 0})
    for i, (title, name, arr) in enumerate(rows):
        row_masks = masks if name == "real" else gen_masks
        for j in range(cols):
            ax = axes[i, j]
            if not _image_cell(ax, arr, row_masks, j, labels):
                continue
            if j == 0:
                ax.set_ylabel(title, fontsize=FONT + 2, fontweight="bold")
            if i == 0 and index is not None and j < len(index):
                ax.set_title(f"axial slice {int(index[j])}", fontsize=FONT + 1)
    _label_legend(fig, labels, label_names)
    fig.subplots_adjust(wspace=0.04, hspace=0.06, left=0.04, right=0.99, top=0.99, bottom=(0.09 / max(1, len(rows) / 2)) if labels else 0.01)
    return fig


def _image_cell(ax: Any, images: Any, masks: Any, j: int, labels: list[int]) -> bool:
    """Cell ``j`` of a grid row: image ``j`` in grey on [0, 1] with its mask's label outlines, no ticks; the cell hidden
    (False) where the row has no image ``j``."""
    ax.set_xticks([])
    ax.set_yticks([])
    if j >= len(images):
        ax.set_visible(False)
        return False
    ax.imshow(images[j], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if masks is not None and j < len(masks):
        _outline(ax, masks[j], labels)
    return True


def _outline(ax: Any, mask: np.ndarray, labels: list[int]) -> None:
    """The outline of each label of ``mask`` on ``ax``, in its colour (smaller regions drawn on top)."""
    areas = {lab: int((mask == lab).sum()) for lab in labels}
    for k, lab in sorted(enumerate(labels), key=lambda kl: -areas[kl[1]]):
        if areas[lab]:
            ax.contour((mask == lab).astype(float), levels=[0.5], colors=[LABEL_COLOURS[k % len(LABEL_COLOURS)]], linewidths=0.9)


def _label_legend(fig: Any, labels: list[int], label_names: dict[int, str] | None) -> None:
    if labels:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=LABEL_COLOURS[k % len(LABEL_COLOURS)], lw=2) for k in range(len(labels))]
        legend = [f"{lab} {(label_names or {}).get(lab, '')}".strip() for lab in labels]
        fig.legend(handles, legend, loc="lower center", ncol=len(labels), fontsize=FONT + 1, frameon=False, bbox_to_anchor=(0.5, -0.01))


# ------------------------------------------------------------------------------------------- worst-case gallery

#: The contrast a gallery shows for a measure that takes every contrast, in order of preference (FLAIR shows the whole
#: tumour with its oedema, as in the BraTS annotation protocol).
GALLERY_CONTRASTS = ("flair", "t2", "t1c", "t1")


def gallery_channel(contrasts: list[str] | tuple[str, ...], contrast: str | None = None) -> int:
    """The channel a gallery shows: ``contrast`` (a measure taken on that contrast alone), else the first of
    :data:`GALLERY_CONTRASTS` the data have, else channel 0."""
    names = list(contrasts)
    if contrast in names:
        return names.index(contrast)
    return next((names.index(c) for c in GALLERY_CONTRASTS if c in names), 0)


def worst_case_images(rows: list[int], real: Any, masks: Any | None, generated: Any | None, channel: int) -> dict[str, np.ndarray]:
    """Items ``rows`` of the real images, their masks and the generated images (tensors N×C×..., N×1×...), in one
    ``channel``, gathered a few rows at a time (:func:`mriq_validate.arrays.gather`: a mapped set is never read whole);
    volumes cut at the axial slice through each lesion's centroid (:func:`axial_sample`). Float32 images K×1×H×W, int16
    masks: what :func:`gallery_figure` draws."""
    from .arrays import gather

    def pick(t: Any) -> np.ndarray:
        return gather(t[:, channel:channel + 1], rows).numpy().astype(np.float32)

    out: dict[str, Any] = {"real": pick(real)}
    if generated is not None:
        out["generated"] = pick(generated)
    if masks is not None:
        out["masks"] = gather(masks, rows).numpy().astype(np.int16)
    return axial_sample(out)


def gallery_figure(images: dict[str, Any], captions: dict[str, list[str]], titles: list[str],
                   label_names: dict[int, str] | None = None, row_labels: dict[str, str] | None = None) -> Any | None:
    """The worst items side by side: a row of generated images (when given) over a row of the real images with the same
    masks, each with the outline of the mask labels; ``titles`` above the columns (item ids), ``captions[row]`` under
    each image (its value), ``row_labels[row]`` left of each row (default: the row's name). ``images``: ``real``,
    optionally ``generated`` (K×1×H×W or K×H×W) and ``masks``, as :func:`worst_case_images` gives them. None when
    there is no item."""
    rows = [(name, _channels(images[name], len(titles))[:, 0]) for name in ("generated", "real") if images.get(name) is not None]
    if not rows or not titles:
        return None
    masks = _slices(images["masks"], len(titles)) if images.get("masks") is not None else None
    labels = sorted({int(v) for v in np.unique(masks) if v > 0}) if masks is not None else []
    cols = len(titles)
    fig = new_figure(1.6 * cols + 0.5, 1.95 * len(rows) + (0.35 if labels else 0.1))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for i, (name, arr) in enumerate(rows):
        for j in range(cols):
            ax = axes[i, j]
            if not _image_cell(ax, arr, masks, j, labels):
                continue
            if i == 0:
                ax.set_title(titles[j], fontsize=FONT, pad=2)
            ax.set_xlabel(captions.get(name, [""] * cols)[j], fontsize=FONT, labelpad=2)
            if j == 0:
                ax.set_ylabel((row_labels or {}).get(name, name), fontsize=FONT + 1, fontweight="bold")
    _label_legend(fig, labels, label_names)
    fig.subplots_adjust(wspace=0.05, hspace=0.35, left=0.05, right=0.99, top=0.93, bottom=0.16 if labels else 0.08)
    return fig
