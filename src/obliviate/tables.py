"""Plain-text tables for the terminal, Markdown and HTML tables for reports: one number format everywhere.

    python -c "from obliviate.tables import format_table; print(format_table([[1, 0.5]], ['a', 'b']))"

A top-level module (it imports nothing of obliviate), so erasure, commands and report all use it
without one layer importing another for it.
"""

from __future__ import annotations

from collections.abc import Sequence


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}" if abs(value) < 1 else f"{value:.4f}".rstrip("0").rstrip(".")
        return f"{value:.3e}"
    return str(value)


def format_table(rows: Sequence[Sequence], headers: Sequence[str], markdown: bool = False) -> str:
    """Align ``rows`` under ``headers``; ``markdown=True`` gives a GitHub-flavoured table."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if markdown:
        lines = [
            "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        ]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
        return "\n".join(lines)
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join(lines)


def format_html_table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    """An HTML ``<table>`` with the same number formatting as :func:`format_table` (cells escaped)."""
    from html import escape

    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
