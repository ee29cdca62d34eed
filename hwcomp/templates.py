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


def render_source(relative: str, **values: object) -> str:
    """Render the Jinja2 template ``kernels/<relative>`` (C sources that need loops).

    Undefined names are errors; blocks leave no blank lines behind.
    """
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(kernels_path())),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True, autoescape=False,
    )
    return environment.get_template(relative).render(**values)
