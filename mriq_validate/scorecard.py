"""The report's ScoreCard view: every criterion placed on one of the seven Cs and one of the eight sections of the
FDA CDRH/OSEL Synthetic Data ScoreCard (Zamzmi et al., *Communications Engineering* 4:130, 2025, arXiv 2406.11143;
the 7 Cs and the scorecard's sections as the toolbox github.com/DIDSR/ScoreCard names them).

A criterion's place comes from the first rule that gives one (:data:`RULES`): the suite's own ``scorecard:`` field,
then a criterion evaluated per subgroup (a non-null ``by``) is Consistency, then the measure's default
(:data:`METRIC_PLACEMENTS`); a measure without one is reported unmapped, never guessed. Self-checks (``kind:
sensitivity`` or ``reference``) keep their measure's C but sit under limitations: they judge the tool, not the data.
The section also says which Cs the suites cover and which they do not, what is out of scope, and carries the
reference-dataset card, the intended usage, the generation process and the limitations, from the rest of the report.
Pure: it reads the report's records and provenance and imports nothing of the run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

FRAMEWORK = ("Synthetic Data ScoreCard, the 7 Cs framework of FDA CDRH/OSEL: Zamzmi et al., Communications Engineering "
             "4:130 (2025), arXiv 2406.11143; toolbox github.com/DIDSR/ScoreCard")

ScorecardC = Literal["congruence", "coverage", "completeness", "consistency", "comprehension", "constraint", "compliance"]
#: The seven Cs in the paper's order: name → what it asks of synthetic data (after the ScoreCard's definitions).
SEVEN_CS: dict[str, str] = {
    "congruence": "how closely the synthetic data match the distribution of real patient data",
    "coverage": "how much of the variability, range and novelty of the real data the synthetic data capture",
    "completeness": "whether the synthetic data hold every detail the intended task needs",
    "consistency": "whether the quality holds across subgroups (demographic, disease class, site) or over time",
    "comprehension": "how transparent and clearly documented the generation process and its data are",
    "constraint": "whether the data respect anatomical, biological, clinical, geometric or user-defined constraints",
    "compliance": "whether the data meet privacy requirements, format standards and the applicable regulations",
}
#: The scorecard's eight sections, in order: key → title (as the ScoreCard toolbox names them).
SECTIONS: dict[str, str] = {
    "general_information": "General Information",
    "data_quality": "Data Quality Evaluation (7 Cs)",
    "task_based_evaluation": "Task-based Evaluation",
    "human_evaluation": "Human-based Evaluation",
    "ethics_limitations": "Ethical Considerations, Limitations & Recommendations",
    "dataset_usage": "Dataset Usage (intended usage)",
    "generation_process": "Training & Validation Process (generation process)",
    "reference_dataset": "Reference Dataset Information",
}
NOT_STATED = "not stated by the data"


@dataclass(frozen=True)
class Placement:
    """Where a criterion sits: a C (None: unmapped), a section, which rule placed it and why."""

    c: str | None
    section: str
    source: str
    reason: str


def _task(c: str, why: str) -> Placement:
    return Placement(c, "task_based_evaluation", "measure", why)


def _quality(c: str, why: str) -> Placement:
    return Placement(c, "data_quality", "measure", why)


_PROTOCOL_A = ("protocol A: a segmenter trained on real images finds the labelled lesion in each generated image, so "
               "image and label agree as a real-data model sees them (congruence of the conditional distribution)")
_PROTOCOL_B = ("protocol B: a segmenter trained on the generated image-mask pairs works on real images, so the data hold "
               "what the task needs to learn (completeness for the intended task)")
_DISTRIBUTION = "distance between the generated and the real feature distributions"
_FIDELITY = "share or density of generated samples inside the real manifold (fidelity)"
_DIVERSITY = "how much of the real data's variability the generated set spans"
_IQA = "no-reference image quality of the generated images against that of real images"

#: Each measure's default place.
METRIC_PLACEMENTS: dict[str, Placement] = {
    "dice": _task("congruence", _PROTOCOL_A),
    "hd95": _task("congruence", _PROTOCOL_A),
    "dice_lesionwise": _task("congruence", _PROTOCOL_A),
    "hd95_lesionwise": _task("congruence", _PROTOCOL_A),
    "dice_tstr": _task("completeness", _PROTOCOL_B),
    "dice_augmented": _task("completeness", _PROTOCOL_B),
    "fid": _quality("congruence", _DISTRIBUTION),
    "frd": _quality("congruence", _DISTRIBUTION),
    "kid": _quality("congruence", _DISTRIBUTION),
    "mmd": _quality("congruence", _DISTRIBUTION),
    "precision": _quality("congruence", _FIDELITY),
    "density": _quality("congruence", _FIDELITY),
    "c2st_auc": _quality("congruence", "how well a classifier tells generated from real images (two-sample test)"),
    "recall": _quality("coverage", _DIVERSITY + " (share of real samples inside the generated manifold)"),
    "coverage": _quality("coverage", _DIVERSITY + " (real neighbourhoods that hold a generated sample)"),
    "vendi": _quality("coverage", _DIVERSITY + " (effective number of distinct samples)"),
    "ms_ssim_diversity": _quality("coverage", _DIVERSITY + " (structural similarity of random pairs; mode collapse)"),
    "region_presence": _quality("completeness", "every tumour sub-region the task needs appears in the generated images"),
    "brain_intensity": _quality("congruence", "brain intensity of the generated images against that of real images"),
    "piqe": _quality("congruence", _IQA),
    "niqe_mri": _quality("congruence", _IQA),
    "pyiqa": _quality("congruence", _IQA),
    "constraint_violation": _quality("constraint", "share of generated images that break a stated anatomical or label constraint"),
    "copy_fraction": _quality("compliance", "privacy: generated images that are near-copies of training images (memorisation)"),
}


def _metric_name(entry: Mapping[str, Any]) -> str | None:
    return (entry.get("metric") or {}).get("name") or entry.get("metric_name")


def _from_suite(entry: Mapping[str, Any], default: Placement | None) -> Placement | None:
    c = entry.get("scorecard")
    if not c:
        return None
    return Placement(c, default.section if default else "data_quality", "suite", f"set in the suite (scorecard: {c})")


def _from_subgroup(entry: Mapping[str, Any], default: Placement | None) -> Placement | None:
    by = entry.get("by")
    if by is None:
        return None
    name = by.get("name", by) if isinstance(by, Mapping) else by
    return Placement("consistency", default.section if default else "data_quality", "subgroup",
                     f"evaluated per subgroup (by: {name}): whether the quality holds across subgroups is Consistency")


def _from_measure(entry: Mapping[str, Any], default: Placement | None) -> Placement | None:
    return default


#: The rules a criterion's place comes from, first match wins.
RULES: tuple[Callable[[Mapping[str, Any], Placement | None], Placement | None], ...] = (_from_suite, _from_subgroup, _from_measure)


def placement(entry: Mapping[str, Any]) -> Placement:
    """Where the criterion of record or plan entry ``entry`` sits (self-checks under limitations); unmapped, with the
    reason, when no rule places it."""
    default = METRIC_PLACEMENTS.get(_metric_name(entry) or "")
    found = next((p for rule in RULES if (p := rule(entry, default)) is not None), None)
    if found is None:
        found = Placement(None, "data_quality", "unmapped", f"measure {_metric_name(entry)!r} has no default place in the "
                          "ScoreCard; set `scorecard:` on the criterion")
    if entry.get("kind") in ("sensitivity", "reference"):
        return Placement(found.c, "ethics_limitations", found.source, "self-check of the tool on real data (what the "
                         f"measure can see, not a score of the model); its measure: {found.reason}")
    return found


#: Said of a C that no criterion covers.
UNCOVERED: dict[str, str] = {
    "comprehension": "no criterion measures it; this report documents the evaluation (context of use, traceability, "
                     "provenance), and the generation process only as far as the model's provenance states it",
    "consistency": "no criterion is evaluated per subgroup (a criterion's `by:` option), so stability across sites, "
                   "demographics or disease classes is not shown",
    "constraint": "no criterion checks anatomical, geometric or label constraints item by item",
    "compliance": "no criterion checks privacy (e.g. memorisation of training images) or format compliance",
}
#: What the gate does not assess, said in every scorecard.
OUT_OF_SCOPE: tuple[dict[str, str], ...] = (
    {"topic": "human evaluation", "statement": "No reader study, visual Turing test or radiologist rating is part of the "
     "gate; the worst-case gallery in report.html is material for a failure-case review, not a substitute."},
    {"topic": "privacy beyond memorisation", "statement": "copy_fraction finds near-copies of whole training images; "
     "membership and attribute inference, re-identification risk, k-anonymity and differential privacy are not assessed."},
    {"topic": "format and regulatory compliance", "statement": "Conformance of generated files to DICOM or NIfTI "
     "conventions and to local or international requirements is not checked."},
    {"topic": "clinical validity", "statement": "Downstream Dice with one small segmenter stands for the intended task; "
     "no clinical endpoint or reader performance is measured."},
)
#: Licences of the data sources the package embeds, by the start of the data provenance's ``source``.
DATA_LICENCES: dict[str, str] = {
    "MNI ICBM152 2009a": "the MNI ICBM152 2009a template: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging "
                         "Centre, Montreal Neurological Institute, McGill University; permission to use, copy, modify and "
                         "distribute for any purpose without fee, the notice kept in all copies, provided as is without "
                         "warranty (nilearn's dataset description records the licence as unknown); the simulated contrasts "
                         "and tumours are generated by this package (Apache-2.0)",
}


# --------------------------------------------------------------------------------------------------------- sections


def _criteria(entries: Iterable[Mapping[str, Any]], not_selected: set[str], not_run: set[str]) -> list[dict[str, Any]]:
    """One row per criterion (sweep levels together), in suite file order: its place and the verdicts of its items."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        key = (str(e.get("suite")), e["criterion_id"])
        state = "NOT SELECTED" if e["item_id"] in not_selected else "NOT RUN" if e["item_id"] in not_run else e.get("verdict", "NOT RUN")
        if key in rows:
            if e["item_id"] not in rows[key]["_items"]:
                rows[key]["_items"].add(e["item_id"])
                rows[key]["verdicts"].append(state)
            continue
        p = placement(e)
        rows[key] = {"criterion_id": e["criterion_id"], "suite": e.get("suite"), "metric": _metric_name(e), "kind": e.get("kind", "model"),
                     "gate": bool(e.get("gate", True)), "c": p.c, "section": p.section, "source": p.source, "reason": p.reason,
                     "verdicts": [state], "_items": {e["item_id"]}, "_at": (key[0], e.get("suite_line") or 0, len(rows))}
    return [{k: v for k, v in r.items() if k not in ("_items", "_at")} for r in sorted(rows.values(), key=lambda r: r["_at"])]


def _cs(criteria: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name, definition in SEVEN_CS.items():
        mine = [c for c in criteria if c["c"] == name and c["kind"] == "model"]
        evaluated = [c["criterion_id"] for c in mine if any(v in ("PASS", "FAIL") for v in c["verdicts"])]
        out.append({"name": name, "title": name.capitalize(), "definition": definition, "covered": bool(mine),
                    "criteria": [c["criterion_id"] for c in mine], "gating": [c["criterion_id"] for c in mine if c["gate"]],
                    "evaluated": evaluated, "note": None if mine else UNCOVERED.get(name, "no criterion of the suites covers it")})
    return out


def _licence(prov: Mapping[str, Any]) -> str:
    if prov.get("licence"):
        return str(prov["licence"])
    source = str(prov.get("source") or "")
    return next((text for start, text in DATA_LICENCES.items() if source.startswith(start)), NOT_STATED)


def _cases(prov: Mapping[str, Any]) -> Any:
    if prov.get("n_cases") is not None:
        return prov["n_cases"]
    found = re.search(r"(\d+) cases\)", str(prov.get("source") or ""))
    return int(found.group(1)) if found else NOT_STATED


def _sites(prov: Mapping[str, Any]) -> str:
    sites = (prov.get("generator") or {}).get("sites") if isinstance(prov.get("generator"), Mapping) else None
    if sites:
        return f"{len(sites)} simulated acquisition sites (a contrast and noise profile each)"
    return str(prov["sites"]) if prov.get("sites") else NOT_STATED


def dataset_card(context: Mapping[str, Any]) -> dict[str, Any]:
    """The reference-dataset card of one context's data provenance; fields the data do not state say so."""
    data = context.get("data") or {}
    prov = data.get("provenance") or {}
    kind = data.get("item_kind") or "items"
    return {
        "name": data.get("name") or context.get("data_spec"), "source": prov.get("source") or NOT_STATED,
        "simulated": prov.get("simulated") or NOT_STATED, "cases": _cases(prov), "sites": _sites(prov),
        "contrasts": data.get("contrasts") or NOT_STATED, "labels": data.get("labels") or NOT_STATED,
        "regions": data.get("regions") or NOT_STATED,
        "split_sizes": {"train": data.get("n_train"), "test": data.get("n_test"), "unit": kind} if data else NOT_STATED,
        "spacing_mm": data.get("spacing_mm") or NOT_STATED, "preprocessing": prov.get("preprocessing") or NOT_STATED,
        "licence": _licence(prov), "digests": data.get("digests") or NOT_STATED,
    }


def _section(key: str, status: str, summary: str, criteria: list[str] | None = None, **content: Any) -> dict[str, Any]:
    return {"key": key, "title": SECTIONS[key], "status": status, "criteria": criteria or [], "summary": summary, "content": content}


def _ids(criteria: list[dict[str, Any]], section: str) -> list[str]:
    return [c["criterion_id"] for c in criteria if c["section"] == section]


def scorecard_section(report: Mapping[str, Any], entries: Iterable[Mapping[str, Any]],
                      deselected: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The ``scorecard`` section of ``report`` (everything but it built). ``entries``: every criterion item's record or
    plan entry (run, not run); ``deselected``: the plan entries of items not selected to run."""
    deselected = list(deselected)
    not_run = {n["item_id"] for n in report.get("deviations", {}).get("not_run", [])}
    criteria = _criteria([*entries, *deselected], {d["item_id"] for d in deselected}, not_run)
    contexts = report.get("provenance", {}).get("contexts") or []
    suites = report.get("suites") or []
    lim = report.get("limitations") or {}
    cs = _cs(criteria)
    human = "No reader study is part of the gate; report.html shows the worst generated items of each gating per-item criterion for a person to review."
    models = [{"spec": (c.get("model") or {}).get("spec"), "provenance": c.get("model")} for c in contexts if c.get("model")]
    cards = [dataset_card(c) for c in contexts if c.get("data")]
    blind = [s["statement"] for s in lim.get("sensitivity", []) if s.get("detected") is False]
    sections = [
        _section("general_information", "reported", "suites, model, reference data and the release decision of this run",
                 suites=[f"{s.get('name')} version {s.get('version')}" for s in suites],
                 models=[m["spec"] for m in models], data=[c["name"] for c in cards],
                 decision=(report.get("decision") or {}).get("status"), point_of_contact="not stated by the suite"),
        _section("data_quality", "reported" if _ids(criteria, "data_quality") else "not covered",
                 f"{sum(c['covered'] for c in cs)} of the 7 Cs covered by the suites' criteria", _ids(criteria, "data_quality"),
                 covered=[c["name"] for c in cs if c["covered"]], not_covered=[c["name"] for c in cs if not c["covered"]]),
        _section("task_based_evaluation", "reported" if _ids(criteria, "task_based_evaluation") else "not covered",
                 "downstream segmentation: Dice and HD95 of segmenters trained on real or on generated data",
                 _ids(criteria, "task_based_evaluation")),
        _section("human_evaluation", "not covered", human),
        _section("ethics_limitations", "reported", "what each measure is blind to, what the self-checks showed, what is out of scope",
                 _ids(criteria, "ethics_limitations"), measures=sorted(lim.get("measures") or {}), not_detected=blind,
                 advisory_criteria=list(lim.get("advisory_criteria") or []), out_of_scope=[o["topic"] for o in OUT_OF_SCOPE]),
        _section("dataset_usage", "reported" if suites else "not covered", "the suites' context of use: what the generated data are for",
                 context_of_use=[{"suite": s.get("name"), "text": s.get("context_of_use")} for s in suites]),
        _section("generation_process", "partly" if models else "not covered",
                 "the model as its spec and provenance give it; how it was trained is not stated to the gate", models=models),
        _section("reference_dataset", "partly" if any(NOT_STATED in map(str, card.values()) for card in cards) else
                 "reported" if cards else "not covered", "the real data the generated data are compared with", datasets=cards),
    ]
    return {"framework": FRAMEWORK, "cs": cs, "criteria": criteria, "sections": sections, "out_of_scope": [dict(o) for o in OUT_OF_SCOPE]}
