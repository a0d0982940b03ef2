"""The suite schema: valid suites load and round-trip; every invalid field is reported with file, key path and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mriq_validate.errors import SuiteError
from mriq_validate.suite import Suite, apply_overrides, is_suite_file, load_suite, parse_override, suite_to_yaml

VALID = textwrap.dedent(
    """\
    mriq_suite:
      name: t
      context_of_use: testing
      criteria:
        - id: DICE-WT
          requirement: Dice holds
          rationale: because
          metric: dice
          params: {region: whole_tumour}
          threshold: {min: -0.05, relative: difference}
        - id: PIQE
          requirement: quality
          rationale: noise floor
          gate: false
          metric: piqe
          perturbation: {name: rician, sigma: [0.01, 0.05]}
          threshold: {max: 3, relative: difference, unit: se}
    """
)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(text)
    return p


def test_valid_suite_loads(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, VALID))
    assert [c.id for c in suite.criteria] == ["DICE-WT", "PIQE"]
    assert suite.criteria[1].perturbation is not None
    assert suite.criteria[1].perturbation.levels() == [{"sigma": 0.01}, {"sigma": 0.05}]


@pytest.mark.parametrize(
    "old, new, expect",
    [
        ("metric: dice", "metric: dise", ["criteria[0].metric", "unknown metric 'dise'", ":8:"]),
        ("rationale: because", "rationale: because\n      colour: red", ["criteria[0].colour", "unknown key", ":8:"]),
        ("threshold: {min: -0.05, relative: difference}", "threshold: {min: low}", ["criteria[0].threshold.min", "low"]),
        ("{name: rician, sigma: [0.01, 0.05]}", "{name: ricean, sigma: 0.1}", ["criteria[1].perturbation", "unknown perturbation 'ricean'"]),
        ("{name: rician, sigma: [0.01, 0.05]}", "{name: rician, sigma: 7}", ["criteria[1].perturbation", "sigma=7", "out of range"]),
        ("- id: PIQE", "- id: DICE-WT", ["appears twice"]),
        ("  name: t\n", "", ["mriq_suite.name", "required key is missing"]),
        ("gate: false", "gate: maybe", ["criteria[1].gate", "maybe"]),
        ("threshold: {min: -0.05, relative: difference}", "threshold: {relative: difference}", ["needs `min`, `max`"]),
        ("params: {region: whole_tumour}", "params: {regio: whole_tumour}", ["criteria[0]", "regio"]),
    ],
)
def test_invalid_field_reported_with_path_and_line(tmp_path: Path, old: str, new: str, expect: list[str]) -> None:
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    text = str(err.value)
    assert str(path) in text
    for piece in expect:
        assert piece in text, text


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("context_of_use: testing", "context_of_use: [unclosed"))
    with pytest.raises(SuiteError, match=r"suite.yaml:\d+:\d+: malformed YAML"):
        load_suite(path)


def test_suite_detection_parses_the_file(tmp_path: Path) -> None:
    assert is_suite_file(write(tmp_path, VALID))
    assert not is_suite_file(write(tmp_path, "name: ci\njobs: {}\n"))
    assert not is_suite_file(write(tmp_path, "# mriq_suite: mentioned in a comment only\nname: ci\n"))


def test_overrides_apply_and_are_recorded(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    suite = load_suite(path)
    cid, field, value = parse_override("DICE-WT.min=-0.2")
    new, dev = apply_overrides(suite, [(cid, field, value, "--mriq-threshold")], path)
    assert new.criteria[0].threshold.min == -0.2
    assert dev == [{"criterion": "DICE-WT", "field": "threshold.min", "suite_value": -0.05, "value": -0.2, "source": "--mriq-threshold"}]
    with pytest.raises(ValueError, match="CRITERION_ID.FIELD=VALUE"):
        parse_override("DICE-WT=3")


ident = st.from_regex(r"[A-Z][A-Z0-9_-]{0,8}", fullmatch=True)
words = st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters=" .,-"), min_size=1, max_size=30).filter(lambda s: s.strip())
finite = st.floats(-10, 10, allow_nan=False).map(lambda x: round(x, 3))


@st.composite
def criteria(draw: st.DrawFn) -> dict:
    lo = draw(st.one_of(st.none(), finite))
    hi = draw(st.one_of(st.none(), finite)) if lo is not None else draw(finite)
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    th = {k: v for k, v in {"min": lo, "max": hi}.items() if v is not None}
    th["relative"] = draw(st.sampled_from(["none", "difference", "ratio"]))
    th["on"] = draw(st.sampled_from(["value", "lower_ci", "upper_ci"]))
    crit = {"id": draw(ident), "requirement": draw(words), "rationale": draw(words), "gate": draw(st.booleans()),
            "metric": draw(st.sampled_from(["dice", "piqe"])), "threshold": th}
    if draw(st.booleans()):
        crit["hazard"] = draw(words)
    if draw(st.booleans()):
        crit["perturbation"] = {"name": "rician", "sigma": draw(st.floats(0, 0.5).map(lambda x: round(x, 4)))}
    return crit


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(criteria(), min_size=1, max_size=4, unique_by=lambda c: c["id"]), words)
def test_any_valid_suite_round_trips(tmp_path: Path, crits: list[dict], name: str) -> None:
    raw = {"mriq_suite": {"name": name, "context_of_use": "c", "criteria": crits}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    suite = load_suite(path)
    path.write_text(suite_to_yaml(suite))
    assert load_suite(path) == suite


FIELDS = ["id", "requirement", "rationale", "gate", "metric", "threshold"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(criteria(), st.sampled_from(FIELDS + ["unknown_key"]), st.sampled_from([[], {"x": 1}, 3.5j.real, None]))
def test_any_invalid_field_is_reported_by_path(tmp_path: Path, crit: dict, field: str, bad: object) -> None:
    crit = dict(crit)
    if field in ("gate",) and bad is None:
        bad = "neither"
    if field in ("requirement", "rationale", "id", "metric") and isinstance(bad, float):
        bad = {"x": 1}
    if field == "threshold":
        bad = {"on": "median"}
    crit[field] = bad
    raw = {"mriq_suite": {"name": "n", "context_of_use": "c", "criteria": [crit]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    assert f"mriq_suite.criteria[0].{field}" in str(err.value)


def test_shipped_suites_are_valid() -> None:
    root = Path(__file__).resolve().parents[1] / "suites"
    suites = sorted(root.glob("*.yaml"))
    assert suites
    for p in suites:
        s = load_suite(p)
        assert isinstance(s, Suite)
        for c in s.criteria:
            assert c.rationale.strip() and c.requirement.strip()
