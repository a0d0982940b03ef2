"""The model process: the child side of :mod:`mriq_validate.isolation`, started as a fresh interpreter by
:class:`~mriq_validate.isolation.IsolatedModel`. It loads the user's model and answers ``generate`` / ``sample`` calls
over the pipe until the parent closes it or goes away. Kept apart from the parent side so that imports run one way
(model_process → models → isolation).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

from .errors import ModelError
from .isolation import METHODS, send_message, to_cpu
from .models import ModelContext, build_user_model, describe_raise


def _isolate_child(parent: int) -> None:
    """A native crash's Python stack into the log; death with the parent (Linux)."""
    import faulthandler

    faulthandler.enable()
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the parent
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def child_main(fd: int, parent: int) -> None:
    """The child's loop: load the model, then answer calls until ``close`` or the parent goes away."""
    _isolate_child(parent)
    conn = Connection(fd)
    import torch

    send_message(conn, ("ok", None))  # started
    model, spec = None, "?"
    while True:
        try:
            request = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the parent is gone
            return
        op, what = request[0], request[1] if len(request) > 1 else ""
        if op == "close":
            return
        try:
            if op == "load":
                kind, target, name, spec, ctx_file = request[2:]
                saved = torch.load(ctx_file, weights_only=True)
                ctx = ModelContext(**{**saved, "device": torch.device(saved["device"]), "image_shape": tuple(saved["image_shape"]),
                                      "contrasts": tuple(saved["contrasts"]), "spacing_mm": tuple(saved["spacing_mm"])})
                model = build_user_model(kind, target, name, spec, ctx)
                reply: tuple[Any, ...] = ("ok", [m for m in METHODS if callable(getattr(model, m, None))])
            else:
                args, kwargs = request[2:]
                reply = ("ok", to_cpu(getattr(model, op)(*args, **kwargs)))
        except ModelError as exc:
            reply = ("raised", str(exc))
        except SystemExit as exc:
            send_message(conn, ("exit", repr(exc.code)))
            return
        except BaseException as exc:  # noqa: BLE001  the model's exception, reported with its file:line
            reply = ("raised", describe_raise(spec, what, exc))
        try:
            send_message(conn, reply)
        except Exception as exc:  # noqa: BLE001  e.g. an object that cannot be pickled
            send_message(conn, ("raised", f"model {spec}: {what} returned a {type(reply[1]).__name__} that cannot be sent back "
                                   f"from the model process ({type(exc).__name__}: {exc}); expected a torch.Tensor"))
