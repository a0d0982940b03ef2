"""The state of one gate run under pytest, and what is built from it at the end.

The plugin (:mod:`mriq_validate.plugin`) owns the pytest side (options, collection, hooks) and records what happens
into a :class:`MriqRun`: the effective settings, one shared :class:`~mriq_validate.session.RunContext` per data spec,
the collected plan, the per-criterion records, deviations and what stopped the run. At the end the run assembles the
evidence report (:mod:`mriq_validate.report`), writes the perturbation figures and gives the terminal summary lines.
Nothing here needs pytest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .decision import decision

if TYPE_CHECKING:
    from .applicability import SuiteFit
    from .shards import Shard
    from .session import RunContext, RunSettings
    from .suite import Suite

Override = tuple[str, str, Any, str]  # criterion id, field, value, where it was given


def _now() -> str:
    from .report import now_iso

    return now_iso()


@dataclass
class MriqRun:
    """Per-session state: effective settings, run contexts per data spec, results, deviations."""

    settings: RunSettings
    report_dir: Path | None = None
    overrides: list[Override] = field(default_factory=list)
    command_line: list[str] = field(default_factory=list)
    invocation_dir: str = ""
    progress: Callable[[str], None] = lambda message: None
    contexts: dict[str, RunContext] = field(default_factory=dict)
    fits: dict[str, "SuiteFit"] = field(default_factory=dict)  # suite and data → which criteria can apply
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # item id → record (``rep.mriq_record``)
    deviations: list[dict[str, Any]] = field(default_factory=list)  # threshold overrides applied
    suites: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: str = field(default_factory=_now)
    # for the evidence report: the collected plan, what did not run and why
    collected: dict[str, dict[str, Any]] = field(default_factory=dict)  # every item the collected suites ask for → plan entry
    planned: dict[str, dict[str, Any]] = field(default_factory=dict)  # the items selected to run (after -k, -m, node ids), in order
    criterion_ids: set[str] = field(default_factory=set)
    collection_errors: list[dict[str, Any]] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)  # item id → seconds (setup + call + teardown)
    interruption: str | None = None
    signals: list[str] = field(default_factory=list)  # SIGTERM / SIGINT received, in order (mriq_validate.signals)
    worker_contexts: list[dict[str, Any]] = field(default_factory=list)  # context provenance sent by pytest-xdist workers
    xdist_workers: int = 0
    # optional sample grid for report.html: numpy arrays "real", "generated", "masks" (first few slices, N×H×W or
    # N×1×H×W); None → the report has no sample figure
    sample_images: dict[str, Any] | None = None
    # report.html's worst-case gallery: item id → the K worst items' images of a gating per-item criterion ({"meta", "arrays"})
    gallery_images: dict[str, dict[str, Any]] = field(default_factory=dict)
    figure_paths: list[Path] = field(default_factory=list)
    figure_error: str | None = None
    report_path: Path | None = None
    html_path: Path | None = None
    report_decision: dict[str, Any] | None = None
    report_error: str | None = None
    shard: "Shard | None" = None  # --mriq-shard K/N: this run is one part of a gate run split across jobs

    # ------------------------------------------------------------------------------------------------- during the run

    def context(self, suite: Suite) -> RunContext:
        """The shared context for the suite's data (``--mriq-data`` or the suite's ``data.default``)."""
        from .session import RunContext, RunSettings

        spec = self.settings.data or suite.data.default
        options = suite.data.options_for(spec)
        key = json.dumps([spec, options], sort_keys=True)
        if key not in self.contexts:
            settings = RunSettings(**{**self.settings.__dict__, "data": spec, "data_options": options})
            self.contexts[key] = RunContext(settings, spec, self.progress)
        return self.contexts[key]

    def fit(self, suite: Suite, ctx: "RunContext") -> "SuiteFit":
        """Whether ``suite``'s criteria can be evaluated on ``ctx``'s data (decided once per suite and data)."""
        from .applicability import suite_fit

        key = json.dumps([suite.name, suite.version, [c.id for c in suite.criteria], ctx.data_spec, ctx.settings.data_options],
                         sort_keys=True, default=str)
        if key not in self.fits:
            self.fits[key] = suite_fit(suite, ctx.data)
        return self.fits[key]

    def close(self) -> None:
        """Stop what the run holds outside this process (the model's child process)."""
        for ctx in self.contexts.values():
            ctx.close()

    def add_suite(self, path: Path, suite: Suite, deviations: list[dict[str, Any]]) -> None:
        """A collected suite and the threshold overrides applied to it."""
        self.deviations.extend({**d, "suite": str(path)} for d in deviations)
        self.suites[str(path)] = {"name": suite.name, "version": suite.version, "context_of_use": suite.context_of_use,
                                  "path": str(path), "n_criteria": len(suite.criteria)}
        self.criterion_ids.update(c.id for c in suite.criteria)

    def keep_images(self, item_id: str, ctx: RunContext, outcome: Any) -> None:
        """After an item is evaluated: the sample grid (once) and the item's worst-case images, if it has any."""
        if self.sample_images is None:
            self.sample_images = ctx.sample_images()
        if getattr(outcome, "gallery", None) is not None:
            self.gallery_images[item_id] = outcome.gallery

    def add_collection_error(self, node_id: str, message: str) -> None:
        """A file that could not be collected (here or, forwarded by pytest-xdist, on a worker); once per file."""
        if not any(e["node_id"] == node_id for e in self.collection_errors):
            self.collection_errors.append({"node_id": node_id, "suite_file": node_id.endswith((".yaml", ".yml")), "message": message})

    def add_report(self, node_id: str, duration: float, record: dict[str, Any] | None) -> None:
        """One phase (setup, call, teardown) of an item: its time and, for criterion items, its record."""
        self.durations[node_id] = self.durations.get(node_id, 0.0) + duration
        if record is not None:
            self.results[record["item_id"]] = record

    def interrupted(self, reason: str) -> None:
        """Why the run stopped early (the first reason given wins)."""
        if self.interruption is None:
            self.interruption = reason

    def finish_stopped(self) -> bool:
        """Decide a gate run that was stopped (by a signal, or an interrupt pytest reported) before pytest could finish
        the session, e.g. while pytest-xdist started its workers; whether it did (not when the run already decided)."""
        if not self.is_gate_run or self.report_decision is not None or self.report_error is not None:
            return False
        if not (self.interruption or self.signals):
            return False
        self.interrupted(self.signals[0] if self.signals else "interrupted")
        self.finish(2)  # pytest's exit status INTERRUPTED
        return True

    def exit_status(self, status: int) -> int:
        """The run's exit status: ``status``, or 2 (pytest's INTERRUPTED) in place of 0 when a signal came after the
        decision was written (the report stands, but the run did not end by itself)."""
        return 2 if self.signals and not status else status

    def deselected(self) -> list[dict[str, Any]]:
        """Items the collected suites ask for that were not selected to run (-k, -m, --deselect, node ids, other plugins);
        under ``--mriq-shard`` the items of the other shards are theirs, not deselected."""
        others = self.other_shards_items()
        return [entry for item_id, entry in self.collected.items() if item_id not in self.planned and item_id not in others]

    def other_shards_items(self) -> set[str]:
        """Under ``--mriq-shard K/N``: the collected items assigned to the other shards (empty without sharding)."""
        from .shards import assign

        if self.shard is None:
            return set()
        return {item_id for item_id, k in assign(self.collected, self.shard.count).items() if k != self.shard.index}

    def not_run(self) -> list[dict[str, Any]]:
        """Items selected to run that have no record (yet)."""
        return [entry for item_id, entry in self.planned.items() if item_id not in self.results]

    @property
    def is_gate_run(self) -> bool:
        """Whether this run gates a model (a report is asked for, or a suite was collected), so it ends with a decision."""
        return self.report_dir is not None or bool(self.suites or self.results or self.planned or self.collection_errors)

    # ---------------------------------------------------------------------------------------------------- the report

    def info(self, exitstatus: int | None = None, stopped: str | None = None) -> dict[str, Any]:
        """What the report needs to know about the session (see :func:`mriq_validate.report.build_report`).

        ``stopped``: why pytest stopped the session (``-x``, ``--maxfail``), when no interruption was recorded.
        """
        s = self.settings
        return {
            "settings": {"model": s.model, "data": s.data, "device": s.device, "seed": s.seed, "cache_dir": s.cache_dir,
                         "timeout_s": s.timeout, "batch_size": s.batch_size},
            "command_line": ["pytest", *self.command_line],  # what pytest was given (also via pytest.main)
            "invocation_dir": self.invocation_dir,
            "started": self.started, "finished": _now(), "suites": list(self.suites.values()), "deviations": self.deviations,
            "contexts": [*self.worker_contexts, *(c.provenance() for c in self.contexts.values())],
            "planned": self.planned, "deselected": self.deselected(), "collection_errors": self.collection_errors,
            "durations": self.durations, "xdist_workers": self.xdist_workers,
            "exit_status": int(exitstatus) if exitstatus is not None else None,
            "interruption": self.interruption or stopped,
            "shard": self._shard_record(),
        }

    def _shard_record(self) -> dict[str, Any] | None:
        from .shards import shard_record

        if self.shard is None:
            return None
        return shard_record(self.shard, self.collected, self.planned, self.settings.model, self.invocation_dir or ".")

    def mark_report_folder(self) -> None:
        """Replace whatever an earlier run left in the report folder with an INCOMPLETE placeholder, so a run that dies
        never leaves the previous decision in place. Raises OSError when the folder cannot be written."""
        from .report import mark_in_progress

        assert self.report_dir is not None
        mark_in_progress(self.report_dir, self.info())

    def finish(self, exitstatus: int, stopped: str | None = None) -> bool:
        """Assemble the report, decide, write the report folder and the perturbation figures (when asked for).

        Returns whether the run may exit 0 as far as the gate is concerned: False when the decision is not CLEARED or
        the evidence that was asked for could not be written.
        """
        from . import report as report_module

        info = self.info(exitstatus, stopped)
        try:
            report = report_module.build_report(list(self.results.values()), info)
        except Exception as exc:  # never end without a decision: say why the evidence could not be assembled
            report = report_module.build_report([], {**info, "interruption": f"the report could not be assembled ({type(exc).__name__}: {exc})"})
        ok = report["decision"]["status"] == "CLEARED"  # a gate run that did not check everything is not a pass
        if self.shard is not None:  # one part of a run: never CLEARED alone; the job passes when its own items leave nothing open
            from .decision import shard_ok, shard_record_decision

            ok = shard_ok(report["decision"])
            report["decision"] = shard_record_decision(report["decision"], info["shard"])
        self.report_decision = report["decision"]
        if self.report_dir is None:
            return ok
        html = self.report_dir / report_module.HTML_FILE
        try:  # always: the folder holds the placeholder written at start, which must not survive a finished run
            self.report_path = report_module.write_report(report, self.report_dir, sample_images=self.sample_images,
                                                        gallery_images=self.gallery_images)
            self.html_path = html
            if self.shard is not None:  # the merged report.html shows a sample grid too
                from .shards import save_samples

                save_samples(self.sample_images, self.report_dir)
        except Exception as exc:  # say which file failed; the run must not exit 0 without the evidence it was asked for
            failed = getattr(exc, "filename", None) or (html if (self.report_dir / report_module.REPORT_FILE).exists()
                                                        else self.report_dir / report_module.REPORT_FILE)
            self.report_error = f"{failed}: {type(exc).__name__}: {exc}"
            self.report_path = None
            ok = False
        if self.signals:  # asked to stop: end now (a CI runner kills the job a few seconds after its SIGTERM)
            self.figure_error = f"perturbation figures not drawn: {self.signals[0]} asked the run to stop"
        else:
            self._write_perturbation_figures()
        return ok

    def _write_perturbation_figures(self) -> None:
        """``perturbations-<data>.png`` in the report folder: every perturbation at every strength on one test slice of
        each dataset the run used, so a person can see what the sensitivity criteria did."""
        from .cache import DiskCache
        from .data import load_data
        from .memo import cached_file
        from .perturb.figure import perturbation_figure

        assert self.report_dir is not None
        # the data exactly as the criteria loaded it (the suite's data options included); under pytest-xdist the workers
        # loaded it, and the controller loads it again, from the cache, with the options they report
        loaders = {json.dumps([c.data_spec, c.settings.data_options], sort_keys=True): (lambda c=c: c.data)
                   for c in self.contexts.values() if c.data_loaded}
        for c in self.worker_contexts:
            if "data" in c:
                loaders.setdefault(json.dumps([c["data_spec"], c.get("data_options", {})], sort_keys=True),
                                   lambda c=c: load_data(c["data_spec"], DiskCache(self.settings.cache_dir), **c.get("data_options", {})))
        for key, load in sorted(loaders.items()):
            try:
                data = load()
                name = re.sub(r"[^A-Za-z0-9_.-]+", "-", data.name.removeprefix("builtin:")).strip("-")
                image, mask, seed, contrast = data.test.images[0], data.test.masks[0, 0], self.settings.seed, data.contrasts[0]
                self.figure_paths.append(cached_file(
                    DiskCache(self.settings.cache_dir), ("perturbation-figure", image, mask, seed, contrast),
                    self.report_dir / f"perturbations-{name}.png",
                    lambda out, image=image, mask=mask, seed=seed, contrast=contrast: perturbation_figure(image, mask, out, seed=seed,
                                                                                                       contrast=contrast)))
            except Exception as exc:  # a figure is an aid; the report is already written
                self.figure_error = f"perturbation figure for {json.loads(key)[0]} could not be drawn: {type(exc).__name__}: {exc}"

    # ------------------------------------------------------------------------------------------------------ terminal

    def summary_lines(self) -> list[tuple[str, dict[str, bool]]]:
        """The terminal summary: one line per result, what did not run, the decision and where the evidence is; each
        line with its markup (``{"red": True}``, ...). Empty when there is nothing to say."""
        if not (self.results or self.report_decision or self.report_error):
            return []
        results = sorted(self.results.values(), key=lambda r: r["item_id"])
        lines: list[tuple[str, dict[str, bool]]] = []
        if results:
            lines.append((f"{'verdict':<18} {'criterion':<32} {'measure':<10} value [95% CI] vs baseline  compared  (bounds)", {}))
        for r in results:
            verdict = r["verdict"] + (" (advisory)" if not r["gate"] and r["verdict"] in ("FAIL", "PASS") else "")
            markup = {"PASS": {"green": True}, "FAIL": {"red": True} if r["gate"] else {"yellow": True}, "ERROR": {"red": True}}
            lines.append((f"{verdict:<18} {r['item_id'].split('::')[-1]:<32} {r.get('metric', {}).get('name', ''):<10} {_result_text(r)}",
                          markup.get(r["verdict"], {"yellow": True})))
        d = self.report_decision or decision(results, not_run=self.not_run(), interruption=self.interruption,
                                             collection_errors=self.collection_errors, deselected=self.deselected())
        lines += [(f"{'NOT RUN':<18} {item_id.split('::')[-1]:<32}", {"yellow": True}) for item_id in d.get("not_run", [])]
        colour = {"CLEARED": {"green": True}, "NOT CLEARED": {"red": True}}.get(d["status"], {"yellow": True})
        lines.append((f"release decision: {d['status']}" + (f" (failing gates: {', '.join(d['failed_gating'])})" if d["failed_gating"] else ""),
                      {"bold": True, **colour}))
        if d["status"] == "INCOMPLETE":
            lines.append((f"  {d['summary']}", {}))
        if self.report_path:
            lines.append((f"report: {self.report_path}" + (f"  {self.html_path}" if self.html_path else ""), {}))
        if self.report_error:
            lines.append((f"the evidence report could not be written (exit status set to non-zero): {self.report_error}", {"red": True}))
        if self.figure_paths:
            lines.append((f"perturbation figure(s): {'  '.join(map(str, self.figure_paths))}", {}))
        if self.figure_error:
            lines.append((self.figure_error, {"yellow": True}))
        return lines


def _result_text(r: dict[str, Any]) -> str:
    """A result's value [CI], baseline, compared quantity and bounds; or the first line of its message."""
    if "value" not in r:
        return r.get("message", "").splitlines()[0][:100] if r.get("message") else ""
    v, b = r["value"], r.get("baseline")
    bounds = " ".join(f"{k} {x:.4g}" for k, x in r["bounds"].items() if x is not None)
    compared = r["threshold"]["relative"] if r["threshold"]["relative"] != "none" else "value"
    return (f"{v['value']:.4g} [{v['ci_low']:.4g}, {v['ci_high']:.4g}]" + (f" vs {b['value']:.4g}" if b else "")
            + f"  {compared} {r['checked']:.4g}  ({bounds})")
