"""Consistency across subgroups (``by:``): the heterogeneity statistics, the assignment of items to subgroups (covariate,
lesion-size quartiles, a CSV of case attributes and its errors), the schema, the per-subgroup decision and its
re-derivation, and the shipped suite's subgroup criteria on generators that fail one subgroup only."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mriq_validate.criteria import evaluate
from mriq_validate.data.attributes import attach_case_attributes, case_of
from mriq_validate.errors import DataError, MetricError, SuiteError
from mriq_validate.integrity import result_problems, validate_report
from mriq_validate.session import RunContext, RunSettings
from mriq_validate.stats import resample_metric
from mriq_validate.subgroups import assign, heterogeneity, quantile_groups
from mriq_validate.suite import Criterion, load_suite

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "mriq_validate" / "suites" / "brain_tumour.yaml"
DEFECTS = ROOT / "tests" / "models" / "subgroup_defects.py"
SITE_NAMES = {0: "alpha", 1: "beta", 2: "gamma"}


def criterion(**kw) -> Criterion:
    base = {"id": "DICE-WT-BY", "requirement": "r", "rationale": "r", "metric": "dice", "params": {"region": "whole_tumour"},
            "threshold": {"min": -0.05, "relative": "difference"}}
    return Criterion.model_validate({**base, **kw})


@pytest.fixture(scope="module")
def real_ctx(cache_dir: Path) -> RunContext:
    ctx = RunContext(RunSettings(model="builtin:real", data="builtin:mni-tumour", device="cpu", seed=0, cache_dir=str(cache_dir)),
                     "builtin:mni-tumour")
    yield ctx
    ctx.close()


# ----------------------------------------------------------------------------------------- heterogeneity: known answers


def test_equal_subgroups_have_no_heterogeneity() -> None:
    h = heterogeneity([0.02, 0.02, 0.02], [0.01, 0.02, 0.005])
    assert h["q"] == 0 and h["p_value"] == 1 and h["i_squared"] == 0 and h["max_minus_min"] == 0 and h["df"] == 2


def test_subgroups_within_their_noise_are_homogeneous() -> None:
    h = heterogeneity([0.0, 0.01, -0.01], [0.01, 0.01, 0.01])  # Q = 1 + 1 = 2 on 2 df
    assert h["q"] == pytest.approx(2.0) and h["p_value"] == pytest.approx(np.exp(-1.0)) and h["i_squared"] == 0


def test_one_outlying_subgroup_has_a_small_p_and_large_i_squared() -> None:
    theta, se = np.array([0.0, 0.005, -0.12]), np.array([0.01, 0.01, 0.02])
    w = 1 / se ** 2
    mean = (w * theta).sum() / w.sum()
    q = (w * (theta - mean) ** 2).sum()  # Cochran 1954
    h = heterogeneity(theta, se)
    assert h["q"] == pytest.approx(q) and h["weighted_mean"] == pytest.approx(mean)
    assert h["p_value"] == pytest.approx(stats.chi2.sf(q, 2)) and h["p_value"] < 1e-4
    assert h["i_squared"] == pytest.approx((q - 2) / q) and h["i_squared"] > 0.9  # Higgins & Thompson 2002
    assert h["max_minus_min"] == pytest.approx(0.125)


def test_subgroups_without_sampling_noise_fix_the_weighted_mean() -> None:
    """A generator identical to the real images in two subgroups (difference 0, SE 0 in every resample): the limit of
    infinite weights, Q = ((θ - 0) / SE)² over the other subgroup; two exact subgroups that differ: Q infinite."""
    h = heterogeneity([0.0, 0.0, -0.12], [0.0, 0.0, 0.024])
    assert h["weighted_mean"] == 0 and h["q"] == pytest.approx(25.0) and h["p_value"] == pytest.approx(stats.chi2.sf(25.0, 2))
    assert "standard error 0" in h["note"]
    h = heterogeneity([0.0, -0.1], [0.0, 0.0])
    assert h["q"] is None and h["p_value"] == 0 and h["i_squared"] == 1 and "infinite" in h["note"]
    assert heterogeneity([0.1], [0.01])["q"] is None  # one subgroup: nothing to test
    json.dumps(heterogeneity([np.nan, 0.1], [0.01, 0.01]), allow_nan=False)  # never a NaN in the report


# ----------------------------------------------------------------------------------------------- assignment


def test_quantile_groups_cut_by_rank_into_equal_groups() -> None:
    codes = quantile_groups(np.array([5, 1, 9, 3, 7, 2, 8, 4, 6]), 4)
    assert np.bincount(codes).tolist() == [3, 2, 2, 2] and codes[1] == 0 and codes[2] == 3


def test_site_covariate_assigns_the_test_items(mni) -> None:  # type: ignore[no-untyped-def]
    g = assign(mni, "test", "site")
    assert g.labels == ("site=0", "site=1", "site=2") and list(g.sizes().values()) == np.bincount(mni.test.covariates["site"]).tolist()
    assert g.sizes() == {"site=0": 58, "site=1": 41, "site=2": 29}
    assert np.array_equal(g.codes, mni.test.covariates["site"])


def test_lesion_size_quartiles_order_the_lesions(mni) -> None:  # type: ignore[no-untyped-def]
    g = assign(mni, "test", "lesion_size", "whole_tumour")
    assert g.labels == ("Q1", "Q2", "Q3", "Q4") and set(g.sizes().values()) == {32}
    area = (mni.test.masks > 0).flatten(1).sum(1).numpy()
    ranges = [(area[idx].min(), area[idx].max()) for idx in g.members().values()]
    assert all(ranges[k][1] <= ranges[k + 1][0] for k in range(3)), ranges  # Q1 the smallest lesions
    assert [(d["min"], d["max"]) for d in g.details.values()] == ranges and g.details["Q1"]["unit"] == "px"
    et = assign(mni, "test", "lesion_size", "enhancing_tumour")  # the criterion's own region
    assert "enhancing_tumour" in et.source and not np.array_equal(et.codes, g.codes)


def test_an_unknown_subgroup_names_the_available_ones(mni) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MetricError, match=r"by: 'scanner'.*no covariate 'scanner'.*\['axial_index', 'has_enhancing', 'has_necrosis', "
                                          r"'lesion_size', 'site', 'tumour_px'\].*case_attributes"):
        assign(mni, "test", "scanner")


# --------------------------------------------------------------------------------------------- case attributes (CSV)


def _write_csv(path: Path, rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def _site_table(mni, path: Path, drop: str | None = None, extra: list[object] | None = None) -> Path:  # type: ignore[no-untyped-def]
    rows: list[list[object]] = [["id", "scanner", "grade"]]
    for split in (mni.train, mni.test):
        rows += [[i, SITE_NAMES[int(s)], 2 + int(s) % 2] for i, s in zip(split.ids, split.covariates["site"]) if i != drop]
    return _write_csv(path, rows + ([extra] if extra else []))


def test_a_csv_column_becomes_a_subgroup(mni, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = attach_case_attributes(mni, _site_table(mni, tmp_path / "attributes.csv"))
    assert data.test.covariates["grade"].dtype == np.int64 and data.test.covariates["scanner"].dtype.kind == "U"
    g = assign(data, "test", "scanner")
    assert g.labels == ("scanner=alpha", "scanner=beta", "scanner=gamma")
    assert np.array_equal(g.codes, assign(mni, "test", "site").codes) and "scanner" in data.provenance["case_attributes"]["columns"]
    assert len(data.provenance["case_attributes"]["sha256"]) == 64


def test_a_slice_takes_its_cases_row() -> None:
    assert case_of("BraTS-GLI-00001-000:z042") == "BraTS-GLI-00001-000" and case_of("test-0001") == "test-0001"


@pytest.mark.parametrize("problem, expected", [
    ("missing row", r"attributes.csv: no row for 1 item\(s\) of the test split.*'test-0005'.*column 'id'"),
    ("unknown id", r"attributes.csv:\d+: id\(s\) 'case-9999' match no case of data 'builtin:mni-tumour'"),
    ("no id column", r"attributes.csv: no id column 'id' in the header \['case', 'scanner'\]"),
    ("twice", r"attributes.csv:\d+: id 'test-0003' appears twice \(first on line \d+\)"),
    ("empty", r"attributes.csv:\d+: column 'scanner' is empty for id 'test-0007'"),
    ("taken", r"attributes.csv: column 'site' is already a covariate of data 'builtin:mni-tumour'"),
    ("unreadable", r"attributes.csv: cannot be read"),
])
def test_a_bad_csv_is_an_error_naming_file_column_and_id(mni, tmp_path: Path, problem: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "attributes.csv"
    if problem == "missing row":
        _site_table(mni, path, drop="test-0005")
    elif problem == "unknown id":
        _site_table(mni, path, extra=["case-9999", "alpha", 2])
    elif problem == "no id column":
        _write_csv(path, [["case", "scanner"], ["test-0000", "alpha"]])
    elif problem == "twice":
        _site_table(mni, path, extra=["test-0003", "alpha", 2])
    elif problem == "empty":
        rows = [["id", "scanner"]] + [[i, "" if i == "test-0007" else "a"] for i in (*mni.train.ids, *mni.test.ids)]
        _write_csv(path, rows)
    elif problem == "taken":
        _write_csv(path, [["id", "site"]] + [[i, 1] for i in (*mni.train.ids, *mni.test.ids)])
    with pytest.raises(DataError, match=expected):
        attach_case_attributes(mni, path)


def test_the_suite_data_block_names_the_table_relative_to_the_suite(mni, tmp_path: Path, cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    _site_table(mni, tmp_path / "attributes.csv")
    (tmp_path / "suite.yaml").write_text(
        "mriq_suite:\n  name: s\n  context_of_use: c\n  data: {default: builtin:mni-tumour, case_attributes: attributes.csv}\n"
        "  criteria:\n    - {id: DICE-BY-SCANNER, requirement: r, rationale: r, metric: dice, params: {region: whole_tumour},\n"
        "       by: scanner, threshold: {min: -0.05, relative: difference}}\n")
    suite = load_suite(tmp_path / "suite.yaml")
    assert suite.data.case_attributes.file == str(tmp_path / "attributes.csv")
    options = suite.data.options_for("builtin:mni-tumour")
    ctx = RunContext(RunSettings(model="builtin:real", data="builtin:mni-tumour", device="cpu", seed=0, cache_dir=str(cache_dir),
                                 data_options=options), "builtin:mni-tumour")
    try:
        out = evaluate(suite.criteria[0], ctx)
    finally:
        ctx.close()
    assert out.verdict == "PASS" and [r["subgroup"] for r in out.per_subgroup["subgroups"]] == ["scanner=alpha", "scanner=beta", "scanner=gamma"]


# ----------------------------------------------------------------------------------------------------- schema


@pytest.mark.parametrize("by, threshold, metric, expected", [
    ("site", {"max": 3, "relative": "difference", "unit": "se"}, "fid", "metric 'fid' is a distance between whole sets"),
    ("site", {"max": 3, "relative": "difference", "unit": "se"}, "ms_ssim_diversity", "resamples random pairs of images"),
    ("site", {"min": -3, "relative": "difference", "unit": "seed_sd"}, "dice_tstr", "`by:` with `unit: seed_sd`"),
    ({"name": "site", "min_items": 1}, {"min": 0}, "dice", "greater than or equal to 2"),
    ({"name": "site", "minimum": 5}, {"min": 0}, "dice", "unknown key"),
])
def test_by_that_cannot_mean_anything_is_refused_at_load(tmp_path: Path, by: object, threshold: dict, metric: str, expected: str) -> None:
    crit = {"id": "X", "requirement": "r", "rationale": "r", "metric": metric, "by": by, "threshold": threshold}
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps({"mriq_suite": {"name": "s", "context_of_use": "c", "criteria": [crit]}}))
    with pytest.raises(SuiteError, match=r"s.yaml:\d+: mriq_suite.criteria\[0\].by") as exc:
        load_suite(path)
    assert expected in str(exc.value)


def test_the_default_minimum_subgroup_size_is_the_documented_one() -> None:
    from mriq_validate.subgroups import DEFAULT_MIN_ITEMS
    from mriq_validate.suite import SubgroupSpec

    assert SubgroupSpec.model_validate("site").min_items == DEFAULT_MIN_ITEMS == 20


def test_the_shipped_suite_decides_dice_wt_by_site_and_by_lesion_size() -> None:
    by = {c.id: c.by for c in load_suite(SUITE).criteria if c.by is not None}
    assert {k: (v.name, v.min_items, v.if_absent) for k, v in by.items()} == {
        "DICE-WT-BY-SITE": ("site", 20, "one_group"), "DICE-WT-BY-LESION-SIZE": ("lesion_size", 20, "error")}


# -------------------------------------------------------------------------------- decision per subgroup (builtin:real)


def test_resampling_a_subgroup_draws_only_its_rows() -> None:
    class Mean:
        resample = "bootstrap"

        def config(self) -> dict:
            return {"name": "mean"}

        def size(self, prepared: np.ndarray) -> int:
            return len(prepared)

        def value(self, prepared: np.ndarray, index: np.ndarray) -> float:
            return float(prepared[index].mean())

    x = np.arange(10.0)
    items = np.array([1, 3, 5])
    v, b = resample_metric(Mean(), x, x * 0, 200, np.random.default_rng(0), True, items=items)
    assert v.point == 3.0 and v.n == 3 and b.point == 0.0 and v.reps.min() >= 1 and v.reps.max() <= 5  # rows of items only
    assert np.allclose((v.reps * 3) % 2, 1)  # a sum of three odd numbers: every row drawn from items 1, 3, 5
    with pytest.raises(ValueError, match="paired"):
        resample_metric(Mean(), x, x, 10, np.random.default_rng(0), False, items=items)


def test_a_faithful_generator_passes_in_every_subgroup_and_the_record_rederives(real_ctx: RunContext) -> None:
    for by in ("site", "lesion_size"):
        out = evaluate(criterion(by=by), real_ctx)
        sub = out.per_subgroup
        assert out.verdict == "PASS" and out.by == by and sub["by"] == by and sub["min_items"] == 20
        assert all(r["verdict"] == "PASS" and r["compared"]["value"] == 0 for r in sub["subgroups"])
        assert sub["heterogeneity"][0]["q"] == 0 and sub["heterogeneity"][0]["p_value"] == 1
        assert sum(r["n"] for r in sub["subgroups"]) == 128 and "per subgroup of " + by in out.message
        record = {"item_id": "s.yaml::DICE-WT-BY", **out.as_dict()}
        json.dumps(record, allow_nan=False)
        assert result_problems(record) == []
        record["per_subgroup"]["subgroups"][1]["verdict"] = "FAIL"
        record["per_subgroup"]["heterogeneity"][0]["max_minus_min"] = 0.5
        problems = result_problems(record)
        assert any("per_subgroup.subgroups[1]" in p and "verdict is FAIL" in p for p in problems), problems
        assert any("per_subgroup.heterogeneity[0].max_minus_min is 0.5" in p for p in problems), problems


def test_each_subgroup_has_its_own_seeded_resampling(real_ctx: RunContext) -> None:
    crit = criterion(by="site", threshold={"min": -3, "relative": "difference", "unit": "se"}, kind="model")
    a, b = evaluate(crit, real_ctx), evaluate(crit, real_ctx)
    assert a.as_dict() == b.as_dict()  # deterministic
    values = {r["subgroup"]: r["value"] for r in a.per_subgroup["subgroups"]}
    assert values["site=0"]["n"] == 58 and values["site=0"]["se"] != values["site=1"]["se"]
    # unit se: each subgroup's bounds are in its own baseline's SE
    assert all(r["bounds"]["min"] == pytest.approx(-3 * r["baseline"]["se"]) for r in a.per_subgroup["subgroups"])


def test_an_unknown_or_too_small_subgroup_is_an_error_not_a_pass(real_ctx: RunContext) -> None:
    with pytest.raises(MetricError, match=r"by: 'scanner'.*expected one of \[.*'lesion_size', 'site'"):
        evaluate(criterion(by="scanner"), real_ctx)
    with pytest.raises(MetricError, match=r"subgroup\(s\) site=1 \(41 items\), site=2 \(29 items\) have fewer than min_items 45"):
        evaluate(criterion(by={"name": "site", "min_items": 45}), real_ctx)


def test_data_without_the_column_are_one_group_only_where_the_suite_says_so(real_ctx: RunContext) -> None:
    # BraTS and MSD folders name no site: `if_absent: one_group` decides them as the pooled criterion and says so
    with pytest.raises(MetricError, match=r"by: 'scanner'"):
        evaluate(criterion(by={"name": "scanner"}), real_ctx)
    out = evaluate(criterion(by={"name": "scanner", "if_absent": "one_group"}), real_ctx)
    pooled = evaluate(criterion(), real_ctx)
    rows = out.per_subgroup["subgroups"]
    assert [r["subgroup"] for r in rows] == ["all items"] and rows[0]["n"] == 128 and out.per_subgroup["if_absent"] == "one_group"
    assert rows[0]["compared"]["value"] == pooled.compared.value and out.verdict == pooled.verdict
    assert "give no 'scanner'" in out.per_subgroup["source"] and "subgroups not given" in out.message
    assert result_problems({"item_id": "s.yaml::DICE-WT-BY", **out.as_dict()}) == []


# ------------------------------------------------------------- the shipped suite on generators that fail one subgroup


@pytest.mark.heavy
@pytest.mark.parametrize("factory, by_criterion, failed", [
    ("site_defect", "DICE-WT-BY-SITE", "site=2"),
    ("small_lesion_defect", "DICE-WT-BY-LESION-SIZE", "Q1"),
])
def test_a_defect_in_one_subgroup_passes_the_pooled_gate_and_fails_the_subgroup_gate(
        pytester: pytest.Pytester, run_plugin, factory: str, by_criterion: str, failed: str) -> None:  # type: ignore[no-untyped-def]
    """Faithful except that one subgroup's lesions are faded (tests/models/subgroup_defects.py): DICE-WT passes on the
    pooled mean, the subgroup criterion fails and names the subgroup; the report validates and re-derives."""
    result = run_plugin(f"{SUITE}::DICE-WT", f"{SUITE}::{by_criterion}", "--rootdir", str(pytester.path),
                        f"--mriq-model={DEFECTS}:{factory}", "--mriq-report=out")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*{by_criterion} FAILED: dice (whole_tumour)*in subgroup {failed} *below the minimum -0.05*",
                                 f"*failed in subgroup(s): {failed}", "PASS*DICE-WT *difference -0.02*"])
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    validate_report(report)
    rec = {r["criterion_id"]: r for r in report["results"]}
    pooled, by = rec["DICE-WT"], rec[by_criterion]
    assert pooled["verdict"] == "PASS" and -0.05 < pooled["compared"]["value"] < -0.02
    rows = {r["subgroup"]: r for r in by["per_subgroup"]["subgroups"]}
    assert rows[failed]["verdict"] == "FAIL" and rows[failed]["compared"]["value"] < -0.09
    assert [k for k, r in rows.items() if r["verdict"] == "FAIL"] == [failed]
    assert by["per_subgroup"]["heterogeneity"][0]["p_value"] < 0.01
    assert report["decision"]["status"] != "CLEARED" and all(p == [] for p in map(result_problems, report["results"]))
    assert "Consistency across subgroups" in (pytester.path / "out" / "report.html").read_text()


def test_builtin_real_passes_the_shipped_subgroup_criteria(pytester: pytest.Pytester, run_plugin) -> None:  # type: ignore[no-untyped-def]
    result = run_plugin(str(SUITE), "-k", "BY-SITE or BY-LESION-SIZE", "--rootdir", str(pytester.path), "--mriq-model=builtin:real")
    result.assert_outcomes(passed=2, deselected=result.parseoutcomes()["deselected"])
