"""Per-case spread: known answers of the statistics, the worst items by the measure's direction (ties in item order),
which ids a measure's values belong to, the worst-case images kept for report.html (K items only), and a real gate run
whose report.json lists the worst items of DICE-WT by their real test ids and report.html shows them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import numpy as np
import pytest
import torch

from mriq_validate.figures import gallery_channel, gallery_figure, worst_case_images
from mriq_validate.integrity import report_schema
from mriq_validate.metrics import create_metric
from mriq_validate.spread import (DEFAULT_WORST_K, describe_items, item_spread, no_items, per_item_values, summary,
                                  worst)

SHIPPED_SUITE = Path(__file__).resolve().parents[1] / "mriq_validate" / "suites" / "brain_tumour.yaml"


def _valid_spread(record: dict) -> None:
    """``record`` validates against the report schema's ``spread``."""
    schema = report_schema()
    jsonschema.validate(record, {"$ref": "#/$defs/spread", "$defs": schema["$defs"]})


# ----------------------------------------------------------------------------------------------- known answers


def test_summary_known_answers() -> None:
    s = summary([4.0, 1.0, 3.0, 2.0])
    assert s == pytest.approx({"n": 4, "n_missing": 0, "mean": 2.5, "sd": np.std([1, 2, 3, 4], ddof=1), "min": 1.0,
                               "q1": 1.75, "median": 2.5, "q3": 3.25, "max": 4.0})
    odd = summary([5.0, 1.0, 3.0])
    assert (odd["median"], odd["q1"], odd["q3"]) == (3.0, 2.0, 4.0)


def test_summary_of_one_none_and_missing_values() -> None:
    one = summary([0.7])
    assert one["n"] == 1 and one["sd"] is None and one["median"] == one["min"] == one["max"] == 0.7
    empty = summary([])
    assert empty["n"] == 0 and all(empty[k] is None for k in ("mean", "sd", "min", "q1", "median", "q3", "max"))
    holes = summary([1.0, float("nan"), 3.0, float("inf")])
    assert holes["n"] == 2 and holes["n_missing"] == 2 and holes["mean"] == 2.0


def test_worst_follows_the_direction_and_breaks_ties_in_item_order() -> None:
    values = [0.9, 0.1, 0.5, 0.1, 0.95, 0.5]
    ids = [f"test-{i:04d}" for i in range(6)]
    low = worst(values, higher_is_better=True, k=4, ids=ids)
    assert [w["index"] for w in low] == [1, 3, 2, 5]  # the two 0.1 in item order, then the two 0.5 in item order
    assert [w["rank"] for w in low] == [1, 2, 3, 4] and low[0]["id"] == "test-0001" and low[0]["value"] == 0.1
    high = worst(values, higher_is_better=False, k=3)
    assert [w["index"] for w in high] == [4, 0, 2] and all(w["id"] is None for w in high)
    assert len(worst(values, True, k=100)) == 6 and worst(values, True, k=0) == []


def test_worst_leaves_out_non_finite_values_and_checks_its_arguments() -> None:
    assert [w["index"] for w in worst([np.nan, 0.2, 0.1], higher_is_better=True, k=3)] == [2, 1]
    with pytest.raises(ValueError, match="2 ids for 3 values"):
        worst([1.0, 2.0, 3.0], True, ids=["a", "b"])
    with pytest.raises(ValueError, match="k must be"):
        worst([1.0], True, k=-1)


def test_item_spread_per_contrast_and_without_a_reference() -> None:
    ids = [f"test-{i}" for i in range(5)]
    parts = {"t1": (np.array([0.5, 0.4, 0.3, 0.2, 0.1]), None), "flair": (np.array([1.0, 2.0, 3.0, 4.0, 5.0]), None)}
    s = item_spread(parts, higher_is_better=False, ids=ids, item="generated slice", shown="flair", k=2)
    _valid_spread(s)
    assert s["contrast"] == "flair" and s["evaluated"]["median"] == 3.0 and [w["id"] for w in s["evaluated"]["worst"]] == ["test-4", "test-3"]
    assert s["per_contrast"]["t1"]["evaluated"]["worst"][0]["id"] == "test-0"
    assert s["reference"] is None and "not measured" in s["reference_note"]
    capped = item_spread({"": (np.zeros(3), np.zeros(5))}, higher_is_better=True, ids=ids, item="x")  # a random subset of 3
    assert capped["evaluated"]["worst"][0]["id"] is None and capped["reference"]["worst"][0]["id"] == "test-0"
    assert capped["per_contrast"] is None and capped["k"] == DEFAULT_WORST_K


def test_a_set_level_measure_says_it_has_no_per_item_values() -> None:
    fid = create_metric("fid")
    assert per_item_values(fid, np.zeros((10, 4))) is None
    record = no_items("fid")
    _valid_spread(record)
    assert record["per_item"] is False and "set-level" in record["reason"] and record["evaluated"] is None
    broken = {**record, "reason": None}
    with pytest.raises(jsonschema.ValidationError):
        _valid_spread(broken)


def test_which_ids_the_values_belong_to() -> None:
    split, test = ("train-0", "train-1"), ("test-0", "test-1")
    dice, tstr, msssim = (create_metric(n) for n in ("dice", "dice_tstr", "ms_ssim_diversity"))
    assert describe_items(dice, "model", "test", True, "slice", test, test)[0] == test
    assert describe_items(dice, "model", "test", False, "slice", test, test)[0] is None  # the model's own sample
    ids, item = describe_items(tstr, "model", "train", True, "slice", split, test)
    assert ids == test and item.startswith("real test slice")  # protocol B scores the real test items
    assert describe_items(msssim, "model", "test", True, "slice", test, test)[0] is None  # pairs, not items
    assert describe_items(dice, "sensitivity", "test", True, "volume", test, test)[1].startswith("real test volume after")
    assert per_item_values(dice, np.ones(4)) is not None and per_item_values(tstr, np.ones(4)) is not None


# ------------------------------------------------------------------------------------------------- the gallery


@pytest.mark.parametrize("shape", [(20, 4, 16, 16), (6, 2, 8, 12, 12)], ids=["slices", "volumes"])
def test_worst_case_images_keep_only_the_k_items_in_one_contrast(shape: tuple[int, ...]) -> None:
    real, generated = torch.rand(shape), torch.rand(shape)
    masks = torch.zeros((shape[0], 1, *shape[2:]), dtype=torch.int64)
    masks[..., 2:6, 3:7] = 2
    if len(shape) == 5:
        masks[:, :, :2] = 0  # the lesion sits in slices 2.. of each volume: the centroid slice is not the middle one
    rows = [3, 1, 0]
    out = worst_case_images(rows, real, masks, generated, channel=1)
    assert out["real"].shape[:2] == (3, 1) and out["real"].shape[-2:] == shape[-2:] and out["real"].dtype == np.float32
    if len(shape) == 4:
        assert np.array_equal(out["generated"][0, 0], generated[3, 1].numpy()) and "slice_index" not in out
    else:
        assert out["real"].ndim == 4 and list(out["slice_index"]) == [int(np.floor(np.mean(range(2, shape[2])) + 0.5))] * 3
    fig = gallery_figure(out, {"generated": ["a", "b", "c"], "real": ["d", "e", "f"]}, ["rank 1 x", "rank 2 y", "rank 3 z"], {2: "oedema"})
    assert fig is not None and len(fig.axes) == 6


def test_the_gallery_shows_the_contrast_of_the_measure_else_flair() -> None:
    assert gallery_channel(("t1", "t1c", "t2", "flair")) == 3
    assert gallery_channel(("t1", "t1c", "t2", "flair"), "t1c") == 1
    assert gallery_channel(("pd",)) == 0


def test_a_gating_per_image_criterion_keeps_the_images_of_its_worst_items(cache_dir: Path) -> None:
    """brain_intensity (each contrast alone) on builtin:tumour-eraser: the spread per contrast, and K thumbnails of the
    contrast the verdict shows, nothing more."""
    from mriq_validate.criteria import evaluate
    from mriq_validate.session import RunContext, RunSettings
    from mriq_validate.suite import Criterion

    ctx = RunContext(RunSettings(model="builtin:tumour-eraser", data="builtin:mni-tumour", device="cpu", seed=0,
                                 cache_dir=str(cache_dir)), "builtin:mni-tumour")
    crit = Criterion.model_validate({"id": "INT", "requirement": "r", "rationale": "r", "metric": "brain_intensity",
                                     "threshold": {"min": 0.5, "max": 2.0, "relative": "ratio"}})
    out = evaluate(crit, ctx)
    s = out.as_dict()["spread"]
    _valid_spread(s)
    assert set(s["per_contrast"]) == set(ctx.data.contrasts) and s["contrast"] in ctx.data.contrasts
    low = s["evaluated"]["worst"]
    assert len(low) == DEFAULT_WORST_K and all(w["id"] == ctx.data.test.ids[w["index"]] for w in low)
    assert [w["value"] for w in low] == sorted(w["value"] for w in low) and low[0]["value"] == s["evaluated"]["min"]
    assert s["reference"]["n"] == len(ctx.data.test)
    g = out.gallery
    assert g is not None and g["meta"]["ids"] == [w["id"] for w in low] and g["meta"]["contrast"] == s["contrast"]
    assert g["arrays"]["generated"].shape == (DEFAULT_WORST_K, 1, *ctx.data.image_shape[1:])
    assert g["arrays"]["masks"].shape[0] == DEFAULT_WORST_K and "gallery" not in out.as_dict()
    ctx.close()


def test_volumes_keep_their_worst_items_as_the_lesion_centroid_slices(tmp_path: Path) -> None:
    """On volumes the worst items' images travel as their axial slice through the lesion centroid, and report.html draws
    them (the gallery of a report written from the outcome)."""
    from test_models_3d import SHAPE, volume_data

    from mriq_validate.criteria import evaluate
    from mriq_validate.report import build_report, write_report
    from mriq_validate.session import RunContext, RunSettings
    from mriq_validate.suite import Criterion

    data = volume_data()
    ctx = RunContext(RunSettings(model="builtin:real", data=None, device="cpu", cache_dir=str(tmp_path / "cache")), "test-volumes",
                     data=data)
    crit = Criterion.model_validate({"id": "INT3D", "requirement": "r", "rationale": "r", "metric": "brain_intensity",
                                     "threshold": {"min": 0.5, "max": 2.0, "relative": "ratio"}})
    out = evaluate(crit, ctx)
    s = out.spread
    assert s["item"].startswith("generated volume") and s["evaluated"]["n"] == len(data.test) == len(s["evaluated"]["worst"])
    assert {w["id"] for w in s["evaluated"]["worst"]} == set(data.test.ids)
    g = out.gallery
    assert g["arrays"]["real"].shape == (len(data.test), 1, *SHAPE[1:]) and len(g["arrays"]["slice_index"]) == len(data.test)
    record = {"item_id": "s.yaml::INT3D", "level": {}, "suite": "s.yaml", "kind": "model", "requirement": "r", "hazard": None,
              "rationale": "r", **out.as_dict()}
    report = build_report([json.loads(json.dumps(record, default=str))], {"settings": {"seed": 0}, "suites": []})
    write_report(report, tmp_path / "out", gallery_images={"s.yaml::INT3D": g})
    from mriq_validate.report import validate_report

    validate_report(json.loads((tmp_path / "out" / "report.json").read_text()))
    page = (tmp_path / "out" / "report.html").read_text()
    assert "INT3D: the 4 worst items by brain_intensity" in page and "axial slice through the lesion centroid" in page
    ctx.close()


# ---------------------------------------------------------------------------------------------- a real gate run


@pytest.mark.heavy
def test_a_gate_run_reports_the_worst_dice_items_by_their_test_ids(pytester: pytest.Pytester, cache_dir: Path,
                                                                   run_plugin: Callable[..., pytest.RunResult]) -> None:
    """DICE-WT on the shipped suite against builtin:tumour-eraser: the spread of report.json names real test ids whose
    values are the lowest per-slice Dice (recomputed here), and report.html draws them next to the real images."""
    result = run_plugin(str(SHIPPED_SUITE), "--mriq-model=builtin:tumour-eraser", "--mriq-report=out", "-k", "DICE-WT and not BY",
                        "-p", "no:xdist")
    assert (pytester.path / "out" / "report.json").exists(), result.stdout.str()
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    rec = next(r for r in report["results"] if r["criterion_id"] == "DICE-WT")
    s = rec["spread"]
    assert s["per_item"] and s["item"].startswith("generated slice") and s["higher_is_better"] is True

    from mriq_validate.metrics import create_metric
    from mriq_validate.session import RunContext, RunSettings

    ctx = RunContext(RunSettings(model="builtin:tumour-eraser", data="builtin:mni-tumour", device="cpu", seed=0,
                                 cache_dir=str(cache_dir)), "builtin:mni-tumour")
    metric = create_metric("dice", rec["params"])
    scores = ctx.prepare(metric, ctx.generated("test")[0])
    ids = ctx.data.test.ids
    expected = sorted(range(len(scores)), key=lambda i: (scores[i], i))[:DEFAULT_WORST_K]
    assert [w["id"] for w in s["evaluated"]["worst"]] == [ids[i] for i in expected]
    assert [w["value"] for w in s["evaluated"]["worst"]] == pytest.approx([float(scores[i]) for i in expected])
    assert s["evaluated"]["n"] == len(ids) and s["evaluated"]["mean"] == pytest.approx(rec["value"]["value"])
    assert s["reference"]["mean"] == pytest.approx(rec["baseline"]["value"])
    ctx.close()

    page = (pytester.path / "out" / "report.html").read_text()
    assert "Per-case spread and worst cases" in page and "DICE-WT: the 8 worst items by dice" in page
    assert "ScoreCard view (7 Cs)" in page and all(f"<b>{c}</b>" in page for c in (
        "Congruence", "Coverage", "Completeness", "Consistency", "Comprehension", "Constraint", "Compliance"))
