"""Build ``report.md`` and a self-contained ``report.html`` (plots embedded) for a run directory.

    obliviate report runs/demo        # or: python -m obliviate.cli report runs/demo

Every section appears only when its inputs exist, so the same code reports a `track` run, an
`erase` run, a `score` directory or the whole demo.

This module gathers the sections (one helper per section, each returning a list that is empty when its inputs
are missing) and writes the files; :class:`Section` and the Markdown/HTML renderers are in
``render.py``, the group and utility table rows in ``rows.py``, the erasure sections in ``erasure_sections.py``, the plots in ``plots.py`` and ``training_plots.py``.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

from obliviate import __version__
from obliviate.report import plots
from obliviate.report.collect import (
    RunDirError,
    RunFiles,
    collect_run,
    score_directions,
)
from obliviate.report.erasure_sections import _erasure_sections, _erasure_warnings
from obliviate.report.render import Section, render_html, render_markdown
from obliviate.report.rows import _num, group_table, utility_rows
from obliviate.report.training_plots import plot_memorization_over_training


def _shown(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _last_step(history: list[dict]) -> list[dict]:
    steps = [r["step"] for r in history if "step" in r]
    return [r for r in history if r.get("step") == max(steps)] if steps else []


def build_sections(files: RunFiles, plots_dir: Path) -> list[Section]:
    """Every section whose inputs exist in ``files``, in report order; PNGs are written to ``plots_dir``."""
    score_rows, source = _score_source(files)
    return (
        _summary_section(files)
        + _run_section(files)
        + _training_section(files, plots_dir)
        + _flagged_section(files)
        + _tail_section(score_rows, source, plots_dir)
        + _mia_section(score_rows, source, plots_dir)
        + _group_section(files)
        + (_erasure_sections(files.erasure, plots_dir) if files.erasure else [])
        + _utility_section(files)
        + _timings_section(files)
    )


def _summary_section(files: RunFiles) -> list[Section]:
    bullets = _summary(files)
    if not bullets:
        return []
    return [
        Section("Summary", "What this run found and did, in numbers; the sections below show how.", bullets=bullets)
    ]


def _run_section(files: RunFiles) -> list[Section]:
    inputs = [[name, _shown(path, files.run_dir)] for name, path in sorted(files.found.items())]
    return [
        Section(
            "Run",
            f"Report on `{files.run_dir}`, written by obliviate {__version__} on {time.strftime('%Y-%m-%d %H:%M')}. "
            "Each section below appears only when the run wrote its inputs.",
            tables=[("Inputs found", ["input", "file"], inputs)],
        )
    ]


def _training_section(files: RunFiles, plots_dir: Path) -> list[Section]:
    if not files.history:
        return []
    img = plot_memorization_over_training(
        files.history, files.probe_meta, files.flagged, plots_dir / "memorization.png"
    )
    if not img:
        return []
    return [
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
    ]


def _flagged_section(files: RunFiles) -> list[Section]:
    if not files.flagged:
        return []
    rows = []
    for f in files.flagged[:60]:
        m = f.get("metrics") or {}
        reps = (files.probe_meta.get(str(f["id"])) or {}).get("repetitions", "–")
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
    return [
        Section(
            "Flagged sequences",
            f"{len(files.flagged)} sequences met the flag rule during training{more}. These are the candidates for "
            "erasure: `flagged.jsonl` holds their text and token ids, and `obliviate erase` takes it as is.",
            tables=[("Flagged", ["id", "role", "repetitions", "step", "reason", "MA", "extraction prob."], rows)],
        )
    ]


def _score_source(files: RunFiles) -> tuple[list[dict], str]:
    """The score rows the tail and MIA sections read, and where they came from: the fine-tuned model's when the
    run erased (the erased model's would show erasure, not memorization), else ``scores.jsonl``, else the last
    tracking step."""
    for rows, label in (
        (files.scores_before, "fine-tuned model, before erasure"),
        (files.scores, "scores.jsonl"),
        (_last_step(files.history), "last tracking step"),
    ):
        if rows:
            return rows, label
    return [], ""


def _tail_section(score_rows: list[dict], source: str, plots_dir: Path) -> list[Section]:
    img = plots.plot_tail(score_rows, plots_dir / "tail.png", source) if score_rows else None
    if not img:
        return []
    return [
        Section(
            "The tail of memorization",
            "How much of each suffix the model reproduces is highly skewed (Li et al. 2025): most sequences are "
            "not extractable at all and a few are extracted almost surely, so averages hide the risk. The "
            "histograms use a log count axis; dashed and dotted lines mark the 99th percentile and the maximum "
            f"over trained sequences. Source: {source}.",
            img,
        )
    ]


def _mia_section(score_rows: list[dict], source: str, plots_dir: Path) -> list[Section]:
    img = plots.plot_roc(score_rows, plots_dir / "roc.png") if score_rows else None
    if not img:
        return []
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
    return [
        Section(
            "Membership inference",
            "Can an attacker tell trained sequences from never-trained controls using the model's scores alone? "
            "Each curve ranks all sequences by one membership score; AUC 0.5 is chance. The log-log panel shows "
            "the low false-positive regime that matters for privacy (Carlini et al. 2022): with few controls "
            f"the smallest measurable FPR is 1/number of controls. Source: {source}.",
            img,
            [("Membership scores", ["score", "ROC AUC", "TPR@1%FPR", "TPR@0.1%FPR"], table)],
        )
    ]


def _group_section(files: RunFiles) -> list[Section]:
    if not (files.scores_before and files.scores_after):
        return []
    return [
        Section(
            "Before and after erasure, by group",
            'Every probe scored on the fine-tuned model and on the erased model. "Extracted" counts sequences that '
            "greedy decoding reproduces exactly. Erasure targets the flagged sequences; the other groups show "
            "what else changed.",
            tables=[
                (
                    "By group",
                    ["group", "n", "extracted before", "extracted after", "mean MA before", "mean MA after"],
                    group_table(files.scores_before, files.scores_after, files.probe_meta),
                )
            ],
        )
    ]


def _utility_section(files: RunFiles) -> list[Section]:
    if not (files.utility_before or files.utility_after):
        return []
    return [
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
    ]


def _timings_section(files: RunFiles) -> list[Section]:
    def numbers(values: dict | None, prefix: str = "") -> list[list]:
        return [[f"{prefix}{k}", _num(float(v))] for k, v in (values or {}).items() if isinstance(v, (int, float))]

    track = files.track or {}
    rows = (
        numbers(files.timings)
        + numbers({k: track.get(k) for k in ("train_seconds", "scoring_seconds")}, "tracking: ")
        + numbers((files.erasure or {}).get("timings"), "erasure: ")
    )
    if not rows:
        return []
    return [Section("Timings", "Wall-clock seconds per stage.", tables=[("Timings", ["stage", "seconds"], rows)])]


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
