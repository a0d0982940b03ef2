"""The suite schema: valid suites load and round-trip; every invalid field is reported with file, key path and line."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mriq_validate.errors import SuiteError
from mriq_validate.overrides import apply_overrides, parse_override
from mriq_validate.suite import Suite, is_suite_file, load_suite, suite_to_yaml

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


SEGMENTER = "params:\n        region: whole_tumour\n        segmenter:\n          lr: 0.01\n          {}\n"


@pytest.mark.parametrize(
    "old, new, line, key, expect",
    [
        ("metric: dice", "metric: dise", 8, "criteria[0].metric", ["unknown metric 'dise'"]),
        ("rationale: because", "rationale: because\n      colour: red", 8, "criteria[0].colour", ["unknown key"]),
        ("threshold: {min: -0.05, relative: difference}", "threshold: {min: low}", 10, "criteria[0].threshold.min", ["low"]),
        ("threshold: {min: -0.05, relative: difference}", "threshold:\n        min: -0.05\n        on: median", 12,
         "criteria[0].threshold.on", ["median"]),  # a block mapping: the line of the key itself
        ("{name: rician, sigma: [0.01, 0.05]}", "{name: ricean, sigma: 0.1}", 16, "criteria[1].perturbation.name",
         ["unknown perturbation 'ricean'"]),
        ("{name: rician, sigma: [0.01, 0.05]}", "{name: rician, sigma: 7}", 16, "criteria[1].perturbation.sigma", ["sigma=7", "out of range"]),
        ("{name: rician, sigma: [0.01, 0.05]}", "\n        name: rician\n        sigma:\n          - 0.01\n          - 7", 20,
         "criteria[1].perturbation.sigma[1]", ["sigma=7", "out of range"]),  # the bad level of a sweep
        ("{name: rician, sigma: [0.01, 0.05]}", "{name: rician, sigma: 0.1, std: 2}", 16, "criteria[1].perturbation.std",
         ["unknown parameter(s) ['std']"]),
        ("- id: PIQE", "- id: DICE-WT", 11, "criteria[1].id", ["'DICE-WT' appears twice"]),
        ("  name: t\n", "", 1, "mriq_suite.name", ["required key is missing"]),
        ("gate: false", "gate: maybe", 14, "criteria[1].gate", ["maybe"]),
        ("threshold: {min: -0.05, relative: difference}", "threshold: {relative: difference}", 10, "criteria[0].threshold",
         ["needs `min`, `max`"]),
        ("params: {region: whole_tumour}", "params: {regio: whole_tumour}", 9, "criteria[0].params.regio", ["regio"]),
        # segmenter settings and features blocks are checked at load by the metric's constructor, at the offending key
        ("params: {region: whole_tumour}", SEGMENTER.format("epochs: 0"), 13, "criteria[0].params.segmenter.epochs",
         ["segmenter.epochs", "got 0"]),
        ("params: {region: whole_tumour}", SEGMENTER.format("epoch: 5"), 13, "criteria[0].params.segmenter.epoch",
         ["unknown field(s) ['epoch']"]),
        ("params: {region: whole_tumour}", SEGMENTER.format("network: resnet"), 13, "criteria[0].params.segmenter.network",
         ["'resnet' unknown"]),
        ("metric: piqe", "metric: fid\n      params:\n        features:\n          extractor: inceptoin", 18,
         "criteria[1].params.features.extractor", ["unknown extractor 'inceptoin'"]),
        ("metric: piqe", "metric: fid\n      params:\n        reference: train\n        features: {extractor: radiomic, layer: 2}", 18,
         "criteria[1].params.features.layer", ["layer"]),
    ],
)
def test_invalid_field_reported_with_path_and_line(tmp_path: Path, old: str, new: str, line: int, key: str, expect: list[str]) -> None:
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    text = str(err.value)
    key_path = key if key.startswith("mriq_suite") else f"mriq_suite.{key}"
    assert f"{path}:{line}: {key_path}: " in text, text
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
    # the reported line is the line of the offending key in the dumped text (the `on:` key inside `threshold`)
    marker = re.compile(r"^\s*'on':" if field == "threshold" else rf"^\s*(- )?{field}:")
    line = 1 + next(i for i, text in enumerate(path.read_text().splitlines()) if marker.match(text))
    assert f"{path}:{line}: mriq_suite.criteria[0].{field}" in str(err.value), (path.read_text(), str(err.value))


def test_shipped_suites_are_valid() -> None:
    root = Path(__file__).resolve().parents[1] / "suites"
    suites = sorted(root.glob("*.yaml"))
    assert suites
    for p in suites:
        s = load_suite(p)
        assert isinstance(s, Suite)
        for c in s.criteria:
            assert c.rationale.strip() and c.requirement.strip()
