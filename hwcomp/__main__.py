"""``python -m hwcomp`` and the ``hwcomp`` command: signals handled from the first moment.

Importing :mod:`hwcomp.cli` loads TVM and onnxruntime, which takes seconds. A Ctrl-C or
SIGTERM in that time used to print a ``KeyboardInterrupt`` traceback from inside an import
or end silently with -15; nothing has been written then, so it ends at once with the
documented exit code (130 / 143) and one line. :func:`hwcomp.cli.main` takes over the
signals as soon as the import is done.
"""

from __future__ import annotations

import os
import signal
import threading


def _stopped_while_starting(signum: int, frame: object) -> None:
    word = "terminated" if signum == signal.SIGTERM else "interrupted"
    os.write(2, f"hwcomp: {word}; nothing was written\n".encode())
    os._exit(128 + signum)  # nothing to clean up yet; unwinding an import prints a traceback


if threading.current_thread() is threading.main_thread():
    for _signal in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(_signal) is not signal.SIG_IGN:  # nohup / background jobs: kept
            signal.signal(_signal, _stopped_while_starting)

from hwcomp.cli import main  # noqa: E402 - after the handlers: this import takes seconds

__all__ = ["main"]

if __name__ == "__main__":
    main()
