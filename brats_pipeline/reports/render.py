"""The Jinja2 environment of the reports, image sources, and atomic HTML writes."""

from __future__ import annotations

import base64
import functools
import math
import os
import urllib.parse
from pathlib import Path
from typing import Any

#: MIME types of the images a report embeds, by file suffix.
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml", ".gif": "image/gif"}


def number(value: Any, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; ``–`` for ``None``, NaN or infinity (the ``num`` filter of the templates)."""
    if value is None:
        return "–"
    value = float(value)
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


@functools.lru_cache(maxsize=1)
def environment() -> Any:
    """The reports' ``jinja2.Environment``: templates from this package, autoescaping on, undefined names are errors."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("brats_pipeline.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = number
    return env


def render_template(name: str, **context: Any) -> str:
    """Render the template ``name`` (e.g. ``"evaluation.html.j2"``) with ``context``."""
    return environment().get_template(name).render(**context)


def write_html(path: str | os.PathLike, name: str, **context: Any) -> Path:
    """Render the template ``name`` and write it to ``path`` atomically; returns ``path``."""
    from preprocessing.io import atomic_path

    text = render_template(name, **context)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def image_src(path: str | os.PathLike, report_dir: str | os.PathLike, embed: bool = False) -> str:
    """The ``src`` of an image in a report written to ``report_dir``.

    Args:
        path: the image file.
        report_dir: the folder of the HTML file.
        embed: a ``data:`` URI of the file's bytes (one self-contained HTML file) instead of a link.

    Returns:
        The data URI, or the path relative to ``report_dir`` with ``/`` separators, URL-quoted
        (a ``#``, ``%``, ``?`` or space in a file name still finds the file).
    """
    path = Path(path)
    if embed:
        mime = IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return urllib.parse.quote(os.path.relpath(path, report_dir).replace(os.sep, "/"))


def image(path: str | os.PathLike, report_dir: str | os.PathLike, embed: bool = False, alt: str = "",
          caption: str | None = None) -> dict[str, str | None]:
    """``{"src", "alt", "caption"}`` of an image, for the ``figure`` and ``images`` macros."""
    return {"src": image_src(path, report_dir, embed), "alt": alt or Path(path).stem, "caption": caption}
