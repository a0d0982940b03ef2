"""The model under test in a child process: a model that hangs, exits, crashes or runs out of memory cannot take
the gate down.

User code (``path/file.py:NAME``, ``package.module:NAME``, TorchScript files) is imported, built and called in a
fresh Python interpreter: fork and exec at once, as multiprocessing's "spawn" start method does, because forking a
process that holds torch's threads can deadlock the child (Python docs, multiprocessing, "Contexts and start
methods"). Unlike "spawn", the child does not re-import the parent's ``__main__`` (which would re-run a script that
calls ``pytest.main()`` without an ``if __name__ == "__main__"`` guard); its loop is :mod:`mriq_validate.model_process`.
The parent keeps an :class:`IsolatedModel`
with the model's ``generate`` / ``sample`` interface, so :class:`~mriq_validate.models.ModelAdapter` checks what
comes back exactly as for an in-process model. The builtin stand-ins (``builtin:NAME``) and folder models are this
tool's own code and stay in-process (provenance ``isolation: in-process``).

Every call, loading (import and factory) included, must return within ``timeout`` seconds (``--mriq-timeout``);
otherwise the child is killed. A call that does not return raises :class:`~mriq_validate.errors.ModelError`
naming the call and the cause: the timeout, ``sys.exit``, an exit code (``os._exit``, native code), a signal
(segmentation fault, the out-of-memory killer), an exception with its file:line, or memory exhaustion; the tail
of what the model printed is quoted (its stdout and stderr go to a log file, with Python's ``faulthandler`` stack
of a native crash). After a fatal failure every later call raises the same error, and the run goes on without the
model. The child runs in its own process group (a Ctrl-C or SIGTERM stops the run, which stops the child) and is
stopped, with whatever it started, by :meth:`IsolatedModel.close`, when the proxy is garbage-collected, at interpreter
exit, and (Linux, ``PR_SET_PDEATHSIG``) when the parent process dies: asked to close, then SIGTERM to its process
group, then SIGKILL, each wait bounded (:data:`CLOSE_GRACE_S`, :data:`TERM_GRACE_S`, :data:`REAP_S`). A call that a
stop interrupts is never resumed: its pipe may hold half a message.

Messages are pickled tuples over a socket pair (tensors are moved to the CPU first and pickled by value, never through
shared memory; volumes N×C×D×H×W travel the same way: 20 volumes 4×64×72×64, 90 MiB, in about 0.6 s); the
:class:`~mriq_validate.models.ModelContext` (training data, item shape (C, H, W) or (C, D, H, W), labels, contrasts)
travels as a ``torch.save`` file in the child's temp folder. POSIX only
(the child's end of the pipe is passed as a file descriptor). Only the standard library is imported at module
level: the plugin reads :data:`DEFAULT_TIMEOUT_S` at start-up.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import weakref
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelError
from .signals import deferred

if TYPE_CHECKING:
    from .contract import ModelContext

DEFAULT_TIMEOUT_S = 1800.0
STARTUP_S = 120.0  # the child's own start-up (interpreter, torch import): the tool's code, bounded separately
CLOSE_GRACE_S = 1.0  # after "close", the child's time to end by itself before its process group is terminated
TERM_GRACE_S = 1.0  # after SIGTERM, the process group's time to end before SIGKILL
REAP_S = 10.0  # after SIGKILL, the longest wait for the kernel to end the child (then the run goes on without waiting)
METHODS = ("generate", "sample")
LOG_TAIL_LINES = 15

# signal name → (what happened, hint); names, not numbers, so the table holds on every platform
_SIGNAL_CAUSES: dict[str, tuple[str, str]] = {
    "SIGSEGV": ("crashed with a segmentation fault", ""),
    "SIGBUS": ("crashed with a bus error", ""),
    "SIGILL": ("crashed on an illegal instruction", ""),
    "SIGFPE": ("crashed with a floating-point exception", ""),
    "SIGABRT": ("aborted", "; e.g. a failed assertion in native code"),
    "SIGKILL": ("was killed", "; e.g. by the out-of-memory killer"),
    "SIGTERM": ("was terminated", ""),
}


def death_cause(exitcode: int) -> str:
    """Why a process ended, from its return code (negative: the signal that ended it, as ``subprocess`` reports it)."""
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "a signal"
        what, hint = _SIGNAL_CAUSES.get(name, (f"was ended by {name}", ""))
        return f"{what} (signal {-exitcode}{hint})"
    return f"exited with code {exitcode} without returning (os._exit({exitcode}) or a crash in native code)"


def send_message(conn: Connection, message: tuple[Any, ...]) -> None:
    """Send one pickled message over the pipe (both sides of the model process use it)."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def to_cpu(value: Any) -> Any:
    """Tensors in ``value`` (also inside a tuple or list) moved to the CPU, so they pickle without CUDA or shared memory."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (tuple, list)):
        return type(value)(to_cpu(v) for v in value)
    return value


# ---------------------------------------------------------------- the parent

# the child: a fresh interpreter (fork + exec at once, like multiprocessing's "spawn", but without re-importing the
# parent's __main__, which re-runs a script that calls pytest.main() without an ``if __name__ == "__main__"`` guard)
_CHILD_CODE = "import json, sys; sys.path[:] = json.loads(sys.argv[1]); from mriq_validate.model_process import child_main; child_main(*map(int, sys.argv[2:]))"


def _wait_end(process: subprocess.Popen[bytes], sentinel: int | None, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for the child to end; with a pidfd without reaping it, so that its process group
    id cannot be reused meanwhile."""
    if sentinel is not None:
        wait([sentinel], timeout)
    else:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)


def _stop(process: subprocess.Popen[bytes], sentinel: int | None, grace: float = 0.0) -> None:
    """Give the child ``grace`` seconds to end by itself, then stop its process group (the child and whatever it
    started): SIGTERM, SIGKILL after :data:`TERM_GRACE_S`; then reap the child (no zombie). Every wait is bounded."""
    if grace:
        _wait_end(process, sentinel, grace)
    for sig, bound in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, REAP_S)):
        if process.returncode is not None:  # reaped: the group id may be another process's by now
            break
        with contextlib.suppress(OSError):
            os.killpg(process.pid, sig)
        _wait_end(process, sentinel, bound)
    with contextlib.suppress(subprocess.TimeoutExpired):  # a process stuck in the kernel cannot hold up the run
        process.wait(REAP_S)


def _shutdown(process: subprocess.Popen[bytes], conn: Connection, sentinel: int | None, folder: str, keep: list[bool]) -> None:
    """Stop the child (politely, then by force), close the pipe, remove the temp folder unless a failure quotes its log.
    A stop asked for by a signal waits until this is done (:func:`~mriq_validate.signals.deferred`). Holds no reference
    to the proxy (a finaliser)."""
    with deferred():
        try:
            polite = process.returncode is None and _writable(conn)
            if polite:  # an idle child ends at once on "close"; a busy one reads it only after its call
                with contextlib.suppress(OSError):
                    send_message(conn, ("close",))
            _stop(process, sentinel, grace=CLOSE_GRACE_S if polite else 0.0)
        finally:
            conn.close()
            if sentinel is not None:
                os.close(sentinel)
            if not keep[0]:
                shutil.rmtree(folder, ignore_errors=True)


def _writable(conn: Connection) -> bool:
    """Whether a short message can be sent at once (the pipe is not full of a request the child has not read)."""
    try:
        with selectors.DefaultSelector() as selector:  # not select.select: it refuses descriptors above FD_SETSIZE
            selector.register(conn.fileno(), selectors.EVENT_WRITE)
            return bool(selector.select(0.0))
    except (OSError, ValueError):  # closed
        return False


class IsolatedModel:
    """A user model served by a child process; ``generate`` / ``sample`` exist when the model has them.

    Each call raises :class:`ModelError` when the model raises, exits, crashes or does not return within
    ``timeout`` seconds; after a fatal failure (the child is gone) every call raises that failure again.
    """

    def __init__(self, kind: str, target: str, name: str, spec: str, ctx: ModelContext, timeout: float) -> None:
        import torch

        self.spec, self.timeout = spec, float(timeout)
        self.capabilities: list[str] = []
        self._failure: str | None = None
        self._keep_log = [False]
        self._close: weakref.finalize | None = None
        ctx_file = None
        try:
            with deferred():  # a stop asked for by a signal waits until the child and what stops it both exist
                self._start()
            ctx_file = Path(self._folder) / "context.pt"
            torch.save({"train_images": ctx.train_images, "train_masks": ctx.train_masks, "image_shape": list(ctx.image_shape),
                        "device": str(ctx.device), "seed": ctx.seed, "labels": dict(ctx.labels), "contrasts": list(ctx.contrasts),
                        "spacing_mm": list(ctx.spacing_mm)},
                       ctx_file)
            self._exchange(None, "start-up (Python and torch import)", max(self.timeout, STARTUP_S))
            label = "loading (torch.jit.load)" if kind == "torchscript" else f"loading (import and {name}(ctx))"
            self.capabilities = self._exchange(("load", label, kind, target, name, spec, str(ctx_file)), label, self.timeout)
        except BaseException:
            self.close()
            raise
        finally:
            if ctx_file is not None:
                ctx_file.unlink(missing_ok=True)

    def _start(self) -> None:
        """The temp folder, the pipe, the child and the finaliser that stops it and removes the folder; on failure nothing
        is left behind."""
        self._folder = tempfile.mkdtemp(prefix="mriq-model-")
        self.log = Path(self._folder) / "model.log"
        self._conn, child = Pipe()
        try:
            with open(self.log, "wb") as log:
                # own session and process group: a Ctrl-C in the terminal reaches only the run, which then stops the
                # child and whatever it started; stdout and stderr to the log, unbuffered (-u)
                self._process = subprocess.Popen(
                    [sys.executable, "-u", "-c", _CHILD_CODE, json.dumps(sys.path), str(child.fileno()), str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=(child.fileno(),), start_new_session=True)
        except BaseException:
            self._conn.close()
            shutil.rmtree(self._folder, ignore_errors=True)
            raise
        finally:
            child.close()
        self._sentinel = _pidfd(self._process.pid)
        # stopped on close(), garbage collection, or at interpreter exit
        self._close = weakref.finalize(self, _shutdown, self._process, self._conn, self._sentinel, self._folder, self._keep_log)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    def __getattr__(self, name: str) -> Any:
        # generate / sample exist only when the model in the child has them (ModelAdapter asks with getattr)
        if name in self.__dict__.get("capabilities", ()):
            return functools.partial(self.call, name)
        raise AttributeError(f"{type(self).__name__} for {self.__dict__.get('spec')} has no attribute {name!r}")

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``method(*args, **kwargs)`` on the model in the child, bounded by the timeout."""
        return self._exchange((method, f"{method}()", args, kwargs), f"{method}()", self.timeout)

    def close(self) -> None:
        """Stop the child and remove its temp folder (kept when an error message points at its log)."""
        if self._close is not None:
            self._close()
        self._failure = self._failure or f"model {self.spec}: the model was closed"

    def _exchange(self, request: tuple[Any, ...] | None, label: str, timeout: float) -> Any:
        """Send ``request`` (None: only wait for the start-up reply) and return the reply's value; ModelError otherwise."""
        if self._failure is not None:
            raise ModelError(f"{self._failure}\n  (the model process is no longer running; {label} was not attempted)")
        try:
            if request is not None:
                send_message(self._conn, request)
            ready = wait([self._conn] + ([self._sentinel] if self._sentinel is not None else []), timeout)
            reply = pickle.loads(self._conn.recv_bytes()) if self._conn.poll() else None
        except (EOFError, OSError):  # the child died before or while answering
            reply, ready = None, [self._sentinel]
        except KeyboardInterrupt:  # a stop (Ctrl-C, SIGTERM) mid-call: the pipe may hold half a message, so it is never
            self._failure = f"model {self.spec}: {label} was interrupted"  # read again (that read could wait for ever)
            self.close()
            raise
        if reply is not None and reply[0] == "ok":
            return reply[1]
        if reply is not None and reply[0] == "raised":  # the model raised; the child serves on
            raise ModelError(reply[1])
        _stop(self._process, self._sentinel, grace=5.0 if ready else 0.0)  # before reading what it printed last
        code = self._process.returncode
        if reply is not None:  # ("exit", code): sys.exit / SystemExit
            why = f"called sys.exit({reply[1]}) during {label}"
        elif not ready:
            why = f"{label} did not return within {timeout:g} s (--mriq-timeout); the model process was stopped"
        else:
            why = f"the model process {death_cause(code) if code is not None else 'stopped answering'} during {label}"
        tail = self._log_tail()
        self._keep_log[0] = bool(tail)  # the message points at the full log
        self._failure = f"model {self.spec}: {why}{tail}"
        self.close()
        raise ModelError(self._failure)

    def _log_tail(self) -> str:
        """The last lines the model printed (faulthandler's stack for a native crash), or nothing."""
        try:
            text = self.log.read_bytes()[-8000:].decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("Extension modules:")][-LOG_TAIL_LINES:]
        if not lines:
            return ""
        return f"\n  last lines the model printed (full log: {self.log}):\n" + "\n".join(f"    {ln}" for ln in lines)


def _pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when process ``pid`` ends (Linux 5.3+); None elsewhere (the pipe's
    end of file tells instead, unless a process the model started still holds it: then the timeout does)."""
    try:
        return os.pidfd_open(pid)  # type: ignore[attr-defined,no-any-return]
    except (AttributeError, OSError):
        return None
