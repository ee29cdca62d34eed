"""Bundle writing: everything goes to a staging folder renamed into place at the end.

An error or Ctrl-C while building leaves nothing at the output path: the staging folder
is a hidden sibling of the output and is removed on any failure. An existing bundle is
only replaced with ``force``; it is moved aside, the new one moved in, then the old one
deleted, so the output path never holds a half-written bundle.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

from hwcomp import stop
from hwcomp.errors import OutputExistsError

logger = logging.getLogger(__name__)


def check_output(path: Path, force: bool) -> None:
    """Refuse an existing output path unless ``force``."""
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to replace it")


@contextmanager
def staged_output(path: Path, force: bool) -> Iterator[Path]:
    """Yield a staging folder that becomes ``path`` when the block finishes without error."""
    check_output(path, force)
    created = _missing_parents(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".partial",
                                    dir=path.parent))
    staging.chmod(0o755)
    done = False
    try:
        yield staging
        stop.raise_if_requested()  # a signal a library swallowed still stops the commit
        check_output(path, force)
        if path.exists():
            old = staging.with_suffix(".old")
            path.rename(old)
            staging.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(path)
        done = True
        stop.mark_written(str(path))
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if not done:  # the -o folder this run created for the bundle goes too
            for folder in created:
                with suppress(OSError):
                    folder.rmdir()  # only while empty


def _missing_parents(folder: Path) -> list[Path]:
    """Return the folders ``mkdir(parents=True)`` would create for ``folder``, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_stale_staging(path: Path) -> list[Path]:
    """Remove staging folders of ``path`` left by runs that were killed; return them.

    A staging folder is named ``.<name>.<pid>.<random>.partial`` (``.old`` while a bundle is
    replaced). One whose process no longer runs is stale; one of another live process (a
    concurrent build of the same output) is left alone. Folders without a pid (older
    hwcomp) are stale when older than this process.
    """
    removed = []
    started = psutil.Process().create_time()
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if not candidate.is_dir() or candidate.suffix not in (".partial", ".old"):
            continue
        parts = candidate.name[len(path.name) + 2:].split(".")
        pid = int(parts[0]) if len(parts) > 2 and parts[0].isdigit() else None
        if pid is not None:
            stale = pid != os.getpid() and not psutil.pid_exists(pid)
        else:
            stale = candidate.stat().st_mtime < started
        if stale:
            logger.warning("removing %s, left by a run that was killed", candidate)
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def file_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, keyed by relative path."""
    hashes = {}
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        hashes[str(file.relative_to(root))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes
