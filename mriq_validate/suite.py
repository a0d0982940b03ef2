"""Suite files: the typed YAML schema of fitness-for-purpose criteria, loading and validation errors.

A suite is a YAML file with a top-level ``mriq_suite:`` key. Every error names the file, the key path
(``criteria[2].threshold.min``), its line where known, and what was expected. The whole suite is checked at load:
a metric's ``params`` (``segmenter:`` settings, ``features:`` blocks, ...) by its constructor and a perturbation's
parameters by its ``resolve``, each error pinned to the offending key (``criteria[3].params.segmenter.epochs``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from .errors import MriqError, SuiteError
from .scorecard import ScorecardC
from .suite_yaml import (MAX_YAML_NODES, SuiteLoader, bomb_site, decode_suite_bytes, expanded_nodes, line_of, loc_text, non_finite,
                         short)

SUITE_KEY = "mriq_suite"
SHIPPED = ("brain_tumour.yaml", "brain_tumour_3d.yaml", "vessels.yaml")  # the suites this package ships (package data)
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_SUITE_BYTES = 2_000_000  # a suite is a reviewed document of criteria, not a data file
_SCALARS = {str: "string", int: "number", float: "number", bool: "boolean"}  # a top level that is none of a suite's


class _AtKey(ValueError):
    """A validation error about the key at ``loc`` below the model being validated; the loader reports that key's path
    and line (pydantic alone would report the model's)."""

    def __init__(self, message: str, loc: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.loc = loc


def _error_of(check: Callable[[dict[str, Any]], Any], params: dict[str, Any]) -> str | None:
    """The message of the MriqError that ``check(params)`` raises, or None when it passes."""
    try:
        check(params)
    except MriqError as exc:
        return str(exc)
    return None


def _blame(check: Callable[[dict[str, Any]], Any], params: dict[str, Any], error: str) -> tuple[str, ...]:
    """The key path in ``params`` that ``error`` (raised by ``check(params)``) is about: a key whose removal (its default
    then applies) lets the check pass, else the first whose removal makes that error change; descending into nested
    mappings. Empty when no one key is to blame.

    One scheme for every parameter: the code that uses the parameters (a metric's constructor, a perturbation's
    ``resolve``) checks them, and this pins its error to the offending key, so nothing is validated twice.
    """
    without = {key: _error_of(check, {k: v for k, v in params.items() if k != key}) for key in params}
    candidates = [k for k, e in without.items() if e is None] or [k for k, e in without.items() if e != error]
    if not candidates:
        return ()
    key = candidates[0]
    if not isinstance(params[key], dict):
        return (key,)
    rest = {k: v for k, v in params.items() if k != key}
    return (key, *_blame(lambda sub: check({**rest, key: sub}), params[key], error))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Tolerance(_Strict):
    """A clinical tolerance: absolute bounds on the compared quantity, stated with their source in the rationale."""

    min: float | None = None
    max: float | None = None


class Threshold(_Strict):
    """What must hold. ``min``/``max`` bound the compared quantity, which is the value itself (``relative: none``),
    ``value - baseline`` (``difference``) or ``value / baseline`` (``ratio``), where the baseline is the same measure
    on real data. ``on`` picks the point value or a CI bound; ``unit: se`` expresses the bounds in bootstrap
    standard errors of the baseline (its own sampling noise), ``unit: seed_sd`` in seed-to-seed SDs of training.
    ``tolerance`` (with ``se`` or ``seed_sd``) is a clinical tolerance in the compared quantity's own units: each
    bound is then the looser of the noise bound and the tolerance, so that a gate never demands more than the run
    can detect, nor less than what is clinically negligible allows (a non-inferiority margin)."""

    min: float | None = None
    max: float | None = None
    relative: Literal["none", "difference", "ratio"] = "none"
    on: Literal["value", "lower_ci", "upper_ci"] = "value"
    unit: Literal["absolute", "se", "seed_sd"] = "absolute"
    tolerance: Tolerance | None = None

    @model_validator(mode="after")
    def _bounds(self) -> "Threshold":
        if self.min is None and self.max is None:
            raise ValueError("a threshold needs `min`, `max` or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.tolerance is not None:
            if self.unit == "absolute":
                raise ValueError("`tolerance` goes with `unit: se` or `unit: seed_sd` (the bound is the looser of the noise "
                                 "bound and the tolerance); with absolute bounds, write the tolerance as `min`/`max`")
            for side in ("min", "max"):
                if getattr(self.tolerance, side) is not None and getattr(self, side) is None:
                    raise ValueError(f"`tolerance: {{{side}: ...}}` needs the threshold's own `{side}` (the noise bound it loosens)")
            if self.tolerance.min is None and self.tolerance.max is None:
                raise ValueError("`tolerance` needs `min`, `max` or both")
        return self


class PerturbationSpec(_Strict):
    """``{name: rician, sigma: 0.05}``; a parameter given as a list is a sweep (one test per level)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def params(self) -> dict[str, Any]:
        """The parameters (everything but ``name``)."""
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known(self) -> "PerturbationSpec":
        from .perturb import get

        sweeps = [k for k, v in self.params.items() if isinstance(v, list)]
        empty = [k for k in sweeps if not self.params[k]]
        if empty:
            raise _AtKey(f"sweep over {empty[0]!r} has no levels; give at least one value (a criterion without levels would "
                         f"never be evaluated)", (empty[0],))
        if len(sweeps) > 1:
            raise _AtKey(f"sweep over one parameter at a time; got lists for {sweeps}", (sweeps[1],))
        try:
            pert = get(self.name)
        except MriqError as exc:
            raise _AtKey(str(exc), ("name",)) from None
        sweep = sweeps[0] if sweeps else None
        for i, level in enumerate(self.levels()):
            error = _error_of(pert.resolve, level)
            if error is not None:
                loc = _blame(pert.resolve, level, error)
                raise _AtKey(error, (sweep, i) if sweep is not None and loc == (sweep,) else loc)
        return self

    def levels(self) -> list[dict[str, Any]]:
        """One parameter dict per sweep level (one element without a sweep)."""
        params = self.params
        sweep = next((k for k, v in params.items() if isinstance(v, list)), None)
        if sweep is None:
            return [params]
        return [{**params, sweep: v} for v in params[sweep]]


class SubgroupSpec(_Strict):
    """``by: site`` or ``by: {name: site, min_items: 20}``: the criterion is decided in every subgroup of the items and
    passes only when all pass. ``name`` is a covariate of the data (``site``), a column of the data block's
    ``case_attributes`` table, or a derived grouping (``lesion_size``: quartiles of the lesion size in the real masks);
    a subgroup with fewer than ``min_items`` items is an ERROR (too small to decide), never a pass. ``if_absent`` says
    what data without that column get: ``error`` (the default: the criterion cannot be evaluated), or ``one_group``
    (every item in one group, decided like the pooled criterion, and the record says the subgroups were not given)."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    min_items: int = Field(default=20, ge=2)  # mriq_validate.subgroups.DEFAULT_MIN_ITEMS (not imported: it loads numpy)
    if_absent: Literal["error", "one_group"] = "error"

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class Criterion(_Strict):
    """One fitness-for-purpose criterion; one pytest item (several for a sweep)."""

    id: str = Field(pattern=ID_PATTERN)
    requirement: str = Field(min_length=1)
    hazard: str | None = None
    rationale: str = Field(min_length=1)
    gate: StrictBool = True
    # model: judges the model under test; sensitivity: perturbs the REAL test images and asks the measure to move (can the
    # measure see the failure?); reference: measures the REAL test images themselves (is the tool competent on this data?).
    # sensitivity and reference are the tool's self-checks: whatever the model, and a failed one makes the decision
    # INCOMPLETE (the gate cannot judge on this data), never NOT CLEARED.
    kind: Literal["model", "sensitivity", "reference"] = "model"
    metric: str
    params: dict[str, Any] = Field(default_factory=dict)
    perturbation: PerturbationSpec | None = None
    condition_on: Literal["test_masks", "train_masks"] = "test_masks"
    threshold: Threshold
    n_boot: int | None = Field(default=None, ge=0, le=100_000)  # None: the metric's default (1000 per-image, 100 set-level)
    by: SubgroupSpec | None = None  # decide in every subgroup of the items (mriq_validate.subgroups); all must pass
    scorecard: ScorecardC | None = None  # its C in the report's ScoreCard view, over its measure's default (mriq_validate.scorecard)

    @field_validator("metric")
    @classmethod
    def _metric_known(cls, v: str) -> str:
        from .metrics.base import metric_names

        if v not in metric_names():
            raise ValueError(f"unknown metric {v!r}; expected one of {metric_names()}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Criterion":
        from .metrics.base import create_metric

        def construct(params: dict[str, Any]) -> Any:
            return create_metric(self.metric, params)  # the metric's constructor checks every parameter

        error = _error_of(construct, self.params)
        if error is not None:
            raise _AtKey(error, ("params", *_blame(construct, self.params, error)))
        if self.kind == "sensitivity" and self.perturbation is None:
            raise ValueError("a sensitivity criterion needs a `perturbation` (what the measure must detect)")
        if self.kind == "sensitivity" and self.threshold.relative != "none":
            raise ValueError("a sensitivity criterion compares perturbed with clean real data itself; use `relative: none`")
        if self.by is not None:
            self._check_by()
        if self.kind == "reference":
            if self.threshold.relative != "none" or self.threshold.unit != "absolute":
                raise ValueError("a reference criterion measures the real test data against an absolute bound; use "
                                 "`relative: none` and `unit: absolute`")
            if self.perturbation is not None or self.condition_on != "test_masks":
                raise ValueError("a reference criterion measures the real test data as they are; remove `perturbation` "
                                 "and `condition_on`")
        return self

    def _check_by(self) -> None:
        from .metrics.base import create_metric
        from .subgroups import subgroup_support

        reason = subgroup_support(create_metric(self.metric, self.params))
        if reason is not None:
            raise _AtKey(reason, ("by",))
        if self.threshold.unit == "seed_sd":
            raise _AtKey("`by:` with `unit: seed_sd`: the training-noise floor is measured on the whole test split, not per "
                         "subgroup; use `unit: se` (each subgroup's own bootstrap SE) or `unit: absolute`", ("by",))

    @property
    def self_check(self) -> bool:
        """Whether this criterion checks the tool on the reference data (sensitivity or reference), not the model."""
        return self.kind != "model"


class CaseAttributes(_Strict):
    """``case_attributes: attributes.csv`` or ``{file: attributes.csv, id_column: case}``: a table of per-case attributes
    (one row per case, an id column and one column per attribute) added to the data's covariates, for ``by:``
    (:mod:`mriq_validate.data.attributes`). A relative ``file`` is relative to the suite file's folder."""

    file: str = Field(min_length=1)
    id_column: str = Field(default="id", min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        return {"file": value} if isinstance(value, str) else value


class DataOptions(_Strict):
    """Data this suite runs on by default, the contrasts it uses, and options for NIfTI folders. A NIfTI option left out
    takes the NIfTI loader's default (``mriq_validate.data.nifti.DEFAULT_*``, the one place they are written).

    ``contrasts`` names the image channels in order (canonical names or synonyms: t1/t1n/T1w, t1c/t1ce/t1gd, t2/t2w,
    flair/t2f); left out, every contrast the data has. ``modality`` is the older single-contrast form of it.
    ``labels`` gives the meaning of each label value (``{1: oedema, 2: necrotic_core, 3: enhancing}``) for a folder
    whose layout and dataset.json do not say it. ``slicing`` is ``slices`` (2D axial slices; options ``crop`` and
    ``slices``) or ``volume`` (one 3D volume per case; options ``spacing_mm``, isotropic mm, and ``shape``, D×H×W);
    for builtin data it must be the data's own kind. ``size`` asks a template builtin for more (or fewer) cases than it
    embeds: ``[n_train, n_test]`` slices for ``builtin:mni-tumour``, a number of cases for ``builtin:mni-tumour-3d``
    (cohort-scale runs and ``benchmarks/scale.py``); any other data refuses it. ``case_attributes`` names a CSV of
    per-case attributes whose columns criteria can be decided by (``by:``; :class:`CaseAttributes`)."""

    default: str = "builtin:mni-tumour"
    contrasts: list[str] | None = Field(default=None, min_length=1)
    modality: str | None = None
    labels: dict[int, str] | None = None
    crop: tuple[int, int] | None = None
    test_fraction: float | None = Field(default=None, gt=0, lt=1)
    slices: Literal["lesion", "all"] | None = None
    slicing: Literal["slices", "volume"] | None = None
    spacing_mm: float | None = Field(default=None, gt=0)
    shape: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] | None = None
    size: Annotated[int, Field(ge=1)] | tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = None
    case_attributes: CaseAttributes | None = None

    @model_validator(mode="after")
    def _one_contrast_form(self) -> "DataOptions":
        if self.modality is not None and self.contrasts is not None:
            raise _AtKey("give either contrasts (a list) or modality (one contrast), not both", ("modality",))
        return self

    @model_validator(mode="after")
    def _options_of_the_slicing(self) -> "DataOptions":
        if self.slicing is None and self.spacing_mm is None and self.shape is None:
            return self  # slices, as always: no need to load the data package
        from .data.nifti import DEFAULT_SLICING, check_slicing_options

        for key in ("crop", "slices", "spacing_mm", "shape"):
            if getattr(self, key) is not None:
                error = _error_of(lambda _: check_slicing_options(self.slicing or DEFAULT_SLICING, [key], "data"), {})
                if error is not None:
                    raise _AtKey(error, (key,))
        return self

    def options_for(self, spec: str) -> dict[str, Any]:
        """The loading options for data ``spec``: the contrasts and ``slicing`` for any data, and the NIfTI options for
        a folder."""
        contrasts = [self.modality] if self.modality is not None else self.contrasts
        picked: dict[str, Any] = {} if contrasts is None else {"contrasts": list(contrasts)}
        if spec.startswith("builtin:"):
            own = {"slicing": self.slicing, "size": self.size,
                   "case_attributes": self.case_attributes.model_dump() if self.case_attributes else None}
            return {**picked, **{k: v for k, v in own.items() if v is not None}}
        return {**self.model_dump(exclude={"default", "modality", "contrasts"}, exclude_none=True), **picked}


class Suite(_Strict):
    """A suite: name, context of use, data defaults and criteria (unique ids)."""

    name: str = Field(min_length=1)
    version: str = "1"
    description: str | None = None
    context_of_use: str = Field(min_length=1)
    data: DataOptions = Field(default_factory=DataOptions)
    criteria: list[Criterion] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> "Suite":
        seen: set[str] = set()
        for i, c in enumerate(self.criteria):
            if c.id in seen:
                raise _AtKey(f"criterion id {c.id!r} appears twice", ("criteria", i, "id"))
            seen.add(c.id)
        return self


def shipped_suites() -> Path:
    """The folder of the suites shipped in the package, as installed (``suites/`` of the source tree links to it)."""
    from importlib import resources

    return Path(str(resources.files("mriq_validate") / "suites"))


def is_suite_file(path: Path, named: bool = False) -> bool:
    """Whether ``path`` is a suite: its YAML has a top-level ``mriq_suite`` key. Decided by parsing (any encoding with a BOM,
    CRLF, comments or documents first). A file that mentions ``mriq_suite`` but cannot be decoded or parsed counts as a
    suite, so that loading it fails loudly instead of the criteria silently not running. A file the user ``named`` (on
    the command line) counts as one unless it is a mapping of some other tool (neither ``mriq_suite`` nor ``criteria``
    among its keys): one whose top level is a string, a list or nothing then fails to load saying what a suite is,
    instead of pytest's "not found" for a file that exists."""
    try:
        raw = path.read_bytes()
    except OSError:
        return False
    if not named and not any(SUITE_KEY.encode(enc) in raw for enc in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")):
        return False
    try:
        root = yaml.compose(decode_suite_bytes(raw, path), Loader=SuiteLoader)
    except (MriqError, yaml.YAMLError):
        return True
    if not isinstance(root, yaml.MappingNode):
        return named
    keys = {getattr(k, "value", None) for k, _ in root.value}
    return SUITE_KEY in keys or (named and "criteria" in keys)


def _format_errors(path: Path, exc: ValidationError, root: yaml.Node | None) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        loc += getattr(err.get("ctx", {}).get("error"), "loc", ())
        key_path = loc_text((SUITE_KEY, *loc))
        line = line_of(root, (SUITE_KEY, *loc))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the suite schema)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        got = err.get("input")
        got_text = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(got, (dict, list)) else f" (got {short(got)})"
        lines.append(f"{path}:{line or '?'}: {key_path}: {msg}{got_text}")
    return "invalid suite:\n  " + "\n  ".join(lines)


def load_suite(path: Path) -> Suite:
    """Parse and validate a suite file; SuiteError naming file, key path, line and expectation."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SuiteError(f"{path}: cannot be read ({exc})") from None
    if len(data) > MAX_SUITE_BYTES:
        raise SuiteError(f"{path}: {len(data)} bytes; a suite file holds at most {MAX_SUITE_BYTES} bytes")
    text = decode_suite_bytes(data, path)
    try:
        root = yaml.compose(text, Loader=SuiteLoader)
        memo: dict[int, int] = {}
        if root is not None and expanded_nodes(root, memo) > MAX_YAML_NODES:
            loc, line = bomb_site(root, memo)
            raise SuiteError(f"{path}:{line}: {loc_text(loc) or 'the document'}: its YAML aliases expand to more than "
                             f"{MAX_YAML_NODES} nodes (nested aliases, a \"billion laughs\"); write the suite out without nested aliases")
        raw = yaml.load(text, Loader=SuiteLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SuiteError(f"{where}: malformed YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(raw, dict) or SUITE_KEY not in raw:
        what = (f"a mapping without `{SUITE_KEY}:` (keys {short(sorted(map(str, raw)))})" if isinstance(raw, dict) else "a list"
                if isinstance(raw, list) else "empty" if raw is None else f"a {_SCALARS.get(type(raw), 'value')} ({short(raw)})")
        raise SuiteError(f"{path}: the top level is {what}; a suite is a mapping with a top-level `{SUITE_KEY}:` key holding `name:`, "
                         f"`context_of_use:` and `criteria:` (the list of criteria), e.g. `{SUITE_KEY}: {{name: ..., context_of_use: ..., "
                         f"criteria: [{{id: ..., metric: ..., threshold: ...}}]}}` (see suites/*.yaml)")
    extra = sorted(map(str, set(raw) - {SUITE_KEY}))
    if extra:
        raise SuiteError(f"{path}: unknown top-level key(s) {extra}; everything belongs under `{SUITE_KEY}:`")
    bad = non_finite(raw[SUITE_KEY], ())
    if bad:
        loc, value = bad
        raise SuiteError(f"{path}:{line_of(root, (SUITE_KEY, *loc)) or '?'}: {loc_text((SUITE_KEY, *loc))}: {value} is not a "
                         f"finite number; expected a finite value")
    try:
        return _with_paths_from(Suite.model_validate(raw[SUITE_KEY]), path)
    except ValidationError as exc:
        raise SuiteError(_format_errors(path, exc, root)) from None
    except MriqError as exc:  # raised by a validator outside pydantic's wrapping
        raise SuiteError(f"{path}: {exc}") from None


def _with_paths_from(suite: Suite, path: Path) -> Suite:
    """``suite`` with a relative ``data.case_attributes.file`` made relative to the folder of the suite file ``path``."""
    table = suite.data.case_attributes
    if table is None or Path(table.file).is_absolute():
        return suite
    table = table.model_copy(update={"file": str(path.parent / table.file)})
    return suite.model_copy(update={"data": suite.data.model_copy(update={"case_attributes": table})})


def suite_to_yaml(suite: Suite) -> str:
    """Serialise a suite back to YAML (round-trips through :func:`load_suite`)."""
    data = suite.model_dump(mode="json", exclude_defaults=True)
    for c, crit in zip(data["criteria"], suite.criteria):
        c.setdefault("threshold", {})
        if crit.perturbation is not None:
            c["perturbation"] = {"name": crit.perturbation.name, **crit.perturbation.params}
    return yaml.safe_dump({SUITE_KEY: data}, sort_keys=False, allow_unicode=True)
