"""The report's document model and its two renderings.

A report is a list of :class:`Section` (title, text, optional PNG, tables, bullets); :func:`render_markdown`
writes ``report.md`` (linking the PNGs), :func:`render_html` a self-contained ``report.html`` (PNGs embedded
as base64, inline CSS, backticks rendered as ``<code>``).
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from obliviate.tables import format_html_table, format_table


@dataclass
class Section:
    title: str
    text: str
    image: Path | None = None
    tables: list[tuple[str, list[str], list[list]]] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)


def render_markdown(sections: list[Section], title: str, base: Path) -> str:
    parts = [f"# {title}\n"]
    for s in sections:
        parts.append(f"## {s.title}\n\n{s.text}\n")
        if s.bullets:
            parts.append("".join(f"- {b}\n" for b in s.bullets))
        if s.image:
            parts.append(f"![{s.title}]({os.path.relpath(s.image, base)})\n")
        for caption, headers, rows in s.tables:
            parts.append(f"**{caption}**\n\n{format_table(rows, headers, markdown=True)}\n")
    return "\n".join(parts)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #ddd}h2{margin-top:2em;border-bottom:1px solid #eee}
img{max-width:100%;border:1px solid #eee}table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}
code{background:#f3f3f3;padding:0 3px}.caption{font-weight:600;margin-top:.8em}"""


def _inline_code(text: str) -> str:
    parts = html.escape(text, quote=False).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(sections: list[Section], title: str) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2><p>{_inline_code(s.text)}</p>")
        if s.bullets:
            parts.append("<ul>" + "".join(f"<li>{_inline_code(b)}</li>" for b in s.bullets) + "</ul>")
        if s.image:
            data = base64.b64encode(Path(s.image).read_bytes()).decode("ascii")
            parts.append(f"<img alt='{html.escape(s.title)}' src='data:image/png;base64,{data}'>")
        for caption, headers, rows in s.tables:
            parts.append(f"<div class='caption'>{html.escape(caption)}</div>{format_html_table(rows, headers)}")
    parts.append("</body></html>")
    return "\n".join(parts)


__all__ = ["Section", "render_html", "render_markdown"]
