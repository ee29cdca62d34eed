"""Rendering of the text templates kept under ``kernels/`` (CMake, READMEs, C sources).

Templates use ``@name`` / ``@{name}`` placeholders so that CMake's and C's own ``${...}``
syntax passes through untouched.
"""

from __future__ import annotations

import string
from pathlib import Path

from hwcomp.resources import kernels_path


class _AtTemplate(string.Template):
    delimiter = "@"


def render(relative: str, **values: object) -> str:
    """Render ``kernels/<relative>`` with ``values``; a missing value is an error."""
    text = kernels_path(*relative.split("/")).read_text()
    return _AtTemplate(text).substitute({k: str(v) for k, v in values.items()})


def render_to(relative: str, dest: Path, **values: object) -> None:
    """Render a template into ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(render(relative, **values))
