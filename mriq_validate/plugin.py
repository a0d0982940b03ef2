"""The pytest plugin: options, collection of suite YAML files into criterion items, and the run's hooks.

Verdicts map onto pytest outcomes: PASS → passed; FAIL → failed (advisory criteria: passed, reported as
advisory FAIL); ERROR (the criterion could not be evaluated) → error, raised during setup; SKIP → skipped.

As pytest-html and pytest-benchmark do, ``pytest_configure`` registers one :class:`MriqPlugin` object per session whose
methods are the run's hooks; the run's state is a :class:`~mriq_validate.run_state.MriqRun` (report assembly there,
pytest-xdist transport in :mod:`mriq_validate.xdist_transport`). Heavy imports (torch, MONAI, pyiqa) happen inside
hooks, so loading the plugin costs little.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .options import parse_batch_size, parse_device, parse_seed, parse_spec, parse_timeout, parse_workers
from .shards import parse_shard
from .signals import StopSignals

if TYPE_CHECKING:
    from .criteria import Outcome
    from .run_state import MriqRun
    from .suite import Criterion, Suite

MODEL_OPTION = "--mriq-model"
DATA_OPTION = "--mriq-data"
DEVICE_OPTION = "--mriq-device"
SEED_OPTION = "--mriq-seed"
CACHE_OPTION = "--mriq-cache"
REPORT_OPTION = "--mriq-report"
THRESHOLD_OPTION = "--mriq-threshold"
TIMEOUT_OPTION = "--mriq-timeout"
SHARD_OPTION = "--mriq-shard"
BATCH_SIZE_OPTION = "--mriq-batch-size"
WORKERS_OPTION = "--mriq-workers"
DEFAULT_DATA = "builtin:mni-tumour (or the suite's data.default)"
PLUGIN_NAME = "mriq-validate-run"
RUN_KEY = pytest.StashKey["MriqRun"]()


def _override(value: str) -> tuple[str, str, Any]:
    from .overrides import parse_override

    try:
        return parse_override(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mriq-validate", "gate generative MRI models on fitness-for-purpose criteria")
    group.addoption(MODEL_OPTION, metavar="SPEC", type=parse_spec, help="model under test: builtin:NAME, file.py:NAME, module:NAME, a "
                    "folder of images or a TorchScript .pt file. Without it, suite criteria SKIP. ini: mriq_model")
    group.addoption(DATA_OPTION, metavar="SPEC", type=parse_spec, help=f"reference data: builtin:NAME or a NIfTI folder (BraTS or "
                    f"imagesTr/labelsTr). Default: {DEFAULT_DATA}. ini: mriq_data")
    group.addoption(DEVICE_OPTION, metavar="DEV", type=parse_device, help="auto (CUDA if available), cpu, cuda or cuda:N. Default: auto. "
                    "ini: mriq_device")
    group.addoption(SEED_OPTION, metavar="INT", type=parse_seed, help="run seed; every random draw derives from it and the criterion id. "
                    "Default: 0. ini: mriq_seed")
    group.addoption(CACHE_OPTION, metavar="DIR", help="cache folder for data, trained segmenters and features (content-hash keys). "
                    "Default: $MRIQ_CACHE_DIR or ~/.cache/mriq-validate. ini: mriq_cache")
    group.addoption(REPORT_OPTION, metavar="DIR", help="write the evidence report (report.json, report.html) into DIR. ini: mriq_report")
    group.addoption(THRESHOLD_OPTION, metavar="ID.FIELD=VALUE", action="append", type=_override, default=[],
                    help="override a criterion's threshold without editing the suite, e.g. DICE-WT.min=-0.1 (repeatable; "
                    "recorded as a deviation). ini: mriq_thresholds (one per line)")
    from .isolation import DEFAULT_TIMEOUT_S

    group.addoption(TIMEOUT_OPTION, metavar="SECONDS", type=parse_timeout, help="each call into the model under test (loading, "
                    "generate, sample) must return within SECONDS, else the model's process is stopped and the criteria that "
                    f"need it ERROR; user code runs in a child process, so a hang or crash cannot stop the run. "
                    f"Default: {DEFAULT_TIMEOUT_S:g}. ini: mriq_timeout")
    group.addoption(BATCH_SIZE_OPTION, metavar="N", type=parse_batch_size, help="items (slices or volumes) per call into the model "
                    "and per batch of per-image scoring; generated images are written to a memory-mapped scratch file batch by "
                    "batch. Default: auto (about 256 MB of images per batch on CPU, 1 GB on CUDA). ini: mriq_batch_size")
    group.addoption(WORKERS_OPTION, metavar="N", type=parse_workers, help="CPU processes that train independent segmenters side by "
                    "side (the noise floor's seeds), with the same weights as one by one. Default: auto (the usable cores, shared "
                    "among pytest-xdist workers; 1 on CUDA). ini: mriq_workers")
    group.addoption(SHARD_OPTION, metavar="K/N", type=parse_shard, help="run shard K of N of the collected criterion items (the sweep "
                    "levels of a criterion stay together; the same split on every job) and write a shard report; merge the N "
                    "report folders with `mriq-validate merge-reports` for the release decision. ini: mriq_shard")
    ini_defaults = {MODEL_OPTION: None, DATA_OPTION: None, DEVICE_OPTION: "auto", SEED_OPTION: "0", CACHE_OPTION: None, REPORT_OPTION: None,
                    TIMEOUT_OPTION: f"{DEFAULT_TIMEOUT_S:g}", SHARD_OPTION: None, BATCH_SIZE_OPTION: "auto", WORKERS_OPTION: "auto"}
    for option, default in ini_defaults.items():  # each option's ini twin: --mriq-batch-size → mriq_batch_size
        parser.addini(option[2:].replace("-", "_"), f"default for {option}", default=default)
    parser.addini("mriq_thresholds", "threshold overrides ID.FIELD=VALUE, one per line", type="linelist", default=[])


def _new_run(config: pytest.Config) -> MriqRun:
    """The run's state from the command line, falling back to the ini file (a bad ini value is a usage error)."""
    from .cache import default_cache_dir
    from .isolation import DEFAULT_TIMEOUT_S
    from .run_state import MriqRun
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

    settings = RunSettings(
        model=pick(MODEL_OPTION, "mriq_model"),
        data=pick(DATA_OPTION, "mriq_data"),
        device=pick(DEVICE_OPTION, "mriq_device", parse_device) or "auto",
        seed=pick(SEED_OPTION, "mriq_seed", parse_seed) or 0,
        cache_dir=str(pick(CACHE_OPTION, "mriq_cache") or default_cache_dir()),
        timeout=pick(TIMEOUT_OPTION, "mriq_timeout", parse_timeout) or DEFAULT_TIMEOUT_S,
        batch_size=pick(BATCH_SIZE_OPTION, "mriq_batch_size", parse_batch_size) or "auto",
        workers=pick(WORKERS_OPTION, "mriq_workers", parse_workers) or "auto",
    )
    overrides = [(*o, THRESHOLD_OPTION) for o in config.getoption(THRESHOLD_OPTION)]
    for line in config.getini("mriq_thresholds"):
        try:
            overrides.append((*_override(line), "ini mriq_thresholds"))
        except argparse.ArgumentTypeError as exc:
            raise pytest.UsageError(f"ini option mriq_thresholds: {exc}") from None
    report = pick(REPORT_OPTION, "mriq_report")
    return MriqRun(settings, report_dir=Path(report) if report else None, overrides=overrides,
                   command_line=list(map(str, config.invocation_params.args)), invocation_dir=str(config.invocation_params.dir),
                   progress=lambda message: _progress(config, message), shard=pick(SHARD_OPTION, "mriq_shard", parse_shard))


def _progress(config: pytest.Config, message: str) -> None:
    """A progress line on the terminal, even while output is captured (not on pytest-xdist workers)."""
    tr = config.pluginmanager.getplugin("terminalreporter")
    capman = config.pluginmanager.getplugin("capturemanager")
    if tr is None or hasattr(config, "workerinput"):
        return
    if capman is not None:
        with capman.global_and_fixture_disabled():
            tr.write_line(f"[mriq] {message}", cyan=True)
    else:
        tr.write_line(f"[mriq] {message}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mriq_gate: a gating mriq-validate criterion (FAIL blocks release)")
    config.addinivalue_line("markers", "mriq_advisory: an advisory mriq-validate criterion (reported, never fails the run)")
    run = config.stash[RUN_KEY] = _new_run(config)
    stop = _StopSignals(received=run.signals, on_stop=run.interrupted)
    if (run.settings.model or run.report_dir) and stop.install():  # a gate run: SIGTERM and SIGINT end it with a decision
        config.add_cleanup(stop.restore)  # after run.close below (cleanups run last in, first out)
    config.add_cleanup(run.close)  # stop the model's child process
    config.pluginmanager.register(MriqPlugin(run, stop), PLUGIN_NAME)
    config.pluginmanager.register(stop, f"{PLUGIN_NAME}-signals")


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.pluginmanager.get_plugin(PLUGIN_NAME)
    if plugin is not None:
        plugin.unconfigure(config)
        config.pluginmanager.unregister(plugin, PLUGIN_NAME)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> SuiteFile | None:
    if file_path.suffix in (".yaml", ".yml"):
        from .suite import is_suite_file

        # a YAML file named on the command line is taken as a suite, so one that is not says why (not "not found")
        if is_suite_file(file_path, named=parent.session.isinitpath(file_path)):
            return SuiteFile.from_parent(parent, path=file_path)
    return None


class SuiteFile(pytest.File):
    """A suite YAML file; collects one item per criterion (per sweep level)."""

    def collect(self):  # type: ignore[no-untyped-def]
        from .errors import SuiteError
        from .overrides import apply_overrides
        from .suite import decode_suite_bytes, load_suite

        run = self.config.stash[RUN_KEY]
        suite = load_suite(self.path)
        suite, deviations = apply_overrides(suite, run.overrides, self.path)
        run.add_suite(self.path, suite, deviations)
        text = decode_suite_bytes(self.path.read_bytes(), self.path)
        for crit in suite.criteria:
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
                run.collected[item.nodeid] = item.plan_entry()  # everything the suite asks for, selected or not
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

    def __init__(self, *, criterion: Criterion, level: dict[str, Any], suite: Suite, line: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.criterion, self.level, self.suite, self.line = criterion, level, suite, line
        self.outcome: Outcome | None = None

    def setup(self) -> None:
        run = self.config.stash[RUN_KEY]
        if not run.settings.model:
            pytest.skip(f"no model under test: pass {MODEL_OPTION} (e.g. builtin:real) to evaluate {self.criterion.id}")
        from .criteria import evaluate

        from .errors import DataError

        ctx = run.context(self.suite)
        problem = run.fit(self.suite, ctx).problem(self.criterion)
        if problem is not None:
            kind, message = problem
            if kind == "error":
                raise DataError(message)
            pytest.skip(message)  # a gating criterion that cannot apply leaves the decision INCOMPLETE
        self.outcome = evaluate(self.criterion, ctx, self.level)
        run.keep_images(self.nodeid, ctx, self.outcome)  # the sample grid, and the worst-case gallery's images
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
        return self.error_text(excinfo) or super().repr_failure(excinfo)

    def error_text(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
        from .errors import MriqError

        if isinstance(excinfo.value, MriqError):
            return f"{self.criterion.id} ERROR (could not be evaluated; this is never a pass): {excinfo.value}"
        return None

    def reportinfo(self) -> tuple[Path, int, str]:
        kind = "gate" if self.criterion.gate else "advisory"
        return self.path, self.line, f"criterion {self.name} ({kind}, {self.criterion.metric})"

    def plan_entry(self) -> dict[str, Any]:
        """What the report knows about this item before it runs (also when it never runs)."""
        crit = self.criterion
        return {"item_id": self.nodeid, "criterion_id": crit.id, "level": self.level, "suite": str(self.path),
                "suite_line": self.line + 1, "gate": crit.gate, "kind": crit.kind, "requirement": crit.requirement,
                "hazard": crit.hazard, "rationale": crit.rationale, "metric_name": crit.metric, "params": crit.params,
                "threshold_spec": crit.threshold.model_dump(),
                "perturbation_spec": crit.perturbation.model_dump() if crit.perturbation else None, "n_boot": crit.n_boot,
                "scorecard": crit.scorecard, "by": crit.by.name if crit.by else None}

    def record(self, rep: pytest.TestReport) -> dict[str, Any] | None:
        """This item's record for the report from the report of one phase; None for phases that decide nothing."""
        crit = self.criterion
        base = {"item_id": self.nodeid, "criterion_id": crit.id, "level": self.level, "suite": str(self.path), "gate": crit.gate,
                "kind": crit.kind, "requirement": crit.requirement, "hazard": crit.hazard, "rationale": crit.rationale}
        if rep.when == "setup" and rep.skipped:
            return {**base, "verdict": "SKIP", "message": str(rep.longrepr[2]) if isinstance(rep.longrepr, tuple) else str(rep.longrepr)}
        if rep.when == "setup" and rep.failed:
            return {**base, "verdict": "ERROR", "message": str(rep.longrepr)}
        if rep.when == "call" and self.outcome is not None:
            o = self.outcome.as_dict()
            return {**base, **o, "verdict": o["verdict"], "advisory_fail": o["verdict"] == "FAIL" and not crit.gate}
        if rep.when == "call" and rep.failed:
            return {**base, "verdict": "ERROR", "message": str(rep.longrepr)}
        return None


class MriqPlugin:
    """The hooks of one session's gate run (registered as ``mriq-validate-run`` by ``pytest_configure``)."""

    def __init__(self, run: MriqRun, stop: StopSignals) -> None:
        self.run, self.stop = run, stop

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        run, s = self.run, self.run.settings
        return [
            f"mriq-validate: model={s.model or '(none: criteria will SKIP)'} data={s.data or DEFAULT_DATA} device={s.device} "
            f"seed={s.seed} timeout={s.timeout:g}s batch-size={s.batch_size} workers={s.workers} cache={s.cache_dir} report={run.report_dir or '(none)'}"
            + (f" threshold-overrides={len(run.overrides)}" if run.overrides else "")
            + (f" shard={run.shard}" if run.shard else "")
        ]

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Mark the report folder (an INCOMPLETE placeholder) before any work; an unwritable folder is a usage error."""
        if self.run.report_dir is None or hasattr(session.config, "workerinput"):
            return
        try:
            self.run.mark_report_folder()
        except OSError as exc:
            raise pytest.UsageError(f"{REPORT_OPTION} {self.run.report_dir}: the report cannot be written there "
                                    f"({exc.strerror or type(exc).__name__}: {exc.filename or self.run.report_dir}); "
                                    "give a writable folder") from None

    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
        """``--mriq-shard K/N``: keep this shard's criterion items; the others are deselected as another shard's (not as
        unselected criteria). The split is computed from the whole collected plan, so every job computes the same one."""
        from .shards import assign, empty_shard_problem

        run = self.run
        if run.shard is None:
            return
        problem = empty_shard_problem(run.shard, run.collected)
        if problem and not run.collection_errors:  # with a file that failed to collect, the report says that instead
            raise pytest.UsageError(f"{SHARD_OPTION} {problem}")
        owner = assign(run.collected, run.shard.count)
        others = [i for i in items if isinstance(i, CriterionItem) and owner.get(i.nodeid) != run.shard.index]
        if others:
            config.hook.pytest_deselected(items=others)
            dropped = set(map(id, others))
            items[:] = [i for i in items if id(i) not in dropped]

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        from .overrides import unmatched_overrides

        run = self.run
        for item in session.items:
            if isinstance(item, CriterionItem):
                run.planned[item.nodeid] = item.plan_entry()
        # an override that names no collected criterion (a typo) would leave the suite's bound in force unnoticed
        given = run.overrides if run.suites else [o for o in run.overrides if o[3] == THRESHOLD_OPTION]
        problems = unmatched_overrides(given, run.criterion_ids)
        if problems:
            raise pytest.UsageError("\n".join(problems))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        rep = yield
        if isinstance(item, CriterionItem):
            if rep.when == "setup" and call.excinfo is not None and (text := item.error_text(call.excinfo)):
                rep.longrepr = text  # a criterion that could not be evaluated (setup): the cause, not a traceback
            record = item.record(rep)
            if record is not None:
                rep.mriq_record = record  # travels with the report (also from pytest-xdist workers)
        return rep

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if getattr(report, "when", None) == "collect":  # a worker's collection error, forwarded by pytest-xdist
            self.pytest_collectreport(report)  # type: ignore[arg-type]
            return
        self.run.add_report(report.nodeid, float(getattr(report, "duration", 0.0) or 0.0), getattr(report, "mriq_record", None))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.run.add_collection_error(report.nodeid, str(report.longrepr))

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        # also pytest's "N errors during collection" and pytest-xdist's "stopping after N failures" (both Interrupted)
        self.stop.finishing()  # a SIGTERM / SIGINT was recorded by name as it came; no other may cut the decision short
        text = str(excinfo.value).strip()
        self.run.interrupted(text if text and excinfo.typename == "Interrupted" else f"{excinfo.typename}{': ' + text if text else ''}")
        self.run.close()  # no more items run: stop the model process now, not after the report

    def pytest_internalerror(self, excrepr: Any, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        self.run.interrupted(f"internal error: {excinfo.typename}: {excinfo.value}")

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """pytest-xdist (controller): merge what a worker knows about the run (suites, plan, provenance) into this run."""
        from .xdist_transport import WORKER_OUTPUT_KEY, merge_payload

        payload = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY)
        if payload:
            merge_payload(self.run, payload)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: hand the controller what only workers know
            from .xdist_transport import WORKER_OUTPUT_KEY, worker_payload

            session.config.workeroutput[WORKER_OUTPUT_KEY] = worker_payload(self.run)  # type: ignore[attr-defined]
            return
        if not self.run.is_gate_run:
            return
        ok = self.run.finish(exitstatus, _stopped(session, exitstatus))
        if not ok and session.exitstatus == pytest.ExitCode.OK:  # a gate run that is not CLEARED, or lost its evidence
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        lines = self.run.summary_lines()
        if lines:
            terminalreporter.write_sep("=", "mriq-validate")
        for text, markup in lines:
            terminalreporter.write_line(text, **markup)

    def unconfigure(self, config: pytest.Config) -> None:
        """Stop the model process; decide a gate run that a signal stopped before pytest could finish the session."""
        self.stop.finishing()
        self.run.close()
        tr = config.pluginmanager.getplugin("terminalreporter")
        if not hasattr(config, "workerinput") and self.run.finish_stopped() and tr is not None:
            self.pytest_terminal_summary(tr, pytest.ExitCode.INTERRUPTED, config)
        if (session := config.pluginmanager.get_plugin("session")) is not None:  # pytest's Session registers under that name
            session.exitstatus = self.run.exit_status(session.exitstatus)


class _StopSignals(StopSignals):
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self) -> Any:  # outermost: from here on a SIGTERM or SIGINT is noted, not raised
        self.finishing()
        return (yield)


def _stopped(session: pytest.Session, exitstatus: int) -> str | None:
    """Why pytest ended the session early (``-x``, ``--maxfail``, an interruption), if it did."""
    for reason in (session.shouldfail, session.shouldstop):
        if reason:
            return reason if isinstance(reason, str) else "the session was stopped early"
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        return "interrupted"
    if exitstatus == pytest.ExitCode.INTERNAL_ERROR:
        return "internal error"
    return None
