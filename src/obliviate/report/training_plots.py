"""The report's plot of memorization during fine-tuning: per group, mean MA and extraction rate at each step.

Kept apart from ``plots.py`` (whose colours and saving it shares) so that each file stays short.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

from obliviate.metrics.sets import set_statistics
from obliviate.report.collect import group_of, group_order
from obliviate.report.plots import _colors, _save


def plot_memorization_over_training(
    history: list[dict], meta: dict[str, dict], flagged: list[dict], path: Path
) -> Path | None:
    """Mean MA and extraction rate per group (canaries by repetition count) at each scoring step.

    Args:
        history: ``memorization/history.jsonl`` rows (``step``, ``id``, ``role``, metrics).
        meta: per-probe extras (``repetitions``) by id, see :func:`~obliviate.report.collect.collect_run`.
        flagged: ``flagged.jsonl`` rows; their steps are marked as flag events.
        path: PNG to write.
    """
    rows = [r for r in history if "step" in r and "memorization_accuracy" in r]
    if not rows:
        return None
    series: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        series[group_of(str(r["id"]), r.get("role"), meta)][int(r["step"])].append(
            {"memorization_accuracy": r["memorization_accuracy"], "exact_extraction": r.get("exact_extraction", 0)}
        )
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    _plot_groups(axes, series)
    flag_steps = defaultdict(int)
    for f in flagged:
        if f.get("step") is not None:
            flag_steps[int(f["step"])] += 1
    _mark_flags(axes, flag_steps)
    axes[0].set_ylabel("mean memorization accuracy")
    axes[0].set_title("Memorization accuracy (share of suffix tokens predicted)")
    axes[1].set_ylabel("share exactly extractable")
    axes[1].set_title("Extraction rate (greedy decoding reproduces the suffix)")
    _legend(fig, axes[0], bool(flag_steps))
    fig.suptitle("Memorization during fine-tuning, by how often a sequence was seen")
    return _save(fig, path)


def _plot_groups(axes, series: dict[str, dict[int, list[dict]]]) -> None:
    """One line per group in each panel: mean MA (left) and extraction rate (right); controls dashed."""
    groups = group_order(series)
    colors = _colors(groups)
    for g in groups:
        steps = sorted(series[g])
        stats = [set_statistics(series[g][s]) for s in steps]
        style = {
            "color": colors[g],
            "marker": "o",
            "markersize": 3,
            "linewidth": 1.8,
            "linestyle": "--" if g == "controls" else "-",
        }
        n = len(series[g][steps[-1]])
        axes[0].plot(steps, [st["mean_memorization_accuracy"] for st in stats], label=f"{g} (n={n})", **style)
        axes[1].plot(steps, [st["extraction_rate"] for st in stats], **style)


def _mark_flags(axes, flag_steps: dict[int, int]) -> None:
    """A dotted line at each step where sequences were flagged, with their count on the right panel."""
    for ax in axes:
        for s in flag_steps:
            ax.axvline(s, color="#999999", linestyle=":", linewidth=1)
        ax.set_xlabel("training step")
        ax.set_ylim(-0.03, 1.08)
        ax.grid(alpha=0.3)
    for s, n in sorted(flag_steps.items()):
        axes[1].annotate(
            f"+{n} flagged",
            (s, 0.5),
            rotation=90,
            fontsize=8,
            color="#444444",
            ha="center",
            va="center",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
        )


def _legend(fig: Figure, ax, flags: bool) -> None:
    """The groups' legend below both panels, plus the flag-event line when there were flags."""
    handles, labels = ax.get_legend_handles_labels()
    if flags:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="#999999", linestyle=":"))
        labels.append("flag event")
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 7), frameon=False)
