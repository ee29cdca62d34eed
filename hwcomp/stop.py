"""A stop asked by a signal, remembered so that no layer can swallow it.

SIGINT/SIGTERM raise ``KeyboardInterrupt`` in the main thread, but a signal that arrives
while TVM calls back into Python (a DLight rule, a pass) comes back out of TVM as its own
``RuntimeError``, which a fallback (:class:`hwcomp.lower.cpu.rules.base.SafeRule`) may take for
"this rule does not apply" and carry on: a build then finished with exit 0 after SIGTERM.
The CLI's handlers record the signal here; fallbacks and the last step before a bundle is
committed call :func:`raise_if_requested`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import NoReturn

import psutil

_REQUESTED: list[int] = []
_WRITTEN: list[str] = []  # outputs committed before a stop: the stop message names them


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C (staging removed) but reported with exit 143."""


def request(signum: int) -> None:
    """Remember that ``signum`` asked this process to stop."""
    if signum not in _REQUESTED:
        _REQUESTED.append(signum)


_DEFERRED = [0]  # depth of deferred() blocks
REDELIVER_S = 0.05  # a stop that arrived inside an import is sent again after this long


def handle(signum: int, frame: FrameType | None) -> None:
    """Remember the stop and unwind with it (the CLI's SIGINT / SIGTERM handler), where safe.

    Not safe inside an import: a module's top level can run inside a native extension's
    call (tvm_ffi imports torch, whose pybind11 initialisation calls back into Python), and
    a ``KeyboardInterrupt`` raised there ends in ``std::terminate``: exit -6, no message.
    There the stop is remembered and the signal sent again every :data:`REDELIVER_S`
    until it lands outside every import. Inside a :func:`deferred` block it is remembered
    and raised when the block ends.
    """
    request(signum)
    if _DEFERRED[0]:
        return
    if _importing(frame):
        timer = threading.Timer(REDELIVER_S, os.kill, args=(os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
    raise cause()


@contextmanager
def deferred() -> Iterator[None]:
    """Hold a stop until the block ends (a step that must not be left half done)."""
    _DEFERRED[0] += 1
    try:
        yield
    finally:
        _DEFERRED[0] -= 1
    if not _DEFERRED[0]:
        raise_if_requested()


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def requested() -> bool:
    """Tell whether a signal asked this process to stop."""
    return bool(_REQUESTED)


def cause() -> KeyboardInterrupt:
    """Return the exception a requested stop unwinds with (:class:`Terminated` for SIGTERM)."""
    return Terminated() if signal.SIGTERM in _REQUESTED else KeyboardInterrupt()


def exit_code() -> int:
    """Return the exit status of a requested stop: 143 for SIGTERM, else 130."""
    return 128 + (signal.SIGTERM if signal.SIGTERM in _REQUESTED else signal.SIGINT)


def mark_written(path: str) -> None:
    """Remember that ``path`` is complete (committed), for the message of a later stop."""
    _WRITTEN.append(path)


def written() -> list[str]:
    """Return the outputs committed so far in this process."""
    return list(_WRITTEN)


def raise_if_requested() -> None:
    """Raise the stop's exception when a signal asked to stop; else nothing."""
    if _REQUESTED:
        raise cause()


def die_with_parent() -> None:
    """In a worker process (TVM's tuning builders and runners): die when the parent dies.

    A tuning run killed with SIGKILL cannot stop its workers; Linux's ``PR_SET_PDEATHSIG``
    has the kernel send them SIGKILL when the parent goes. Elsewhere this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the call took effect
        os._exit(1)


def end_process(code: int) -> NoReturn:
    """Exit ``code`` at once after a signal: stop child processes, skip interpreter teardown.

    Everything the run wrote is already removed or committed when this runs; tearing the
    interpreter down instead printed ``cannot join current thread`` from TVM's worker pools.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    children = psutil.Process().children(recursive=True)
    for child in children:
        with suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=2)  # reap them: no zombies left behind either
    os._exit(code)


_PR_SET_PDEATHSIG = 1
