"""Ctrl-C and SIGTERM as a request to stop, honoured only where stopping is safe.

Python's default turns SIGINT into ``KeyboardInterrupt`` wherever the main thread happens to
be: inside an import, a storage transaction, MLflow's schema migration. The traceback reaches
the terminal and the half-done step may leave a store damaged. Here a signal only records a
request to stop; it becomes a ``KeyboardInterrupt``

- at once inside :func:`interruptible` regions (training, data generation: code that writes
  nothing, or writes only through temporary files that are renamed into place);
- at the next :func:`checkpoint` otherwise (between start-up phases, between trials, in poll
  loops);
- never inside :func:`protected` regions (a trial's storage and tracking writes), which hold
  it until they end.

A third signal while a stop is pending ends the process at once, for a program stuck outside
any checkpoint. That is safe for the stores: every SQLite write is a transaction, and new
SQLite stores are built under a temporary name and linked into place (see ``storage``).

Only the standard library is imported here: ``signtune.__main__`` installs the handlers before
anything slow is imported, and worker processes before they import torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Literal

Reason = Literal["interrupted", "supervisor_gone"]

# Exit codes of an interrupted command: 128 + the signal's number, as shells report them.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
FORCE_AFTER = 3  # the third signal while a stop is pending ends the process at once


class _State:
    installed = False
    signum: int | None = None  # the first signal received; None while no stop is requested
    reason: Reason = "interrupted"
    count = 0
    open = 0  # depth of interruptible() regions
    held = 0  # depth of protected() regions


_state = _State()


def install(*, child: bool = False) -> None:
    """Handle SIGINT and SIGTERM as stop requests in this process (main thread only).

    A command started with SIGINT ignored (a background job, ``nohup``) keeps ignoring it, as
    its user asked; SIGTERM is always handled. A ``child`` (a worker started inside
    :func:`children_ignore_sigint`) takes SIGINT back once it is ready to handle it.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if child or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    _state.installed = True


def _handler(signum: int, frame: object) -> None:
    _state.count += 1
    if _state.signum is None:
        _state.signum = signum
    if _state.count >= FORCE_AFTER:
        os.write(2, b"\nStopped at once (third interrupt). Run the same command again to resume.\n")
        os._exit(exit_code())
    if _state.open > 0 and _state.held == 0:
        raise KeyboardInterrupt


def request(reason: Reason = "interrupted") -> None:
    """Ask this process to stop, from any thread (e.g. a watcher that saw the supervisor die).

    The request reaches the main thread as a SIGTERM, so it is honoured exactly like one.
    """
    if _state.signum is None:
        _state.reason = reason
    if _state.installed:
        main = threading.main_thread().ident
        if main is not None:
            signal.pthread_kill(main, signal.SIGTERM)
            return
    _state.signum = _state.signum or signal.SIGTERM


def pending() -> bool:
    """Whether a stop was requested."""
    return _state.signum is not None


def reason() -> Reason:
    """Why this process is stopping: ``interrupted`` (a signal) or ``supervisor_gone``."""
    return _state.reason


def exit_code() -> int:
    """130 after SIGINT, 143 after SIGTERM (0 when no stop was requested)."""
    if _state.signum is None:
        return 0
    return EXIT_CODES.get(signal.Signals(_state.signum), 128 + int(_state.signum))


def checkpoint() -> None:
    """Raise ``KeyboardInterrupt`` here if a stop is pending (and no protected region holds it)."""
    if _state.signum is not None and _state.held == 0:
        raise KeyboardInterrupt


def sleep(seconds: float, step: float = 0.05) -> None:
    """``time.sleep`` that ends early, raising ``KeyboardInterrupt``, when a stop is requested."""
    end = time.monotonic() + seconds
    while True:
        checkpoint()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(step, left))


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """A region a signal may interrupt at once (nothing in it leaves a store half-written)."""
    checkpoint()
    _state.open += 1
    try:
        yield
    finally:
        _state.open -= 1


@contextlib.contextmanager
def protected() -> Iterator[None]:
    """A region a signal never interrupts; a stop requested meanwhile is raised when it ends,
    if the region sits inside an interruptible one (otherwise at the next checkpoint)."""
    _state.held += 1
    try:
        yield
    finally:
        _state.held -= 1
    if _state.open > 0 and _state.held == 0:
        checkpoint()


@contextlib.contextmanager
def children_ignore_sigint() -> Iterator[None]:
    """Start child processes inside this: they begin with SIGINT ignored, so a Ctrl-C from the
    terminal cannot land in their start-up (imports, unpickling) before they install their own
    handlers (``install(child=True)``). The supervisor forwards the stop to them instead.

    SIGINT is blocked in this process meanwhile, so a Ctrl-C in that instant stays pending here
    (Linux keeps a blocked signal pending even while it is ignored) and is handled on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def ignore_from_now() -> None:
    """Ignore SIGINT and SIGTERM for the rest of this process (its work is done, it is exiting).

    Python's shutdown puts the default action back on every signal it handles, so a Ctrl-C in
    the last instant of a finished command would kill it with -SIGINT instead of a clean exit;
    an ignored signal is left ignored.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def uninstall() -> None:
    """Give SIGINT and SIGTERM back their default handling (tests)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _state.installed = False
    reset()


def reset() -> None:
    """Forget a pending stop (tests, and a process that handled one and goes on)."""
    _state.signum = None
    _state.reason = "interrupted"
    _state.count = 0
