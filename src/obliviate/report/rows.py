"""Table rows the report shows, and how a number is written in a cell.

:func:`group_table`: extraction and mean MA per probe group, before/after erasure; :func:`utility_rows`: each
utility score before/after with its change in the gate's units; ``_num``: the cell formatting every table uses.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from obliviate.metrics.sets import set_statistics
from obliviate.report import plots
from obliviate.report.collect import group_of, group_order


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def group_table(before: list[dict], after: list[dict] | None, meta: dict[str, dict]) -> list[list]:
    """Rows ``[group, n, extracted before, extracted after, mean MA before, mean MA after]`` by probe group.

    Groups are canaries by repetition count, members and controls (see
    :func:`~obliviate.report.collect.group_of`); ``after`` may be None (the after columns are then "–").
    """

    def by_group(rows):
        out = defaultdict(list)
        for r in rows or []:
            out[group_of(str(r["id"]), r.get("role"), meta)].append(r)
        return out

    b, a = by_group(before), by_group(after)
    table = []
    for g in group_order(list(b) + list(a)):
        rb, ra = b.get(g, []), a.get(g, [])
        n = len(rb) or len(ra)
        ext = [f"{sum(r['exact_extraction'] for r in rows)}/{len(rows)}" if rows else "–" for rows in (rb, ra)]
        ma = [_num(set_statistics(rows)["mean_memorization_accuracy"]) if rows else "–" for rows in (rb, ra)]
        table.append([g, n, ext[0], ext[1], ma[0], ma[1]])
    return table


def _flat(scores: dict | None) -> dict[str, float]:
    return plots._flat(scores)


def utility_rows(before: dict | None, after: dict | None, directions: dict[str, str] | None = None) -> list[list]:
    """``[benchmark/score, before, after, change]`` with the change in the gate's units.

    Args:
        before, after: ``{label: {score: value}}``.
        directions: ``{"label/score": "lower" | "higher"}`` as a run recorded them
            (:func:`~obliviate.report.collect.score_directions`); scores missing there are looked up in what
            the registered benchmarks declare (:func:`~obliviate.report.plots.lower_is_better`).
    """
    b, a = _flat(before), _flat(after)
    rows = []
    for key in sorted(set(b) | set(a)):
        vb, va = b.get(key), a.get(key)
        change = "–"
        if vb is not None and va is not None:
            lower = plots.lower_is_better(key, directions)
            if lower and vb == 0:  # a score that starts at 0 (KL to the original): no relative change exists
                change = f"{va - vb:+.4g} abs."
            else:
                delta = plots.utility_change(va, vb, lower)
                change = f"{delta:+.2f}% rel." if lower else f"{delta:+.2f} points"
        rows.append([key, _num(vb, 4), _num(va, 4), change])
    return rows


__all__ = ["group_table", "utility_rows"]
