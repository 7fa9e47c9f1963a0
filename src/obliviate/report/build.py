"""Build ``report.md`` and a self-contained ``report.html`` (plots embedded) for a run directory.

    obliviate report runs/demo        # or: python -m obliviate.cli report runs/demo

Every section appears only when its inputs exist, so the same code reports a `track` run, an
`erase` run, a `score` directory or the whole demo.
"""

from __future__ import annotations

import base64
import html
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from obliviate import __version__
from obliviate.metrics.sets import set_statistics
from obliviate.report import plots
from obliviate.report.collect import (
    RunDirError,
    RunFiles,
    collect_run,
    group_of,
    group_order,
    score_directions,
)
from obliviate.tables import format_html_table, format_table


@dataclass
class Section:
    title: str
    text: str
    image: Path | None = None
    tables: list[tuple[str, list[str], list[list]]] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)


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
            delta = plots.utility_change(va, vb, lower)
            change = f"{delta:+.2f}% rel." if lower else f"{delta:+.2f} points"
        rows.append([key, _num(vb, 4), _num(va, 4), change])
    return rows


def _shown(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _last_step(history: list[dict]) -> list[dict]:
    steps = [r["step"] for r in history if "step" in r]
    return [r for r in history if r.get("step") == max(steps)] if steps else []


def build_sections(files: RunFiles, plots_dir: Path) -> list[Section]:
    """Every section whose inputs exist in ``files``; PNGs are written to ``plots_dir``."""
    sections: list[Section] = []
    meta = files.probe_meta
    inputs = [[name, _shown(path, files.run_dir)] for name, path in sorted(files.found.items())]
    bullets = _summary(files)
    if bullets:
        sections.append(
            Section("Summary", "What this run found and did, in numbers; the sections below show how.", bullets=bullets)
        )
    sections.append(
        Section(
            "Run",
            f"Report on `{files.run_dir}`, written by obliviate {__version__} on {time.strftime('%Y-%m-%d %H:%M')}. "
            "Each section below appears only when the run wrote its inputs.",
            tables=[("Inputs found", ["input", "file"], inputs)],
        )
    )

    if files.history:
        img = plots.plot_memorization_over_training(files.history, meta, files.flagged, plots_dir / "memorization.png")
        if img:
            sections.append(
                Section(
                    "Memorization during training",
                    "Every probe was scored at each tracking step. Left: memorization accuracy (MA), the share of suffix "
                    "tokens the model predicts exactly. Right: the share of each group that greedy decoding reproduces "
                    "in full. Canaries are grouped by how many times they appeared in the training data: the more "
                    "repetitions, the sooner and more completely they are memorized, while never-trained controls stay "
                    'flat (they show what "not memorized" looks like for this model). Dotted lines mark steps where '
                    "the callback flagged sequences.",
                    img,
                )
            )

    if files.flagged:
        rows = []
        for f in files.flagged[:60]:
            m = f.get("metrics") or {}
            reps = (meta.get(str(f["id"])) or {}).get("repetitions", "–")
            ep = m.get("extraction_probability", m.get("extraction_probability@100"))
            rows.append(
                [
                    f["id"],
                    f.get("role", "–"),
                    reps,
                    _num(f.get("step")),
                    f.get("reason", "–"),
                    _num(m.get("memorization_accuracy")),
                    _num(ep),
                ]
            )
        more = f" (first 60 of {len(files.flagged)})" if len(files.flagged) > 60 else ""
        sections.append(
            Section(
                "Flagged sequences",
                f"{len(files.flagged)} sequences met the flag rule during training{more}. These are the candidates for "
                "erasure: `flagged.jsonl` holds their text and token ids, and `obliviate erase` takes it as is.",
                tables=[("Flagged", ["id", "role", "repetitions", "step", "reason", "MA", "extraction prob."], rows)],
            )
        )

    score_rows, source = [], ""
    for rows, label in (
        (files.scores_before, "fine-tuned model, before erasure"),
        (files.scores, "scores.jsonl"),
        (_last_step(files.history), "last tracking step"),
    ):
        if rows:
            score_rows, source = rows, label
            break
    if score_rows:
        img = plots.plot_tail(score_rows, plots_dir / "tail.png", source)
        if img:
            sections.append(
                Section(
                    "The tail of memorization",
                    "How much of each suffix the model reproduces is highly skewed (Li et al. 2025): most sequences are "
                    "not extractable at all and a few are extracted almost surely, so averages hide the risk. The "
                    "histograms use a log count axis; dashed and dotted lines mark the 99th percentile and the maximum "
                    f"over trained sequences. Source: {source}.",
                    img,
                )
            )
        img = plots.plot_roc(score_rows, plots_dir / "roc.png")
        if img:
            from obliviate.metrics.sets import summarize_scores

            summary = summarize_scores(score_rows)
            names = sorted({k.split("/", 1)[1] for k in summary if k.startswith("auc/")})
            table = [
                [
                    plots.MIA_LABELS.get(n, n),
                    _num(summary[f"auc/{n}"]),
                    _num(summary[f"tpr@1%fpr/{n}"]),
                    _num(summary[f"tpr@0.1%fpr/{n}"]),
                ]
                for n in names
            ]
            sections.append(
                Section(
                    "Membership inference",
                    "Can an attacker tell trained sequences from never-trained controls using the model's scores alone? "
                    "Each curve ranks all sequences by one membership score; AUC 0.5 is chance. The log-log panel shows "
                    "the low false-positive regime that matters for privacy (Carlini et al. 2022): with few controls "
                    f"the smallest measurable FPR is 1/number of controls. Source: {source}.",
                    img,
                    [("Membership scores", ["score", "ROC AUC", "TPR@1%FPR", "TPR@0.1%FPR"], table)],
                )
            )

    if files.scores_before and files.scores_after:
        sections.append(
            Section(
                "Before and after erasure, by group",
                'Every probe scored on the fine-tuned model and on the erased model. "Extracted" counts sequences that '
                "greedy decoding reproduces exactly. Erasure targets the flagged sequences; the other groups show "
                "what else changed.",
                tables=[
                    (
                        "By group",
                        ["group", "n", "extracted before", "extracted after", "mean MA before", "mean MA after"],
                        group_table(files.scores_before, files.scores_after, meta),
                    )
                ],
            )
        )

    if files.erasure:
        sections.extend(_erasure_sections(files.erasure, plots_dir))

    if files.utility_before or files.utility_after:
        sections.append(
            Section(
                "Utility before and after",
                "The utility suite on the model before and after erasure. Perplexity changes are relative (lower is "
                "better); accuracy changes are in points (higher is better).",
                tables=[
                    (
                        "Utility",
                        ["benchmark/score", "before", "after", "change"],
                        utility_rows(files.utility_before, files.utility_after, score_directions(files.erasure)),
                    )
                ],
            )
        )

    timing_rows = [[k, _num(float(v))] for k, v in (files.timings or {}).items() if isinstance(v, (int, float))]
    track = files.track or {}
    timing_rows += [
        [f"tracking: {k}", _num(float(track[k]))]
        for k in ("train_seconds", "scoring_seconds")
        if isinstance(track.get(k), (int, float))
    ]
    timing_rows += [
        [f"erasure: {k}", _num(float(v))]
        for k, v in ((files.erasure or {}).get("timings") or {}).items()
        if isinstance(v, (int, float))
    ]
    if timing_rows:
        sections.append(
            Section("Timings", "Wall-clock seconds per stage.", tables=[("Timings", ["stage", "seconds"], timing_rows)])
        )
    return sections


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"1 {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


def _summary(files: RunFiles) -> list[str]:
    out = []
    rows = files.scores_before or files.scores or _last_step(files.history)
    if rows:
        counts = {role: sum(r.get("role") == role for r in rows) for role in ("member", "canary", "control")}
        out.append("Probes: " + ", ".join(_plural(n, role) for role, n in counts.items() if n) + ".")
    if files.flagged:
        by_role = defaultdict(int)
        for f in files.flagged:
            by_role[f.get("role", "?")] += 1
        out.append(
            f"Flagged during training: {len(files.flagged)} sequences ("
            + ", ".join(_plural(n, role) for role, n in sorted(by_role.items()))
            + ")."
        )
    if files.scores_before and files.scores_after:
        table = group_table(files.scores_before, files.scores_after, files.probe_meta)
        out.append(
            "Exactly extractable before → after erasure: "
            + "; ".join(f"{g} {b} → {a}" for g, _, b, a, _, _ in table)
            + "."
        )
    summary = (files.erasure or {}).get("summary") or {}
    if summary:
        out.append(
            f"Erasure: {summary.get('forgotten')} of {summary.get('sequences')} sequences forgotten by the "
            f"criterion; extraction rate of the erased set {_num(summary.get('extraction_rate_before'))} → "
            f"{_num(summary.get('extraction_rate_after'))}; {summary.get('steps')} kept optimizer steps, "
            f"{summary.get('gate_rejections')} gate rejections."
        )
        out += _erasure_warnings(files.erasure)
    utility = utility_rows(files.utility_before, files.utility_after, score_directions(files.erasure))
    if utility and files.utility_after:
        out.append(
            "Utility: "
            + "; ".join(f"{k} {b} → {a} ({c})" for k, b, a, c in utility if k.endswith(("/perplexity", "/acc")))
            + "."
        )
    total = (files.timings or {}).get("total")
    if isinstance(total, (int, float)):
        out.append(f"Wall time: {total:.0f} s in all.")
    return out


def _erasure_warnings(report: dict) -> list[str]:
    """Say plainly when the erasure ran without a gate or without controls (a weaker result)."""
    out = []
    # The run records its gate (``gate``: null when ungated); a report without that record counts its decisions.
    if not report.get("gate") and not report.get("gate_decisions"):
        out.append(
            "**No utility gate**: no erasure step was checked or rolled back (the run had no retained "
            "text and no `gate:` section, or `gate: null`); utility was not protected."
        )
    thresholds = report.get("thresholds") or {}
    # Reports record the control groups the criterion had (older ones a single threshold source).
    source = thresholds.get("source", "controls" if thresholds.get("control_groups") else "absolute")
    if thresholds and source != "controls":
        out.append(
            f"**No controls**: 'forgotten' means below {source} thresholds, not below the never-trained "
            "controls' level."
        )
    return out


def _erasure_sections(report: dict, plots_dir: Path) -> list[Section]:
    out = []
    config = report.get("config") or {}
    decisions = report.get("gate_decisions") or []
    img = plots.plot_erasure_trajectory(report, plots_dir / "erasure_trajectory.png")
    rows = [
        [
            _num(d.get("step")),
            _num(d.get("chunk")),
            d.get("decision", "–"),
            "; ".join(d.get("violations") or []) or "–",
            ", ".join(f"{k}={v:.4g}" for k, v in _flat(d.get("scores")).items()),
        ]
        for d in decisions
    ]
    chunks = [
        [c.get("index"), len(c.get("ids") or []), c.get("status", "–"), _num(c.get("steps"))]
        for c in report.get("chunks") or []
    ]
    tables = []
    if rows:
        tables.append(("Gate decisions", ["step", "chunk", "decision", "violations", "scores"], rows))
    if chunks:
        tables.append(("Chunks", ["chunk", "sequences", "status", "steps"], chunks))
    if img or tables:
        n_acc = sum(d.get("decision") == "accepted" for d in decisions)
        out.append(
            Section(
                "Erasure trajectory",
                f"Erasure with `{config.get('method', '?')}` (selector `{config.get('selector', '?')}`). Top: the forget "
                "set's extraction rate and mean MA after each optimizer step. Bottom: the gated utility scores as a "
                "change from before erasure, with the gate's tolerances dashed. After every gated block of steps the "
                "gate either accepts (✓) or rejects (✗): a rejected block is rolled back bit-for-bit, the learning rate "
                f"is reduced and the block retried. {n_acc} of {len(decisions)} gate checks were accepted.",
                img,
                tables,
            )
        )
    seqs = report.get("sequences") or []
    img = plots.plot_before_after(report, plots_dir / "before_after.png")
    if seqs:
        keys = ("memorization_accuracy", "extraction_probability", "exact_extraction")
        table = [
            [s["id"], s.get("role", "–")]
            + [f"{_num((s.get('before') or {}).get(k))} → {_num((s.get('after') or {}).get(k))}" for k in keys]
            + ["yes" if s.get("forgotten") else "NO", _num(s.get("forgotten_step"))]
            for s in seqs
        ]
        n = sum(bool(s.get("forgotten")) for s in seqs)
        out.append(
            Section(
                "Per-sequence before and after",
                f"{n} of {len(seqs)} sequences asked to be erased were forgotten: not exactly extractable, with MA and "
                "extraction probability below the controls' mean (the forgetting criterion of Jang et al. 2022). "
                "Red dots are before erasure, blue after.",
                img,
                [
                    (
                        "Sequences",
                        ["id", "role", "MA", "extraction prob.", "exact extraction", "forgotten", "at step"],
                        table,
                    )
                ],
            )
        )
    return out


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


def write_report(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, title: str | None = None
) -> Path:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` for a run directory.

    Args:
        run_dir: the output directory of ``obliviate demo|track|erase|score`` (searched 3 levels deep).
        out_dir: where to write (default: ``run_dir``).
        title: report title (default: "obliviate report: <run_dir name>").

    Returns:
        Path: the self-contained ``report.html`` (``report.md`` sits next to it; both link the same PNGs).

    Raises:
        RunDirError: ``run_dir`` is missing, or holds none of the files a report reads.
    """
    files = collect_run(run_dir)
    if files.empty:
        raise RunDirError(
            f"{run_dir} holds none of the files a report reads ({', '.join(sorted(set(_names())))}). "
            "Pass the --out directory of `obliviate demo|track|erase|score`."
        )
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"obliviate report: {Path(run_dir).resolve().name}"
    sections = build_sections(files, out / "plots")
    (out / "report.md").write_text(render_markdown(sections, title, out))
    path = out / "report.html"
    path.write_text(render_html(sections, title))
    return path


def _names():
    from obliviate.report.collect import FILES

    return [v for k, v in FILES.items() if k != "probes"]


__all__ = [
    "RunDirError",
    "Section",
    "build_sections",
    "group_table",
    "render_html",
    "render_markdown",
    "utility_rows",
    "write_report",
]
