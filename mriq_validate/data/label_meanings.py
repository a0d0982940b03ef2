"""What each label value of a brain-tumour dataset means: the canonical meanings and regions, the numbering each dataset
family fixes, and how a dataset's own declaration (``dataset.json`` labels or regions, a suite's ``labels:`` map) is
read and checked against the values found in its masks.

Label meanings are canonical (:data:`LABEL_VALUES`): masks are remapped to them, so ``whole_tumour`` is the same
tissue in every layout (:func:`plan_meanings`, :func:`finish_meanings`). The layouts themselves are
:mod:`mriq_validate.data.layouts`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .cases import Layout


#: Canonical mask value of each tumour meaning (BraTS 2023 numbering, plus the 2024 resection cavity).
LABEL_VALUES: dict[str, int] = {"necrotic_core": 1, "oedema": 2, "enhancing": 3, "resection_cavity": 4}
#: Tumour regions by meaning, as BraTS evaluates them (the resection cavity is in none of them, arXiv:2405.18368).
TUMOUR_REGIONS: dict[str, tuple[str, ...]] = {
    "whole_tumour": ("necrotic_core", "oedema", "enhancing"),
    "tumour_core": ("necrotic_core", "enhancing"),
    "enhancing_tumour": ("enhancing",),
}
BACKGROUND = "background"
LABELS_HINT = "labels: {1: oedema, 2: necrotic_core, 3: enhancing}"

# Names of label meanings in dataset.json files, challenge documents and suite ``labels:`` maps, keyed by the name
# lower-cased with everything but letters and digits removed (see :func:`norm_name`).
_MEANING_SYNONYMS: dict[str, str] = {
    **dict.fromkeys(["background", "bg", "clearlabel", "none"], BACKGROUND),
    **dict.fromkeys(["oedema", "edema", "ed", "snfh", "peritumoraledema", "peritumouraloedema", "peritumoraledematoustissue",
                     "surroundingnonenhancingflairhyperintensity", "flairhyperintensity", "invadedtissue"], "oedema"),
    **dict.fromkeys(["necroticcore", "necrotic", "necrosis", "ncr", "net", "netc", "ncrnet", "ncrandnet", "nonenhancing",
                     "nonenhancingtumor", "nonenhancingtumour", "nonenhancingtumorcore", "nonenhancingtumourcore",
                     "necroticcore", "necrotictumorcore", "necrotictumourcore", "necroticandnonenhancingtumorcore",
                     "necroticnonenhancingtumorcore", "necroticandnonenhancingtumourcore"], "necrotic_core"),
    **dict.fromkeys(["enhancing", "enhancingtumor", "enhancingtumour", "et", "gdenhancingtumor", "gdenhancingtumour",
                     "enhancingtissue", "enhancingcore"], "enhancing"),
    **dict.fromkeys(["resectioncavity", "rc", "cavity"], "resection_cavity"),
}
_REGION_SYNONYMS: dict[str, str] = {
    **dict.fromkeys(["wholetumor", "wholetumour", "wt"], "whole_tumour"),
    **dict.fromkeys(["tumorcore", "tumourcore", "tc"], "tumour_core"),
    **dict.fromkeys(["enhancingtumor", "enhancingtumour", "et", "activetumor", "activetumour"], "enhancing_tumour"),
}
# Placeholder names that say nothing of the tissue ("label 1", "class2", "foreground").
_GENERIC_NAME = re.compile(r"(label|class|structure|roi|object|segment|foreground|fg|mask|tissue|region)?\d*")


# --------------------------------------------------------------------------------------------------- conventions


@dataclass(frozen=True)
class Convention:
    """The label numbering a dataset family fixes: value → meaning; ``optional`` values are declared when found."""

    name: str
    meanings: dict[int, str]
    optional: dict[int, str] = field(default_factory=dict)
    reference: str = ""


CONVENTIONS: dict[str, Convention] = {
    "brats2021": Convention("BraTS 2018–2021", {1: "necrotic_core", 2: "oedema", 4: "enhancing"},
                            reference="Baid et al. 2021, arXiv:2107.02314 (1 NCR/NET, 2 ED, 4 ET)"),
    "brats2023": Convention("BraTS 2023–2025", {1: "necrotic_core", 2: "oedema", 3: "enhancing"}, {4: "resection_cavity"},
                            reference="BraTS 2023 data (1 NETC, 2 SNFH, 3 ET); 4 RC from the BraTS 2024 post-treatment "
                                      "glioma data, arXiv:2405.18368"),
}


def norm_name(name: str) -> str:
    """``name`` lower-cased with everything but letters and digits removed, the key of every synonym table."""
    return re.sub(r"[^a-z0-9]+", "", str(name).lower())


# --------------------------------------------------------------------------------------------------- label meaning


def label_meaning(name: str) -> str | None:
    """The meaning of a label named ``name``: a canonical tumour meaning (``"edema"`` → ``"oedema"``, ``"NETC"`` →
    ``"necrotic_core"``), ``"background"``, the name itself lower-cased for another tissue (``"vessel"``), or None
    for a placeholder that says nothing (``"label 1"``, ``"foreground"``, ``"2"``).

    >>> [label_meaning(n) for n in ("edema", "non-enhancing tumor", "enhancing tumour", "RC", "Vessel", "label_2")]
    ['oedema', 'necrotic_core', 'enhancing', 'resection_cavity', 'vessel', None]
    """
    key = norm_name(name)
    if key in _MEANING_SYNONYMS:
        return _MEANING_SYNONYMS[key]
    if _GENERIC_NAME.fullmatch(key):
        return None
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")


def meanings_from_regions(regions: dict[str, tuple[int, ...]], where: str) -> dict[int, str]:
    """Label meanings from nnU-Net region definitions: a value in the enhancing region is enhancing; in the tumour
    core but not enhancing, necrotic core; in the whole tumour only, oedema. DataError unless whole tumour, tumour
    core and enhancing tumour are all named."""
    named: dict[str, set[int]] = {}
    for name, values in regions.items():
        r = _REGION_SYNONYMS.get(norm_name(name))
        if r is None:
            raise DataError(f"{where}: region {name!r} {list(values)} is not whole tumour, tumour core or enhancing tumour, "
                            f"so the meaning of its labels is unknown; give the suite's data.{LABELS_HINT}")
        named[r] = set(values)
    if set(named) != set(TUMOUR_REGIONS):
        raise DataError(f"{where}: regions {sorted(regions)} do not define whole tumour, tumour core and enhancing tumour, "
                        f"so the meaning of each label is unknown; give the suite's data.{LABELS_HINT}")
    et, tc, wt = named["enhancing_tumour"], named["tumour_core"], named["whole_tumour"]
    if not et <= tc <= wt:
        raise DataError(f"{where}: regions are not nested (enhancing {sorted(et)} within tumour core {sorted(tc)} within "
                        f"whole tumour {sorted(wt)}); give the suite's data.{LABELS_HINT}")
    out = {}
    for v in sorted(wt):
        out[v] = "enhancing" if v in et else "necrotic_core" if v in tc else "oedema"
    return out


def declared_meanings(labels: Any, path: Path, regions_class_order: Any = None) -> tuple[dict[int, str], str]:
    """(value → meaning, source) from a dataset.json ``labels``: MSD / nnU-Net v1 map values to names
    (``{"1": "edema"}``), nnU-Net v2 names to values (``{"edema": 1}``) or, for region-based training, names to
    value lists (``{"whole tumor": [1, 2, 3]}``). DataError naming the file for a malformed map."""
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path}: 'labels' must be a non-empty object, found {labels!r}")
    if all(str(k).isdigit() for k in labels):  # MSD / nnU-Net v1: value -> name
        out = {}
        for k, name in labels.items():
            m = label_meaning(str(name))
            if m is None:
                raise _unnamed(path, int(k), name)
            out[int(k)] = m
        return out, f"dataset.json ({path}) 'labels' value → name"
    parsed: dict[str, tuple[int, ...]] = {}
    for name, value in labels.items():
        vals = value if isinstance(value, (list, tuple)) else [value]
        if not vals or not all(isinstance(v, int) or (isinstance(v, str) and v.isdigit()) for v in vals):
            raise DataError(f"{path}: label {name!r}: expected an integer or a list of integers, found {value!r}")
        parsed[str(name)] = tuple(int(v) for v in vals)
    if any(len(v) > 1 for v in parsed.values()):  # region-based (nnU-Net v2), e.g. Dataset137_BraTS21.py
        regions = {n: v for n, v in parsed.items() if label_meaning(n) != BACKGROUND}
        meanings = meanings_from_regions(regions, f"{path} 'labels'")
        bg = {v[0]: BACKGROUND for n, v in parsed.items() if label_meaning(n) == BACKGROUND}
        order = f", regions_class_order {list(regions_class_order)}" if regions_class_order is not None else ""
        return {**bg, **meanings}, f"dataset.json ({path}) 'labels' as regions{order}: meanings derived from the regions"
    out = {}
    for name, (v,) in parsed.items():
        m = label_meaning(name)
        if m is None:
            raise _unnamed(path, v, name)
        if v in out and out[v] != m:
            raise DataError(f"{path}: label value {v} is named both {out[v]!r} and {name!r}")
        out[v] = m
    return out, f"dataset.json ({path}) 'labels' name → value"


def _unnamed(path: Path, value: int, name: Any) -> DataError:
    return DataError(f"{path}: label {value} is named {name!r}, which does not say the tissue; give the suite's "
                     f"data.{LABELS_HINT} (names: necrotic_core, oedema, enhancing, resection_cavity, or any tissue name)")


def user_meanings(labels: dict[Any, Any]) -> dict[int, str]:
    """Value → meaning from a suite's ``data.labels`` (keys may be strings after a JSON round trip). DataError naming
    a key that is no integer or a meaning that says nothing."""
    out = {}
    for k, name in labels.items():
        if isinstance(k, bool) or not (isinstance(k, int) or str(k).strip().lstrip("-").isdigit()):
            raise DataError(f"data.labels key {k!r}: expected a label value (an integer), as in {LABELS_HINT}")
        m = label_meaning(str(name))
        if m is None:
            raise DataError(f"data.labels {k}: {name!r} does not say the tissue; use necrotic_core, oedema, enhancing, "
                            "resection_cavity, background, or a tissue name")
        out[int(k)] = m
    return out


@dataclass(frozen=True)
class MeaningPlan:
    """Label meanings known before any label file is read: value → meaning, where that came from, and values that are
    declared only when found (the 2024 resection cavity)."""

    meanings: dict[int, str]
    source: str
    optional: dict[int, str] = field(default_factory=dict)
    convention: str | None = None


def plan_meanings(layout: Layout, labels: dict[Any, Any] | None) -> MeaningPlan | None:
    """How label values get their meaning: the suite's ``labels`` map decides when given; else the layout's
    convention or its dataset.json; None when nothing says it (the caller then reports the values it finds)."""
    if labels:
        return MeaningPlan(user_meanings(labels), "suite data.labels")
    if layout.convention:
        conv = CONVENTIONS[layout.convention]
        return MeaningPlan(dict(conv.meanings), f"convention: {conv.name} ({conv.reference})", dict(conv.optional), layout.convention)
    if layout.dataset_json is not None and layout.dataset_json_path is not None:
        meta = layout.dataset_json
        return MeaningPlan(*declared_meanings(meta["labels"], layout.dataset_json_path, meta.get("regions_class_order")))
    return None


def unknown_meaning_error(layout: Layout, found: dict[int, list[str]], read: int, total: int) -> DataError:
    """The error for labels whose meaning nothing says, naming the values found and asking for a ``labels:`` map."""
    values = sorted(v for v in found if v != 0)
    why = "; ".join(layout.notes) or ("imagesTr/ has no dataset.json" if layout.name == "imagesTr"
                                      else f"the {layout.description} layout does not fix label meanings")
    seen = f"in {read} of {total} label files" if read < total else "in the label files"
    example = ", ".join(f"{v}: <meaning>" for v in values) or "1: <meaning>"
    return DataError(f"{layout.root}: the meaning of label values {values} (found {seen}) is unknown ({why}); add to the "
                     f"suite's data block labels: {{{example}}} with meanings necrotic_core, oedema, enhancing, "
                     f"resection_cavity or a tissue name, e.g. {LABELS_HINT}")


@dataclass(frozen=True)
class LabelMeaning:
    """Final label meaning: source value → meaning → value in the masks, the data's labels and regions."""

    meanings: dict[int, str]
    values: dict[int, int]
    source: str
    labels: dict[str, int]
    regions: dict[str, tuple[int, ...]]

    def remap(self, masks: np.ndarray) -> np.ndarray:
        """``masks`` (source values) in the canonical values; every value must be in :attr:`values`."""
        out = np.zeros(masks.shape, np.int64)
        for src, dst in self.values.items():
            if dst:
                out[masks == src] = dst
        return out

    def provenance(self) -> list[dict[str, Any]]:
        """JSON-ready ``[{"source_value", "meaning", "value"}]``."""
        return [{"source_value": v, "meaning": self.meanings[v], "value": self.values[v]} for v in sorted(self.meanings)]


def finish_meanings(plan: MeaningPlan, found: dict[int, list[str]], root: Path) -> LabelMeaning:
    """The label meaning once the label values ``found`` (value → files holding it) are known. DataError naming a
    value the plan does not explain, with the files that hold it."""
    meanings = dict(plan.meanings)
    for v, m in plan.optional.items():
        if v in found:
            meanings[v] = m
    unexplained = sorted(v for v in found if v != 0 and v not in meanings)
    if unexplained:
        v = unexplained[0]
        files = found[v][:3]
        extra = ""
        if plan.convention == "brats2021" and v == 3:
            extra = (" (BraTS 2018–2021 has no label 3: BraTS 2012–2016 used it for non-enhancing tumour, and a converted "
                     "dataset may use it for enhancing tumour)")
        raise DataError(f"{root}: label values {unexplained} found (e.g. value {v} in {files}) are not in the label map of "
                        f"{plan.source}: {dict(sorted(meanings.items()))}{extra}; give the suite's data.labels for every "
                        f"value, e.g. {LABELS_HINT}")
    meanings.setdefault(0, BACKGROUND)
    # tumour meanings take their canonical values; another tissue keeps its own value unless that is taken
    used = {LABEL_VALUES[m] for m in meanings.values() if m in LABEL_VALUES}
    values: dict[int, int] = {}
    others: dict[str, int] = {}
    for v in sorted(meanings):
        m = meanings[v]
        if m == BACKGROUND:
            values[v] = 0
        elif m in LABEL_VALUES:
            values[v] = LABEL_VALUES[m]
        elif m in others:
            values[v] = others[m]
        else:
            values[v] = others[m] = v if v > 0 and v not in used else max([len(LABEL_VALUES), *used, *meanings]) + 1
            used.add(values[v])
    labels = dict(sorted(((m, values[v]) for v, m in meanings.items() if m != BACKGROUND), key=lambda kv: (kv[1], kv[0])))
    regions: dict[str, tuple[int, ...]] = {}
    for region, parts in TUMOUR_REGIONS.items():
        vals = tuple(sorted({labels[p] for p in parts if p in labels}))
        if vals:
            regions[region] = vals
    fg = tuple(sorted(set(labels.values())))
    if fg:
        regions["foreground"] = fg
    return LabelMeaning(meanings, values, plan.source, labels, regions)
