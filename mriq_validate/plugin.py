"""The pytest plugin: options, collection of suite YAML files into criterion items, verdicts and the report.

Verdicts map onto pytest outcomes: PASS → passed; FAIL → failed (advisory criteria: passed, reported as
advisory FAIL); ERROR (the criterion could not be evaluated) → error, raised during setup; SKIP → skipped.
Heavy imports (torch, MONAI, pyiqa) happen inside hooks, so loading the plugin costs little.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .criteria import Outcome
    from .session import RunContext
    from .suite import Criterion, Suite

MODEL_OPTION = "--mriq-model"
DATA_OPTION = "--mriq-data"
DEVICE_OPTION = "--mriq-device"
SEED_OPTION = "--mriq-seed"
CACHE_OPTION = "--mriq-cache"
REPORT_OPTION = "--mriq-report"
THRESHOLD_OPTION = "--mriq-threshold"
TIMEOUT_OPTION = "--mriq-timeout"
DEFAULT_DATA = "builtin:mni-tumour (or the suite's data.default)"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _device(value: str) -> str:
    if not _DEVICE_RE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r}: expected auto, cpu, cuda or cuda:N")
    return value


def _spec(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("empty; expected a model or data spec (e.g. builtin:real, my_model.py:build, a folder)")
    return value.strip()


def _seed(value: str) -> int:
    try:
        seed = int(value)
    except ValueError:
        seed = -1
    if seed < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a non-negative integer")
    return seed


def _timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive number of seconds")
    return seconds


def _override(value: str) -> tuple[str, str, Any]:
    from .suite import parse_override

    try:
        return parse_override(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mriq-validate", "gate generative MRI models on fitness-for-purpose criteria")
    group.addoption(MODEL_OPTION, metavar="SPEC", type=_spec, help="model under test: builtin:NAME, file.py:NAME, module:NAME, a folder of "
                    "images or a TorchScript .pt file. Without it, suite criteria SKIP. ini: mriq_model")
    group.addoption(DATA_OPTION, metavar="SPEC", type=_spec, help=f"reference data: builtin:NAME or a NIfTI folder (BraTS or imagesTr/labelsTr). "
                    f"Default: {DEFAULT_DATA}. ini: mriq_data")
    group.addoption(DEVICE_OPTION, metavar="DEV", type=_device, help="auto (CUDA if available), cpu, cuda or cuda:N. Default: auto. ini: mriq_device")
    group.addoption(SEED_OPTION, metavar="INT", type=_seed, help="run seed; every random draw derives from it and the criterion id. "
                    "Default: 0. ini: mriq_seed")
    group.addoption(CACHE_OPTION, metavar="DIR", help="cache folder for data, trained segmenters and features (content-hash keys). "
                    "Default: $MRIQ_CACHE_DIR or ~/.cache/mriq-validate. ini: mriq_cache")
    group.addoption(REPORT_OPTION, metavar="DIR", help="write the evidence report (report.json, report.html) into DIR. ini: mriq_report")
    group.addoption(THRESHOLD_OPTION, metavar="ID.FIELD=VALUE", action="append", type=_override, default=[],
                    help="override a criterion's threshold without editing the suite, e.g. DICE-WT.min=-0.1 (repeatable; "
                    "recorded as a deviation). ini: mriq_thresholds (one per line)")
    from .isolation import DEFAULT_TIMEOUT_S

    group.addoption(TIMEOUT_OPTION, metavar="SECONDS", type=_timeout, help="each call into the model under test (loading, "
                    "generate, sample) must return within SECONDS, else the model's process is stopped and the criteria that "
                    f"need it ERROR; user code runs in a child process, so a hang or crash cannot stop the run. "
                    f"Default: {DEFAULT_TIMEOUT_S:g}. ini: mriq_timeout")
    parser.addini("mriq_model", "default for --mriq-model")
    parser.addini("mriq_data", "default for --mriq-data")
    parser.addini("mriq_device", "default for --mriq-device", default="auto")
    parser.addini("mriq_seed", "default for --mriq-seed", default="0")
    parser.addini("mriq_cache", "default for --mriq-cache")
    parser.addini("mriq_report", "default for --mriq-report")
    parser.addini("mriq_timeout", "default for --mriq-timeout", default=f"{DEFAULT_TIMEOUT_S:g}")
    parser.addini("mriq_thresholds", "threshold overrides ID.FIELD=VALUE, one per line", type="linelist", default=[])


class MriqRun:
    """Per-session state: effective settings, run contexts per data spec, results, deviations."""

    def __init__(self, config: pytest.Config) -> None:
        from .cache import default_cache_dir
        from .isolation import DEFAULT_TIMEOUT_S
        from .report import now_iso
        from .session import RunSettings

        def pick(option: str, ini: str, convert: Any = str) -> Any:
            value = config.getoption(option)
            if value is not None:
                return value
            raw = config.getini(ini)
            if raw in (None, ""):
                return None
            try:
                return convert(raw)
            except argparse.ArgumentTypeError as exc:
                raise pytest.UsageError(f"ini option {ini} = {raw!r}: {exc}") from None

        self.config = config
        self.settings = RunSettings(
            model=pick(MODEL_OPTION, "mriq_model"),
            data=pick(DATA_OPTION, "mriq_data"),
            device=pick(DEVICE_OPTION, "mriq_device", _device) or "auto",
            seed=pick(SEED_OPTION, "mriq_seed", _seed) or 0,
            cache_dir=str(pick(CACHE_OPTION, "mriq_cache") or default_cache_dir()),
            timeout=pick(TIMEOUT_OPTION, "mriq_timeout", _timeout) or DEFAULT_TIMEOUT_S,
        )
        config.add_cleanup(lambda: [c.close() for c in self.contexts.values()])  # stop the model's child process
        report = pick(REPORT_OPTION, "mriq_report")
        self.report_dir = Path(report) if report else None
        self.overrides: list[tuple[str, str, Any, str]] = [(*o, THRESHOLD_OPTION) for o in config.getoption(THRESHOLD_OPTION)]
        for line in config.getini("mriq_thresholds"):
            try:
                self.overrides.append((*_override(line), "ini mriq_thresholds"))
            except argparse.ArgumentTypeError as exc:
                raise pytest.UsageError(f"ini option mriq_thresholds: {exc}") from None
        self.contexts: dict[str, RunContext] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.deviations: list[dict[str, Any]] = []
        self.suites: dict[str, dict[str, Any]] = {}
        self.started = now_iso()
        # for the evidence report (see report.py): the collected plan, what did not run and why
        self.collected: dict[str, dict[str, Any]] = {}  # every item the collected suites ask for → record stub
        self.planned: dict[str, dict[str, Any]] = {}  # the items selected to run (after -k, -m, node ids), in order
        self.criterion_ids: set[str] = set()
        self.collection_errors: list[dict[str, Any]] = []
        self.durations: dict[str, float] = {}  # item id → seconds (setup + call + teardown)
        self.interruption: str | None = None
        self.worker_contexts: list[dict[str, Any]] = []  # context provenance sent by pytest-xdist workers
        self.xdist_workers = 0
        # optional sample grid for report.html: numpy arrays "real", "generated", "masks" (first few slices, N×H×W or
        # N×1×H×W); None → the report has no sample figure
        self.sample_images: dict[str, Any] | None = None
        self.figure_paths: list[Path] = []
        self.figure_error: str | None = None
        self.report_path: Path | None = None
        self.html_path: Path | None = None
        self.report_decision: dict[str, Any] | None = None
        self.report_error: str | None = None

    def context(self, suite: "Suite") -> "RunContext":
        """The shared context for the suite's data (``--mriq-data`` or the suite's ``data.default``)."""
        from .session import RunContext, RunSettings

        spec = self.settings.data or suite.data.default
        options = suite.data.options_for(spec)
        key = json.dumps([spec, options], sort_keys=True)
        if key not in self.contexts:
            settings = RunSettings(**{**self.settings.__dict__, "data": spec, "data_options": options})
            self.contexts[key] = RunContext(settings, spec, self.progress)
        return self.contexts[key]

    def progress(self, message: str) -> None:
        """A progress line on the terminal, even while output is captured."""
        tr = self.config.pluginmanager.getplugin("terminalreporter")
        capman = self.config.pluginmanager.getplugin("capturemanager")
        if tr is None or hasattr(self.config, "workerinput"):
            return
        if capman is not None:
            with capman.global_and_fixture_disabled():
                tr.write_line(f"[mriq] {message}", cyan=True)
        else:
            tr.write_line(f"[mriq] {message}")


RUN_KEY = pytest.StashKey[MriqRun]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mriq_gate: a gating mriq-validate criterion (FAIL blocks release)")
    config.addinivalue_line("markers", "mriq_advisory: an advisory mriq-validate criterion (reported, never fails the run)")
    config.stash[RUN_KEY] = MriqRun(config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    run = config.stash[RUN_KEY]
    s = run.settings
    return [
        f"mriq-validate: model={s.model or '(none: criteria will SKIP)'} data={s.data or DEFAULT_DATA} device={s.device} "
        f"seed={s.seed} timeout={s.timeout:g}s cache={s.cache_dir} report={run.report_dir or '(none)'}"
        + (f" threshold-overrides={len(run.overrides)}" if run.overrides else "")
    ]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> "SuiteFile | None":
    if file_path.suffix in (".yaml", ".yml"):
        from .suite import is_suite_file

        if is_suite_file(file_path):
            return SuiteFile.from_parent(parent, path=file_path)
    return None


class SuiteFile(pytest.File):
    """A suite YAML file; collects one item per criterion (per sweep level)."""

    def collect(self):  # type: ignore[no-untyped-def]
        from .errors import SuiteError
        from .suite import apply_overrides, decode_suite_bytes, load_suite

        run = self.config.stash[RUN_KEY]
        suite = load_suite(self.path)
        suite, deviations = apply_overrides(suite, run.overrides, self.path)
        run.deviations.extend({**d, "suite": str(self.path)} for d in deviations)
        run.suites[str(self.path)] = {"name": suite.name, "version": suite.version, "context_of_use": suite.context_of_use,
                                      "path": str(self.path), "n_criteria": len(suite.criteria)}
        text = decode_suite_bytes(self.path.read_bytes(), self.path)
        for crit in suite.criteria:
            run.criterion_ids.add(crit.id)
            line = _criterion_line(text, crit.id)
            levels = crit.perturbation.levels() if crit.perturbation else [{}]
            if not levels:  # the schema refuses empty sweeps; never let a criterion vanish without an error
                raise SuiteError(f"{self.path}:{line + 1}: criterion {crit.id} yields no test item")
            sweep = crit.perturbation is not None and any(isinstance(v, list) for v in crit.perturbation.params.values())
            for level in levels:
                name = crit.id
                if sweep:
                    key = next(k for k, v in crit.perturbation.params.items() if isinstance(v, list))  # type: ignore[union-attr]
                    name = f"{crit.id}[{key}={level[key]}]"
                item = CriterionItem.from_parent(self, name=name, criterion=crit, level=level if sweep else {}, suite=suite, line=line)
                item.add_marker("mriq_gate" if crit.gate else "mriq_advisory")
                run.collected[item.nodeid] = _plan_entry(item)  # everything the suite asks for, selected or not
                yield item

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:  # type: ignore[override]
        from .errors import MriqError

        if isinstance(excinfo.value, MriqError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


def _criterion_line(text: str, cid: str) -> int:
    m = re.search(rf"^\s*-?\s*id:\s*['\"]?{re.escape(cid)}['\"]?\s*$", text, re.MULTILINE)
    return text.count("\n", 0, m.start()) if m else 0


class CriterionFailed(AssertionError):
    """A gating criterion's threshold does not hold."""


class CriterionItem(pytest.Item):
    """One criterion (at one sweep level). Evaluation runs in setup (any error there is an ERROR); the call checks the verdict."""

    def __init__(self, *, criterion: "Criterion", level: dict[str, Any], suite: "Suite", line: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.criterion, self.level, self.suite, self.line = criterion, level, suite, line
        self.outcome: Outcome | None = None

    def setup(self) -> None:
        run = self.config.stash[RUN_KEY]
        if not run.settings.model:
            pytest.skip(f"no model under test: pass {MODEL_OPTION} (e.g. builtin:real) to evaluate {self.criterion.id}")
        from .criteria import evaluate

        ctx = run.context(self.suite)
        self.outcome = evaluate(self.criterion, ctx, self.level)
        if run.sample_images is None:
            run.sample_images = ctx.sample_images()
        o = self.outcome
        for key, value in (("verdict", o.verdict), ("gate", o.gate), ("metric", o.metric["name"]), ("value", o.value.value),
                           ("ci_low", o.value.ci_low), ("ci_high", o.value.ci_high),
                           ("baseline", o.baseline.value if o.baseline else None), ("compared", o.compared.value),
                           ("threshold", json.dumps(o.bounds)), ("seed", o.seed)):
            self.user_properties.append((f"mriq.{key}", value))

    def runtest(self) -> None:
        assert self.outcome is not None
        if self.outcome.verdict == "FAIL" and self.criterion.gate:
            prefix = ("SELF-CHECK FAILED: the tool cannot judge models on this data, so the decision is INCOMPLETE (not NOT "
                      "CLEARED).\n" if self.criterion.self_check else "")
            raise CriterionFailed(prefix + self.outcome.message)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:  # type: ignore[override]
        if isinstance(excinfo.value, CriterionFailed):
            return str(excinfo.value)
        return self._error_text(excinfo) or super().repr_failure(excinfo)

    def _repr_failure_py(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:  # setup errors
        return self._error_text(excinfo) or super()._repr_failure_py(excinfo, style)

    def _error_text(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
        from .errors import MriqError

        if isinstance(excinfo.value, MriqError):
            return f"{self.criterion.id} ERROR (could not be evaluated; this is never a pass): {excinfo.value}"
        return None

    def reportinfo(self) -> tuple[Path, int, str]:
        kind = "gate" if self.criterion.gate else "advisory"
        return self.path, self.line, f"criterion {self.name} ({kind}, {self.criterion.metric})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if not isinstance(item, CriterionItem):
        return rep
    record = _record(item, rep)
    if record is not None:
        rep.mriq_record = record  # travels with the report (also from pytest-xdist workers)
    return rep


def _record(item: CriterionItem, rep: pytest.TestReport) -> dict[str, Any] | None:
    crit = item.criterion
    base = {"item_id": item.nodeid, "criterion_id": crit.id, "level": item.level, "suite": str(item.path), "gate": crit.gate,
            "kind": crit.kind, "requirement": crit.requirement, "hazard": crit.hazard, "rationale": crit.rationale}
    if rep.when == "setup" and rep.skipped:
        return {**base, "verdict": "SKIP", "message": str(rep.longrepr[2]) if isinstance(rep.longrepr, tuple) else str(rep.longrepr)}
    if rep.when == "setup" and rep.failed:
        return {**base, "verdict": "ERROR", "message": str(rep.longrepr)}
    if rep.when == "call" and item.outcome is not None:
        o = item.outcome.as_dict()
        return {**base, **o, "verdict": o["verdict"], "advisory_fail": o["verdict"] == "FAIL" and not crit.gate}
    if rep.when == "call" and rep.failed:
        return {**base, "verdict": "ERROR", "message": str(rep.longrepr)}
    return None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _RUN is None:
        return
    if getattr(report, "when", None) == "collect":  # a worker's collection error, forwarded by pytest-xdist
        _collection_error(_RUN, report)
        return
    _RUN.durations[report.nodeid] = _RUN.durations.get(report.nodeid, 0.0) + float(getattr(report, "duration", 0.0) or 0.0)
    record = getattr(report, "mriq_record", None)
    if record is not None:
        _RUN.results[record["item_id"]] = record


_RUN: MriqRun | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    global _RUN
    _RUN = session.config.stash[RUN_KEY]
    if _RUN.report_dir is not None and not hasattr(session.config, "workerinput"):
        _mark_report_folder(_RUN)


def _mark_report_folder(run: MriqRun) -> None:
    """Replace whatever an earlier run left in the report folder with an INCOMPLETE placeholder, so a run that dies never
    leaves the previous decision in place; a folder that cannot be written is a usage error before any work is done."""
    from .report import mark_in_progress

    assert run.report_dir is not None
    try:
        mark_in_progress(run.report_dir, _run_info(run))
    except OSError as exc:
        raise pytest.UsageError(f"{REPORT_OPTION} {run.report_dir}: the report cannot be written there "
                                f"({exc.strerror or type(exc).__name__}: {exc.filename or run.report_dir}); give a writable folder") from None


def _plan_entry(item: CriterionItem) -> dict[str, Any]:
    """What the report knows about a collected criterion item before it runs (also for items that never run)."""
    crit = item.criterion
    return {"item_id": item.nodeid, "criterion_id": crit.id, "level": item.level, "suite": str(item.path), "suite_line": item.line + 1,
            "gate": crit.gate, "kind": crit.kind, "requirement": crit.requirement, "hazard": crit.hazard, "rationale": crit.rationale,
            "metric_name": crit.metric, "params": crit.params, "threshold_spec": crit.threshold.model_dump(),
            "perturbation_spec": crit.perturbation.model_dump() if crit.perturbation else None, "n_boot": crit.n_boot}


def pytest_collection_finish(session: pytest.Session) -> None:
    from .suite import unmatched_overrides

    run = session.config.stash[RUN_KEY]
    for item in session.items:
        if isinstance(item, CriterionItem):
            run.planned[item.nodeid] = _plan_entry(item)
    # an override that names no collected criterion (a typo) would leave the suite's bound in force unnoticed
    given = run.overrides if run.suites else [o for o in run.overrides if o[3] == THRESHOLD_OPTION]
    problems = unmatched_overrides(given, run.criterion_ids)
    if problems:
        raise pytest.UsageError("\n".join(problems))


def _deselected(run: MriqRun) -> list[dict[str, Any]]:
    """Items the collected suites ask for that were not selected to run (-k, -m, --deselect, node ids, other plugins)."""
    return [entry for item_id, entry in run.collected.items() if item_id not in run.planned]


def _collection_error(run: MriqRun, report: Any) -> None:
    if not report.failed or any(e["node_id"] == report.nodeid for e in run.collection_errors):
        return
    text = str(report.longrepr)
    run.collection_errors.append({"node_id": report.nodeid, "suite_file": report.nodeid.endswith((".yaml", ".yml")), "message": text})


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if _RUN is not None:
        _collection_error(_RUN, report)


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    # also pytest's "N errors during collection" and pytest-xdist's "stopping after N failures" (both Interrupted)
    if _RUN is not None and _RUN.interruption is None:
        text = str(excinfo.value).strip()
        _RUN.interruption = text if text and excinfo.typename == "Interrupted" else f"{excinfo.typename}{': ' + text if text else ''}"


def pytest_internalerror(excrepr: Any, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    if _RUN is not None and _RUN.interruption is None:
        _RUN.interruption = f"internal error: {excinfo.typename}: {excinfo.value}"


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist (controller): merge what a worker knows about the run (suites, plan, provenance) into this run."""
    payload = getattr(node, "workeroutput", {}).get("mriq")
    if _RUN is None or not payload:
        return
    from .report import decode_arrays

    data = json.loads(payload)
    run = _RUN
    run.xdist_workers += 1
    for path, suite in data["suites"].items():
        run.suites.setdefault(path, suite)
    for dev in data["deviations"]:
        if dev not in run.deviations:
            run.deviations.append(dev)
    for item_id, entry in data["planned"].items():
        run.planned.setdefault(item_id, entry)
    for item_id, entry in data["collected"].items():
        run.collected.setdefault(item_id, entry)
    run.criterion_ids.update(data["criterion_ids"])
    run.worker_contexts.extend(data["contexts"])
    if run.sample_images is None and data.get("sample_images"):
        run.sample_images = decode_arrays(data["sample_images"])


def _interruption(run: MriqRun, session: pytest.Session, exitstatus: int) -> str | None:
    if run.interruption:
        return run.interruption
    for reason in (session.shouldfail, session.shouldstop):
        if reason:
            return reason if isinstance(reason, str) else "the session was stopped early"
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        return "interrupted"
    if exitstatus == pytest.ExitCode.INTERNAL_ERROR:
        return "internal error"
    return None


def _run_info(run: MriqRun, session: pytest.Session | None = None, exitstatus: int | None = None) -> dict[str, Any]:
    from .report import now_iso

    return {
        "settings": {"model": run.settings.model, "data": run.settings.data, "device": run.settings.device, "seed": run.settings.seed,
                     "cache_dir": run.settings.cache_dir, "timeout_s": run.settings.timeout},
        "command_line": ["pytest", *map(str, run.config.invocation_params.args)],  # what pytest was given (also via pytest.main)
        "invocation_dir": str(run.config.invocation_params.dir),
        "started": run.started, "finished": now_iso(), "suites": list(run.suites.values()), "deviations": run.deviations,
        "contexts": [*run.worker_contexts, *(c.provenance() for c in run.contexts.values())],
        "planned": run.planned, "deselected": _deselected(run), "collection_errors": run.collection_errors,
        "durations": run.durations, "xdist_workers": run.xdist_workers,
        "exit_status": int(exitstatus) if exitstatus is not None else None,
        "interruption": _interruption(run, session, exitstatus if exitstatus is not None else 0) if session is not None else run.interruption,
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run = session.config.stash[RUN_KEY]
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: hand the controller what only workers know
        from .report import encode_arrays

        session.config.workeroutput["mriq"] = json.dumps({  # type: ignore[attr-defined]
            "suites": run.suites, "deviations": run.deviations, "planned": run.planned, "collected": run.collected,
            "criterion_ids": sorted(run.criterion_ids),
            "contexts": [c.provenance() for c in run.contexts.values()],
            "sample_images": encode_arrays(run.sample_images) if run.sample_images else None,
        }, default=str)
        return
    if run.report_dir is None and not (run.suites or run.results or run.planned or run.collection_errors):
        return  # not a gate run
    from .report import HTML_FILE, REPORT_FILE, build_report, write_report

    info = _run_info(run, session, exitstatus)
    try:
        report = build_report(list(run.results.values()), info)
    except Exception as exc:  # never end without a decision: say why the evidence could not be assembled
        report = build_report([], {**info, "interruption": f"the report could not be assembled ({type(exc).__name__}: {exc})"})
    run.report_decision = report["decision"]
    if run.report_decision["status"] != "CLEARED":
        _fail_exit(session)  # a gate run that did not check everything is not a pass, whatever pytest counted
    if run.report_dir is None:
        return
    try:  # always: the folder holds the placeholder written at start, which must not survive a finished run
        run.report_path = write_report(report, run.report_dir, sample_images=run.sample_images)
        run.html_path = run.report_dir / HTML_FILE
    except Exception as exc:  # say which file failed; the run must not exit 0 without the evidence it was asked for
        failed = getattr(exc, "filename", None) or run.report_dir / (HTML_FILE if (run.report_dir / REPORT_FILE).exists() else REPORT_FILE)
        run.report_error = f"{failed}: {type(exc).__name__}: {exc}"
        run.report_path = None
        _fail_exit(session)
    _write_perturbation_figures(run)


def _fail_exit(session: pytest.Session) -> None:
    """Make the run's exit status non-zero (pytest's TESTS_FAILED unless it already says something worse)."""
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _write_perturbation_figures(run: MriqRun) -> None:
    """``perturbations-<data>.png`` in the report folder: every perturbation at every strength on one test slice of
    each dataset the run used, so a person can see what the sensitivity criteria did."""
    from .cache import DiskCache
    from .data import load_data
    from .perturb.figure import perturbation_figure

    # the data exactly as the criteria loaded it (the suite's data options included); under pytest-xdist the workers
    # loaded it, and the controller loads it again, from the cache, with the options they report
    loaders = {json.dumps([c.data_spec, c.settings.data_options], sort_keys=True): (lambda c=c: c.data)
               for c in run.contexts.values() if c.data_loaded}
    for c in run.worker_contexts:
        if "data" in c:
            loaders.setdefault(json.dumps([c["data_spec"], c.get("data_options", {})], sort_keys=True),
                               lambda c=c: load_data(c["data_spec"], DiskCache(run.settings.cache_dir), **c.get("data_options", {})))
    for key, load in sorted(loaders.items()):
        try:
            data = load()
            name = re.sub(r"[^A-Za-z0-9_.-]+", "-", data.name.removeprefix("builtin:")).strip("-")
            run.figure_paths.append(perturbation_figure(data.test.images[0, 0], data.test.masks[0, 0],
                                                        run.report_dir / f"perturbations-{name}.png", seed=run.settings.seed))
        except Exception as exc:  # a figure is an aid; the report is already written
            run.figure_error = f"perturbation figure for {json.loads(key)[0]} could not be drawn: {type(exc).__name__}: {exc}"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    run = config.stash[RUN_KEY]
    if not (run.results or run.report_decision or run.report_error):
        return
    from .report import decision

    results = sorted(run.results.values(), key=lambda r: r["item_id"])
    tr = terminalreporter
    tr.write_sep("=", "mriq-validate")
    if results:
        tr.write_line(f"{'verdict':<18} {'criterion':<32} {'measure':<10} value [95% CI] vs baseline  compared  (bounds)")
    for r in results:
        verdict = r["verdict"] + (" (advisory)" if not r["gate"] and r["verdict"] in ("FAIL", "PASS") else "")
        if "value" in r:
            v = r["value"]
            b = r.get("baseline")
            bounds = " ".join(f"{k} {x:.4g}" for k, x in r["bounds"].items() if x is not None)
            text = (f"{v['value']:.4g} [{v['ci_low']:.4g}, {v['ci_high']:.4g}]" + (f" vs {b['value']:.4g}" if b else "")
                    + f"  {r['threshold']['relative'] if r['threshold']['relative'] != 'none' else 'value'} {r['checked']:.4g}  ({bounds})")
        else:
            text = r.get("message", "").splitlines()[0][:100] if r.get("message") else ""
        markup = {"PASS": {"green": True}, "FAIL": {"red": True} if r["gate"] else {"yellow": True}, "ERROR": {"red": True}}
        tr.write_line(f"{verdict:<18} {r['item_id'].split('::')[-1]:<32} {r.get('metric', {}).get('name', ''):<10} {text}",
                      **markup.get(r["verdict"], {"yellow": True}))
    d = run.report_decision
    if d is None:
        not_run = [p for k, p in run.planned.items() if k not in run.results]
        d = decision(results, not_run=not_run, interruption=run.interruption, collection_errors=run.collection_errors,
                     deselected=_deselected(run))
    for item_id in d.get("not_run", []):
        tr.write_line(f"{'NOT RUN':<18} {item_id.split('::')[-1]:<32}", yellow=True)
    colour = {"CLEARED": {"green": True}, "NOT CLEARED": {"red": True}}.get(d["status"], {"yellow": True})
    tr.write_line(f"release decision: {d['status']}" + (f" (failing gates: {', '.join(d['failed_gating'])})" if d["failed_gating"] else ""),
                  bold=True, **colour)
    if d["status"] == "INCOMPLETE":
        tr.write_line(f"  {d['summary']}")
    if run.report_path:
        tr.write_line(f"report: {run.report_path}" + (f"  {run.html_path}" if run.html_path else ""))
    if run.report_error:
        tr.write_line(f"the evidence report could not be written (exit status set to non-zero): {run.report_error}", red=True)
    if run.figure_paths:
        tr.write_line(f"perturbation figure(s): {'  '.join(map(str, run.figure_paths))}")
    if run.figure_error:
        tr.write_line(run.figure_error, yellow=True)
