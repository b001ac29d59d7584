"""The generated pages' text, from the Jinja2 templates under ``bench/templates/``.

Prose lives in the templates; the scripts compute the numbers and the tables and hand
them in. Templates are plain Markdown with ``{{ name }}`` where a value goes.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).with_name("templates")


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                              keep_trailing_newline=True, undefined=jinja2.StrictUndefined,
                              autoescape=False)


def text(name: str, **values: Any) -> str:
    """Template ``name`` (relative to ``bench/templates/``) with ``values`` filled in."""
    return _environment().get_template(name).render(**values)


def lines(name: str, **values: Any) -> list[str]:
    """:func:`text` as lines, to splice into a page built as a list of lines."""
    return text(name, **values).split("\n")


def joined(block: list[str]) -> str:
    """A block of lines as the text a page template places on its own lines."""
    return "\n".join(block)
