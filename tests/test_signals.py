"""SIGTERM and SIGINT at random moments of a real gate run: every stop ends in a decision.

Each case starts a small gate (one gating criterion; a user model file, so the model runs in its isolated child process,
sleeping in ``generate`` so that many signals land while it works) as ``python -m pytest`` in a session of its own,
waits until the run has marked its report folder (from then on the plugin handles the signals), sleeps a seeded random
delay and sends the signal: to the run's process group (what a terminal's Ctrl-C and ``timeout`` do) or to its main
process alone (what ``kill PID`` does). Then, every time:

* the run stops within :data:`STOP_BOUND_S` (no hang) with a non-zero exit status;
* the terminal summary prints ``release decision: INCOMPLETE`` with ``the run was interrupted (SIGNAL)``, and
  report.json is valid (:func:`~mriq_validate.report.validate_report`) and says the same (decision INCOMPLETE,
  ``run.interruption`` the signal's name); or, when the signal came once every criterion had run (pytest was finishing
  the session, or the handlers were already given back), the run's real decision: complete, printed and in
  report.json, with no interruption recorded, because nothing was left unchecked (the exit status is non-zero all
  the same);
* no ``mriq-model-*`` temp folder is left in TMPDIR (the test's own folder) and no scratch folder of the run's
  processes in the cache;
* no process of the run is alive: every descendant seen while it ran (found through /proc, so Linux only), the model
  process and pytest-xdist workers included.

Every case fails on the code before signal handling: SIGTERM killed the run without a decision, leaving the INCOMPLETE
"run in progress" placeholder and the ``mriq-model-*`` folder; SIGINT was reported as ``KeyboardInterrupt``, not by its
name; ``mriq-validate track`` died on SIGTERM and left its gate run and model process running.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mriq_validate.report import validate_report
from mriq_validate.signals import SignalInterrupt, StopSignals, deferred

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the run's processes through /proc (Linux)")

STOP_BOUND_S = 60.0  # a stop that takes longer is a hang (the bounded waits of the shutdown sum to well under this)
START_BOUND_S = 300.0  # from start to the report folder's placeholder (Python and plugin import on a busy machine)

SUITE = textwrap.dedent(
    """\
    mriq_suite:
      name: signals
      context_of_use: signal handling tests
      criteria:
        - id: IQA-PIQE
          requirement: PIQE on generated images is not worse than on real images by more than 3 SE
          rationale: test threshold
          metric: piqe
          threshold: {max: 3, relative: difference, unit: se}
    """
)

# a poor generator (the real decision is NOT CLEARED) that spends most of the run in generate, in the model process
MODEL = textwrap.dedent(
    """\
    import time
    import torch

    class Slow:
        def __init__(self, ctx):
            self.base = ctx.train_images.mean(0, keepdim=True) * 0.5

        def generate(self, masks, *, seed):
            time.sleep(0.4)
            g = torch.Generator().manual_seed(seed)
            return (self.base + torch.rand(masks.shape, generator=g) * 0.4 + (masks > 0) * 0.1).clamp(0, 1)

    def build(ctx):
        return Slow(ctx)
    """
)

GATE_ARGS = ("suite.yaml", "--mriq-model=slow_model.py:build", "--mriq-batch-size=16", "--mriq-device=cpu")
PYTEST_ARGS = ("-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:hypothesispytest")


@dataclass
class Stopped:
    """A run that was sent a signal (``signalled`` False: it had ended before the moment came)."""

    returncode: int
    output: str
    signalled: bool
    run_s: float  # from the report folder's placeholder to the end of the run
    processes: dict[int, str] = field(default_factory=dict)  # pid → start time (field 22 of /proc/PID/stat)
    left: dict[int, str] = field(default_factory=dict)  # pid → command line of those still running after the run ended


def _stat(pid: int) -> list[str] | None:
    """Fields 3 on (state, ppid, ...) of /proc/PID/stat, or None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def _tree(root: int) -> dict[int, str]:
    """The process ``root`` and its descendants, each with its start time (so a reused pid is not taken for it)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            starts[int(entry.name)] = fields[19]
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in starts and pid not in found:
            found[pid] = starts[pid]
            frontier += children.get(pid, [])
    return found


def _alive(pid: int, start: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[19] == start and fields[0] not in ("Z", "X")


def _stop(cmd: list[str], *, cwd: Path, env: dict[str, str], ready: Path, signum: int, delay: float, group: bool) -> Stopped:
    """Start ``cmd`` in a session of its own, wait for ``ready`` to exist, then ``delay`` seconds, send ``signum`` (to
    the process group or to the process) and wait for it to end, watching its processes all along."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    seen: dict[int, str] = {}

    def watch(until: float, stop_when_ready: bool = False) -> None:
        while proc.poll() is None and time.monotonic() < until and not (stop_when_ready and ready.exists()):
            seen.update(_tree(proc.pid))
            time.sleep(0.05)

    try:
        watch(time.monotonic() + START_BOUND_S, stop_when_ready=True)
        assert ready.exists() or proc.poll() is not None, f"{ready} did not appear within {START_BOUND_S:g} s"
        started = time.monotonic()
        watch(started + delay)
        signalled = proc.poll() is None
        sent = time.monotonic()
        if signalled:
            (os.killpg if group else os.kill)(proc.pid, signum)
        watch(sent + STOP_BOUND_S)
        hung, ended = proc.poll() is None, time.monotonic()
        left = _left_running(seen)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for pid in _left_running(seen, wait_s=0.0):  # not to leave them to the next test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        reader.join(30)
    output = b"".join(chunks).decode("utf-8", "replace")
    assert not hung, f"the run did not stop within {STOP_BOUND_S:g} s of {signal.Signals(signum).name}:\n{output[-4000:]}"
    return Stopped(proc.returncode, output, signalled, ended - started, seen, left)


def _left_running(processes: dict[int, str], wait_s: float = 2.0) -> dict[int, str]:
    """Those of ``processes`` still running after up to ``wait_s`` seconds (a process killed as the run ended may take a
    moment to go), with their command lines."""
    deadline = time.monotonic() + wait_s
    while (left := [p for p, start in processes.items() if _alive(p, start)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return {p: _cmdline(p) for p in left}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()[:300].replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return "(gone)"


def _check(stopped: Stopped, report_dir: Path, signame: str, tmp: Path, cache: Path) -> str:
    """The checks of the module docstring; returns how the run ended: ``interrupted`` or ``late`` (decided first)."""
    out = stopped.output
    assert stopped.returncode != 0, out[-4000:]
    assert not stopped.left, f"still running after the run ended: {stopped.left}"
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    validate_report(report)
    d = report["decision"]
    if report["run"]["interruption"] is not None:
        assert stopped.signalled and report["run"]["interruption"] == signame, (report["run"]["interruption"], out[-4000:])
        assert d["status"] == "INCOMPLETE" and f"the run was interrupted ({signame})" in d["summary"], d
        assert "release decision: INCOMPLETE" in out and f"the run was interrupted ({signame})" in out, out[-4000:]
        how = "interrupted"
    else:  # every criterion had run: the real decision, complete
        assert report["run"]["finished"] and d["complete"] and d["status"] == "NOT CLEARED", d
        assert "release decision: NOT CLEARED" in out, out[-4000:]
        how = "late"
    assert not list(tmp.glob("mriq-model-*")), sorted(tmp.iterdir())
    pids = {str(p) for p in stopped.processes}
    scratch = [f for f in (cache / "scratch").glob("*-*") if f.name.split("-")[0] in pids]
    assert not scratch, scratch
    return how


@pytest.fixture
def gate_dir(tmp_path: Path) -> Path:
    """A folder with the suite and the model file; also the runs' TMPDIR."""
    (tmp_path / "suite.yaml").write_text(SUITE)
    (tmp_path / "slow_model.py").write_text(MODEL)
    return tmp_path


def _env(tmp: Path, cache: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp), "MRIQ_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}


def _gate_cases(gate_dir: Path, cache: Path, moments: list[tuple[str, float, bool]], *extra: str) -> list[str]:
    """One run of the gate per (signal, delay, to the group?), each checked; how each ended."""
    hows = []
    for k, (signame, delay, group) in enumerate(moments):
        out = gate_dir / f"report-{k}"
        cmd = [sys.executable, "-m", "pytest", *PYTEST_ARGS, f"--mriq-cache={cache}", *GATE_ARGS, f"--mriq-report={out}", *extra]
        stopped = _stop(cmd, cwd=gate_dir, env=_env(gate_dir, cache), ready=out / "report.json", signum=SIGNALS[signame],
                        delay=delay, group=group)
        hows.append(_check(stopped, out, signame, gate_dir, cache))
    return hows


SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}


def _moments(seed: int, per_signal: int, span: float) -> list[tuple[str, float, bool]]:
    """``per_signal`` seeded random moments in [0, span) s for each signal, alternately to the group and to the process."""
    rng = random.Random(seed)
    return [(name, rng.uniform(0.0, span), k % 2 == 0) for k in range(per_signal) for name in SIGNALS]


@pytest.mark.heavy
def test_a_signal_while_the_model_works_ends_in_a_decision(gate_dir: Path, cache_dir: Path) -> None:
    hows = _gate_cases(gate_dir, cache_dir, _moments(seed=1, per_signal=2, span=6.0))
    assert hows == ["interrupted"] * 4, hows  # moments while the model loads and generates (the run goes on > 10 s)


@pytest.mark.heavy
def test_under_xdist_the_controller_decides_and_the_workers_stop(gate_dir: Path, cache_dir: Path) -> None:
    hows = _gate_cases(gate_dir, cache_dir, [("SIGTERM", 4.0, True), ("SIGINT", 7.0, True)], "-n", "2")
    assert hows == ["interrupted", "interrupted"], hows


@pytest.mark.heavy
def test_track_passes_the_signal_to_its_gate_run_and_exits_non_zero(gate_dir: Path, cache_dir: Path) -> None:
    (gate_dir / "gen-step100.pt").write_bytes(b"checkpoint")  # the model file does not read it
    for k, (signame, group) in enumerate((("SIGTERM", False), ("SIGINT", True))):  # kill PID; a terminal's Ctrl-C
        out = gate_dir / f"track-{k}"
        cmd = [sys.executable, "-m", "mriq_validate.cli", "track", "gen-step100.pt", "--suite", "suite.yaml",
               "--model", "slow_model.py:build", "--out", str(out),
               "--pytest-args", f"--mriq-cache={cache_dir} --mriq-batch-size=16 --mriq-device=cpu -p no:hypothesispytest"]
        stopped = _stop(cmd, cwd=gate_dir, env=_env(gate_dir, cache_dir), ready=out / "gen-step100" / "report.json",
                        signum=SIGNALS[signame], delay=4.0, group=group)
        assert _check(stopped, out / "gen-step100", signame, gate_dir, cache_dir) == "interrupted"
        assert stopped.returncode == 128 + SIGNALS[signame], stopped.output[-3000:]
        assert f"mriq-validate track: stopped by {signame}" in stopped.output


def test_only_the_first_signal_stops_the_run_and_a_held_one_waits_for_its_block() -> None:
    stops: list[str] = []
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignals(on_stop=stops.append)
    if not stop.install():
        pytest.skip("signal handlers can only be installed in the main thread")
    try:
        with pytest.raises(SignalInterrupt, match="^SIGTERM$"):
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)  # the run is stopping: noted, not raised (a second Ctrl-C loses nothing)
        assert stops == ["SIGTERM"] and stop.received == ["SIGTERM", "SIGINT"]
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) == before  # given back
    stop, done = StopSignals(), []
    stop.install()
    try:
        with pytest.raises(SignalInterrupt, match="^SIGINT$"):
            with deferred():  # as while a model process starts or stops
                signal.raise_signal(signal.SIGINT)
                done.append("the block went on")
        assert done == ["the block went on"]
    finally:
        stop.restore()


@pytest.mark.heavy
@pytest.mark.stress  # 41 gate runs: about 11 min on 2 busy cores (make test-stress; CI runs the quick cases above)
def test_stress_twenty_random_moments_per_signal(gate_dir: Path, cache_dir: Path) -> None:
    out = gate_dir / "whole"
    cmd = [sys.executable, "-m", "pytest", *PYTEST_ARGS, f"--mriq-cache={cache_dir}", *GATE_ARGS, f"--mriq-report={out}"]
    whole = _stop(cmd, cwd=gate_dir, env=_env(gate_dir, cache_dir), ready=out / "report.json", signum=signal.SIGTERM,
                  delay=START_BOUND_S, group=True)  # the moment never comes: the run's own duration, and its real decision
    assert not whole.signalled and whole.returncode == 1 and _check(whole, out, "SIGTERM", gate_dir, cache_dir) == "late"
    hows = _gate_cases(gate_dir, cache_dir, _moments(seed=20, per_signal=20, span=0.9 * whole.run_s))  # over the run
    assert hows.count("interrupted") >= 20, hows  # most moments fall before the decision (the figures and exit take a few s)
