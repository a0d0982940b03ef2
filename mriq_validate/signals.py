"""SIGTERM and SIGINT stop a gate run the way Ctrl-C does, so that every stop still ends in a decision.

Python runs a signal handler in the main thread between two bytecode instructions, and an exception the handler
raises surfaces there (Python docs, ``signal``, "Execution of Python signal handlers"). :class:`StopSignals` turns
SIGTERM (what CI runners send on timeout or cancel) and SIGINT into :class:`SignalInterrupt`, a
:class:`KeyboardInterrupt` naming the signal, so that pytest's own keyboard-interrupt path runs: the model process is
stopped, the report says INCOMPLETE and why, the temp folders are removed and pytest exits with status 2. Only the
first signal is raised, and none once the run is finishing (:meth:`StopSignals.finishing`): later ones are noted, so a
second Ctrl-C cannot cut the report in half (pytest's own clean-up after an interrupt takes seconds); what runs then has
bounded waits instead. :func:`deferred` holds a stop back while a model process is started or stopped, so that neither
is left half done. :func:`run_child` passes a stop on to a child process (``track``).

Only the standard library is imported: the model process code (a low layer) uses :func:`deferred`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CHILD_GRACE_S = 60.0  # a stopped child gate run's time to write its INCOMPLETE report and stop its model process


class SignalInterrupt(KeyboardInterrupt):
    """The run was asked to stop by a signal; ``str()`` is the signal's name (``SIGTERM``, ``SIGINT``)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(signal.Signals(signum).name)


def signal_of(exc: KeyboardInterrupt) -> int:
    """The signal behind a KeyboardInterrupt: the one named by a :class:`SignalInterrupt`, else SIGINT (Ctrl-C)."""
    return exc.signum if isinstance(exc, SignalInterrupt) else int(signal.SIGINT)


class _Held:
    """Main-thread state of :func:`deferred`: how deep the blocks nest and the signal held back, if any."""

    depth = 0
    pending: int | None = None


_held = _Held()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold back a stop asked for by a signal (under :class:`StopSignals`) until the block ends, then raise it: starting
    or stopping a model process is never cut in half (which would leave the process or its temp folder behind)."""
    if threading.current_thread() is not threading.main_thread():  # handlers run in the main thread only
        yield
        return
    _held.depth += 1
    try:
        yield
    finally:
        _held.depth -= 1
        if _held.depth == 0 and _held.pending is not None:
            signum, _held.pending = _held.pending, None
            raise SignalInterrupt(signum)


class StopSignals:
    """While installed, the first SIGTERM or SIGINT raises :class:`SignalInterrupt` in the main thread (unless the run
    is finishing) after telling ``on_stop`` its name; ``received`` lists the names of all that arrived, in order."""

    def __init__(self, signums: Sequence[int] = STOP_SIGNALS, received: list[str] | None = None,
                 on_stop: Callable[[str], None] = lambda name: None) -> None:
        self.signums = tuple(signums)
        self.received = received if received is not None else []
        self.on_stop = on_stop
        self._finishing = False
        self._previous: dict[int, Any] = {}

    def install(self) -> bool:
        """Handle the signals from now on; only the main thread can (False elsewhere, e.g. a thread running pytest). A
        signal that is ignored stays ignored (a shell starts background jobs with SIGINT ignored; POSIX, "Shell
        Command Language", 2.11 Signals and Error Handling)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in self.signums:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def restore(self) -> None:
        """Put back the handlers found at :meth:`install`. What was printed is flushed first: a signal's default action
        ends the process without flushing (the decision printed to a pipe would be lost)."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def finishing(self) -> None:
        """From now on a signal is noted, not raised: the run is writing its decision and stopping."""
        self._finishing = True

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if self._finishing:
            # os.write, not print: a handler may run in the middle of a write to sys.stderr (reentrant call)
            os.write(2, f"\nmriq-validate: {name} received while the run is stopping; it stops within seconds\n".encode())
            return
        self._finishing = True
        self.on_stop(name)
        if _held.depth:
            _held.pending = signum
            return
        raise SignalInterrupt(signum)


def run_child(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, grace: float = CHILD_GRACE_S) -> int:
    """Run ``cmd`` and return its exit status. On a KeyboardInterrupt (SIGINT, or a signal raised as
    :class:`SignalInterrupt`) the same signal is passed on to the child (a ``kill`` of this process alone does not
    reach it), which gets ``grace`` seconds to write its report and stop before it is killed; then the interrupt is
    raised again."""
    process = None
    try:
        with deferred():  # a stop while the child starts is raised once it exists, so it is passed on
            process = subprocess.Popen(list(cmd), env=dict(env) if env is not None else None)
        return process.wait()
    except KeyboardInterrupt as exc:
        if process is None:
            raise
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal_of(exc))
        deadline = time.monotonic() + grace
        while process.returncode is None:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except KeyboardInterrupt:  # another signal: the child is already stopping, within the same bound
                continue
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        raise
