"""Stop signals take Ctrl-C's path.

SIGTERM (what ``timeout``, Slurm, Kubernetes and ``ray job stop`` send) and SIGHUP (a closed
terminal) are handed to whatever handles SIGINT at that moment: Python's KeyboardInterrupt in
``aepg train`` (the run is marked KILLED, its checkpoint kept) or Ray Tune's graceful stop in a
sweep (its state saved, every trial stopped). The exit status says which signal it was.

A stop signal may be followed by SIGKILL within seconds (``ray job stop`` waits 3 s, Kubernetes
its grace period): what must not wait for the graceful stop (a sweep closing its MLflow runs and
saying how to resume) is registered with ``on_stop`` and runs at once, in a thread of its own.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []
_installed = False
_on_stop: list[Callable[[], None]] = []
_stop_done = threading.Event()


def on_stop(action: Callable[[], None]) -> None:
    """Run ``action`` at the first stop signal, at once and beside the graceful stop."""
    _on_stop.append(action)


def signalled() -> bool:
    """Whether a stop signal (not Ctrl-C) came."""
    return bool(_received)


def stop_handled() -> bool:
    """Whether the ``on_stop`` actions ran to their end."""
    return _stop_done.is_set()


def _run_on_stop() -> None:
    for action in list(_on_stop):
        action()
    _stop_done.set()


def _forward(signum: int, frame) -> None:
    _received.append(signum)
    if len(_received) == 1 and _on_stop:
        threading.Thread(target=_run_on_stop, name="aepg-stop", daemon=True).start()
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored (a job started with `&`) or at its default: still stop, as Ctrl-C would
        raise KeyboardInterrupt


_deferring: list[bool] = []


@contextmanager
def deferred():
    """Ctrl-C and the stop signals take effect at the block's end, not inside it: a write to a SQLite
    MLflow store cut half-way would leave the store locked by its own transaction, and the run's
    closing write would then fail. Only on the main thread, where Python raises KeyboardInterrupt,
    and only where SIGINT has a handler."""
    previous = signal.getsignal(signal.SIGINT)
    if _deferring or not callable(previous) or threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()
        signal.signal(signal.SIGINT, previous)
        if caught:
            previous(signal.SIGINT, caught[0])


def install() -> None:
    """Route SIGTERM and SIGHUP to the SIGINT handler (main thread only, as Python requires)."""
    global _installed
    _received.clear()
    _on_stop.clear()
    _stop_done.clear()
    _installed = True
    restore()


def restore() -> None:
    """Put the routing back after a library replaced it: ``ray.init`` installs a SIGTERM handler in
    its core worker that prints a stack and aborts. Only where ``install`` ran (the command line),
    on the main thread."""
    import threading

    if _installed and threading.current_thread() is threading.main_thread():
        for stop in STOP_SIGNALS:
            signal.signal(stop, _forward)


def reason() -> str:
    """Why the process is stopping, for a run's status message."""
    return f"stopped by {signal.Signals(_received[-1]).name}" if _received else "interrupted (Ctrl-C)"


def exit_code() -> int:
    """128 + the signal's number, the shell's convention: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + (_received[-1] if _received else signal.SIGINT)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or a stop signal, already marked KILLED; ``--resume run_id`` continues it."""

    def __init__(self, run_id: str):
        super().__init__(run_id)
        self.run_id = run_id
