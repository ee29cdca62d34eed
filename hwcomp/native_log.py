"""Keep C/C++ libraries' stderr chatter out of hwcomp's one-line errors.

TVM (``BlockBuilder destroyed with remaining blocks!``, MetaSchedule's worker logs) and
onnxruntime write to file descriptor 2 from C++, past Python's ``sys.stderr``. The CLI points
descriptor 2 at a log file under the cache and gives Python a new ``sys.stderr`` on the
original terminal, so hwcomp's own messages, progress and errors reach the user and a
library's lines do not bury them. A failed command names the log in its error line when the
libraries wrote something; a successful one removes it. ``-v`` or ``HWCOMP_DEBUG=1`` leave
descriptor 2 alone.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from hwcomp.lower.library.runtime_libs import cache_dir

# Logs older than this are removed by the next run (a SIGKILLed run cannot remove its own).
_KEEP_S = 7 * 24 * 3600


class NativeLog:
    """Descriptor 2 redirected to ``path`` between :meth:`start` and :meth:`finish`."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._saved_fd: int | None = None

    def start(self) -> None:
        """Redirect descriptor 2 to a fresh log file (nothing happens where that fails)."""
        folder = cache_dir() / "logs"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _remove_old(folder)
            path = folder / f"native-{os.getpid()}.log"
            log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError:
            return  # a read-only home: libraries keep writing to the terminal
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        sys.stderr = open(self._saved_fd, "w", buffering=1, encoding=sys.stderr.encoding,  # noqa: SIM115
                          errors="backslashreplace", closefd=False)
        self.path = path

    def finish(self, failed: bool) -> str:
        """Restore descriptor 2; return the text to append to an error line (or "")."""
        if self.path is None or self._saved_fd is None:
            return ""
        sys.stderr.flush()
        os.dup2(self._saved_fd, 2)
        path, self.path = self.path, None
        try:
            written = path.stat().st_size
        except OSError:
            return ""
        if failed and written:
            return f" (library messages: {path})"
        path.unlink(missing_ok=True)
        return ""


def _remove_old(folder: Path) -> None:
    cutoff = time.time() - _KEEP_S
    for old in folder.glob("native-*.log"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            continue
