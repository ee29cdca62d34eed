"""Where the data directories (``targets/``, ``kernels/``) live.

In a wheel they are installed as ``hwcomp/_data/<name>``; in a source checkout or an
editable install they are the repository's top-level folders.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the directory holding the shipped data folder ``name``."""
    installed = _PACKAGE_DIR / "_data" / name
    if installed.is_dir():
        return installed
    return _PACKAGE_DIR.parent / name


def kernels_path(*parts: str) -> Path:
    """Return a path inside the shipped ``kernels/`` folder."""
    return data_dir("kernels").joinpath(*parts)
