"""PNG plots of a run: the tail, MIA ROC, erasure trajectory, before/after (memorization over training is in
``training_plots.py``, which shares this module's colours and saving).

    python -c "from obliviate.report import write_report; print(write_report('runs/demo'))"

Each function takes already-loaded rows, writes one PNG and returns its path, or returns None when
its inputs are missing. Figures are built on matplotlib's object API with the Agg canvas, never
pyplot, so importing this module changes no global backend and is safe in notebooks and threads.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from obliviate.metrics.scorer import MIA_SCORES
from obliviate.metrics.sets import mia_score, roc_curve, tail_statistics
from obliviate.report.collect import declared_direction, gate_tolerances, score_directions

DPI = 110
ACCEPT, REJECT = "#2ca02c", "#d62728"
BEFORE, AFTER = "#d62728", "#1f77b4"
MIA_LABELS = {
    "min_k": "Min-K%",
    "min_k_plus_plus": "Min-K%++",
    "zlib_ratio": "zlib ratio",
    "reference_ratio": "reference ratio",
    "neg_loss": "LOSS (−loss)",
}


def _colors(labels: list[str]) -> dict[str, str]:
    from matplotlib import colormaps

    canaries = [g for g in labels if g.startswith("canar")]
    cmap = colormaps["plasma"]
    colors = {g: cmap(0.15 + 0.7 * i / max(len(canaries) - 1, 1)) for i, g in enumerate(canaries)}
    colors.update({"members": "#555555", "controls": "#1f77b4"})
    return {g: colors.get(g, "#8c564b") for g in labels}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def plot_tail(rows: list[dict], path: Path, source: str = "") -> Path | None:
    """Histograms (log count) of ``prefix_match_length`` and ``extraction_probability``, trained vs controls."""
    rows = [r for r in rows if "prefix_match_length" in r and "extraction_probability" in r]
    trained = [r for r in rows if r.get("role") in ("member", "canary")]
    if not trained:
        return None
    controls = [r for r in rows if r.get("role") == "control"]
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    max_len = max(int(r.get("suffix_length", r["prefix_match_length"])) for r in rows)
    specs = [
        ("prefix_match_length", np.arange(-0.5, max_len + 1.5, 1), "leading suffix tokens reproduced (n_pre)"),
        ("extraction_probability", np.linspace(0, 1, 21), "P(extracted in n samples)"),
    ]
    for ax, (metric, bins, xlabel) in zip(axes, specs):
        values = [r[metric] for r in trained]
        ax.hist(values, bins=bins, color="#d62728", alpha=0.75, label=f"members + canaries (n={len(values)})")
        if controls:
            ax.hist(
                [r[metric] for r in controls],
                bins=bins,
                histtype="step",
                linewidth=1.6,
                color="#1f77b4",
                label=f"controls (n={len(controls)})",
            )
        stats = tail_statistics(values)
        ax.axvline(stats["p99"], color="black", linestyle="--", linewidth=1, label=f"p99 = {stats['p99']:.3g}")
        ax.axvline(stats["max"], color="black", linestyle=":", linewidth=1, label=f"max = {stats['max']:.3g}")
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.7)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("sequences (log scale)")
        ax.set_title(
            f"{metric}\nskewness {stats['skewness']:.2f}, Gini {stats['gini']:.2f}, "
            f"top 1% hold {100 * stats['top1pct_share']:.0f}%",
            fontsize=10,
        )
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
        ax.grid(alpha=0.3, which="both", axis="y")
    fig.suptitle(f"The tail of memorization{f' ({source})' if source else ''}")
    return _save(fig, path)


def plot_roc(rows: list[dict], path: Path) -> Path | None:
    """ROC of every membership score, members + canaries (positives) vs controls, linear and log-log."""
    pos = [r for r in rows if r.get("role") in ("member", "canary")]
    neg = [r for r in rows if r.get("role") == "control"]
    if not pos or not neg:
        return None
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    drawn = 0
    for name in MIA_SCORES:
        p = [s for r in pos if (s := _score(r, name)) is not None]
        n = [s for r in neg if (s := _score(r, name)) is not None]
        if not p or not n:
            continue
        fpr, tpr = roc_curve(p, n)
        auc = float(np.trapezoid(tpr, fpr))
        for ax in axes:
            ax.plot(fpr, tpr, linewidth=1.8, label=f"{MIA_LABELS.get(name, name)}  AUC {auc:.3f}")
        drawn += 1
    if not drawn:
        return None
    floor = 1.0 / max(len(neg), 1)
    for ax in axes:
        ax.plot([floor * 0.5, 1], [floor * 0.5, 1], color="#999999", linestyle="--", linewidth=1, label="chance")
        ax.set_xlabel("false-positive rate (controls flagged as members)")
        ax.set_ylabel("true-positive rate (members detected)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title("ROC, linear axes")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlim(floor * 0.5, 1.05)
    axes[1].set_ylim(1.0 / max(len(pos), 1) * 0.5, 1.05)
    axes[1].set_title(f"ROC, log-log (low-FPR regime; FPR floor 1/{len(neg)})")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Membership inference: {len(pos)} trained sequences vs {len(neg)} never-trained controls")
    return _save(fig, path)


def _score(row: dict, name: str) -> float | None:
    value = mia_score(row, name) if name != "neg_loss" or "loss" in row else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def lower_is_better(key: str, directions: dict[str, str] | None = None) -> bool:
    """Whether ``label/score`` is lower-is-better: as the run recorded it (``directions``, see
    :func:`~obliviate.report.collect.score_directions`), else as the registered benchmarks declare the score
    name; a score neither knows is shown as higher-is-better (a change in points)."""
    return ((directions or {}).get(key) or declared_direction(key)) == "lower"


def _flat(scores: dict | None) -> dict[str, float]:
    """``{bench: {score: v}}`` -> ``{"bench/score": v}`` (numbers only)."""
    out = {}
    for bench, values in (scores or {}).items():
        if isinstance(values, dict):
            out.update({f"{bench}/{k}": float(v) for k, v in values.items() if isinstance(v, (int, float))})
        elif isinstance(values, (int, float)):
            out[bench] = float(values)
    return out


def utility_change(value: float, baseline: float, lower: bool) -> float:
    """Change vs baseline in the gate's units: % relative for lower-is-better scores (perplexity, loss, KL),
    points (x100) for higher-is-better ones (accuracies)."""
    if lower:
        return 100.0 * (value - baseline) / baseline if baseline else float("nan")
    return 100.0 * (value - baseline)


def plot_erasure_trajectory(report: dict, path: Path) -> Path | None:
    """Forget-set metrics and gated utility per erasure step, gate decisions marked ✓ / ✗."""
    steps = [s for s in report.get("steps") or [] if "step" in s]
    if not steps:
        return None
    x = list(range(1, len(steps) + 1))
    fig = Figure(figsize=(12, 6.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1]})
    _plot_forget(top, x, steps)
    chunks = [s.get("chunk") for s in steps]
    for i in range(1, len(chunks)):
        if chunks[i] != chunks[i - 1]:
            for ax in (top, bottom):
                ax.axvline(i + 0.5, color="#bbbbbb", linewidth=1)
    top.set_ylabel("forget set")
    top.set_ylim(-0.03, 1.05)
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    top.set_title("Forgetting: the flagged sequences' memorization per optimizer step")
    gated = [(i, s["gate"]) for i, s in zip(x, steps) if s.get("gate")]
    keys = _plot_gated_utility(bottom, report, gated)
    _mark_gate(bottom, report, gated, legend=bool(keys))
    fig.suptitle(f"Erasure trajectory ({(report.get('config') or {}).get('method', 'erasure')})")
    return _save(fig, path)


def _plot_forget(ax, x: list[int], steps: list[dict]) -> None:
    """Top panel's lines: the forget set's extraction rate and mean MA at each step."""
    for key, label, color in (
        ("extraction_rate", "forget-set extraction rate", "#d62728"),
        ("mean_memorization_accuracy", "forget-set mean MA", "#ff7f0e"),
    ):
        ys = [(s.get("forget") or {}).get(key) for s in steps]
        if any(v is not None for v in ys):
            ax.plot(x, [np.nan if v is None else v for v in ys], marker="o", markersize=3, color=color, label=label)


def _plot_gated_utility(ax, report: dict, gated: list[tuple[int, dict]]) -> list[str]:
    """Bottom panel's lines: each gated score's change from before erasure; returns the scores drawn from."""
    baseline = _flat((report.get("utility") or {}).get("before"))
    directions = score_directions(report)
    keys = sorted({k for _, g in gated for k in _flat(g.get("scores"))})
    wanted = _gated_keys(report)
    if wanted:
        keys = [k for k in keys if k in wanted or k.split("/", 1)[0] in wanted] or keys
    for key in keys:
        base = baseline.get(key)
        pts = [(i, _flat(g.get("scores")).get(key)) for i, g in gated]
        pts = [(i, v) for i, v in pts if v is not None]
        if base is None:
            base = pts[0][1] if pts else None
        if not pts or base is None:
            continue
        lower = lower_is_better(key, directions)
        ax.plot(
            [i for i, _ in pts],
            [utility_change(v, base, lower) for _, v in pts],
            linewidth=1.4,
            label=f"{key} ({'% rel.' if lower else 'points'})",
        )
    return keys


def _mark_gate(ax, report: dict, gated: list[tuple[int, dict]], legend: bool) -> None:
    """Bottom panel's gate decisions (✓ / ✗ at 0), tolerances (dashed), labels and legend."""
    for i, g in gated:
        accepted = g.get("decision") == "accepted"
        ax.scatter([i], [0], marker="$✓$" if accepted else "$✗$", s=110, color=ACCEPT if accepted else REJECT, zorder=5)
    for value, label in _gate_tolerances(report):
        ax.axhline(value, color="#444444", linestyle="--", linewidth=1)
        ax.annotate(label, (0.005, value), xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
    ax.axhline(0, color="#999999", linewidth=0.8)
    ax.set_ylabel("utility change vs before")
    ax.set_xlabel("optimizer step (attempts, including rolled-back ones; grey lines separate chunks)")
    n_acc = sum(g.get("decision") == "accepted" for _, g in gated)
    ax.set_title(f"Utility gate: {n_acc} accepted (✓), {len(gated) - n_acc} rejected and rolled back (✗)")
    ax.grid(alpha=0.3)
    if legend:
        from matplotlib.lines import Line2D

        handles, labels = ax.get_legend_handles_labels()
        handles += [
            Line2D([], [], marker="$✓$", color=ACCEPT, linestyle="", markersize=10),
            Line2D([], [], marker="$✗$", color=REJECT, linestyle="", markersize=10),
        ]
        labels += ["gate accepted", "gate rejected (rolled back)"]
        ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _gated_keys(report: dict) -> set[str]:
    """``label/score`` (or bare ``label`` when the score is not known) of each gated benchmark."""
    return {
        f"{t['benchmark']}/{t['score']}" if t.get("score") else str(t["benchmark"]) for t in gate_tolerances(report)
    }


def _gate_tolerances(report: dict) -> list[tuple[float, str]]:
    """Each recorded tolerance as a dashed line in the bottom panel's units (% relative or points).

    The tolerances and their directions are those the run's gate recorded (``report["gate"]``), and the
    limit is the gate's own (``Tolerance.limit``), so every kind, one- or two-sided, is drawn where the
    gate drew it. Kinds whose line does not depend on the baseline (relative bounds on lower-is-better
    scores, absolute bounds on higher-is-better ones) are drawn without one; the others need the score's
    baseline in the report (KL's is 0, so it has no line in relative units).
    """
    from obliviate.benchmarks.tolerances import Tolerance

    baseline = _flat((report.get("utility") or {}).get("before"))
    out = []
    for t in gate_tolerances(report):
        key = f"{t['benchmark']}/{t['score']}" if t.get("score") else str(t["benchmark"])
        lower = t["direction"] == "lower"
        base_free = t["kind"].startswith("max_relative") == lower
        base = baseline.get(key) or (1.0 if base_free else None)
        if not base:
            continue
        limit = Tolerance(str(t["benchmark"]), t["kind"], float(t["value"]), t.get("score")).limit(base)
        change = utility_change(limit, base, lower)
        sign = "+" if change > 0 else "−"
        out.append((change, f"{t['benchmark']}: max {sign}{abs(change):.3g}{'%' if lower else ' points'}"))
    return out


def plot_before_after(report: dict, path: Path, max_rows: int = 40) -> Path | None:
    """Dumbbell plot: each erased sequence's MA and extraction probability before → after."""
    seqs = [s for s in report.get("sequences") or [] if s.get("before") and s.get("after")]
    if not seqs:
        return None
    metrics = [m for m in ("memorization_accuracy", "extraction_probability") if m in seqs[0]["before"]]
    if not metrics:
        return None
    seqs = sorted(seqs, key=lambda s: s["before"].get(metrics[0], 0))[-max_rows:]
    fig = Figure(figsize=(11, 1.6 + 0.28 * len(seqs)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    y = np.arange(len(seqs))
    thresholds = report.get("thresholds") or {}
    for ax, metric in zip(axes, metrics):
        before = [s["before"].get(metric, np.nan) for s in seqs]
        after = [s["after"].get(metric, np.nan) for s in seqs]
        ax.hlines(y, before, after, color="#aaaaaa", linewidth=2, zorder=1)
        ax.scatter(before, y, color=BEFORE, zorder=2, label="before erasure")
        ax.scatter(after, y, color=AFTER, zorder=3, label="after erasure")
        limit = thresholds.get(metric)
        if isinstance(limit, (int, float)):
            source = "controls' mean" if thresholds.get("source") == "controls" else "threshold"
            ax.axvline(limit, color="black", linestyle="--", linewidth=1, label=f"{source}: forgotten below")
        ax.set_xlim(-0.03, 1.03)
        ax.set_xlabel(metric.replace("_", " "))
        ax.grid(alpha=0.3, axis="x")
    labels = [f"{s['id']}{'' if s.get('forgotten', True) else '  (NOT forgotten)'}" for s in seqs]
    axes[0].set_yticks(y, labels, fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)
    n_forgotten = sum(bool(s.get("forgotten")) for s in report.get("sequences") or [])
    fig.suptitle(
        f"Per-sequence memorization before → after erasure "
        f"({n_forgotten}/{len(report.get('sequences') or [])} forgotten)"
    )
    return _save(fig, path)
