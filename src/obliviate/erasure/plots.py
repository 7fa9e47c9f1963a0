"""PNG plots of an erasure run: the forget trajectory with gate decisions, and each sequence before/after.

    python -c "import json; from obliviate.erasure.plots import write_plots; \\
        write_plots(json.load(open('runs/erase/erasure_report.json')), 'runs/erase/plots')"
"""

from __future__ import annotations

import os
from pathlib import Path


def write_plots(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``erasure_trajectory.png`` and ``sequences_before_after.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "erasure_trajectory.png", out / "sequences_before_after.png"]
    # Per-group thresholds on the erased model; a line only when one group (several would be ambiguous).
    groups = ((report.get("thresholds") or {}).get("last") or {}).get("groups") or {}
    thresholds = next(iter(groups.values())) if len(groups) == 1 else {}
    for plot, path in ((_plot_trajectory, paths[0]), (_plot_sequences, paths[1])):
        fig = plot(plt, report, thresholds)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return paths


def _plot_trajectory(plt, report: dict, thresholds: dict):
    """The forget metrics per optimizer step (x: rolled back), gate decisions and chunk starts as vertical lines."""
    fig, ax = plt.subplots(figsize=(8, 4))
    scored = [s for s in report["steps"] if s.get("forget")]
    for key, label, color in (
        ("extraction_rate", "extraction rate (chunk)", "tab:red"),
        ("mean_memorization_accuracy", "mean MA (chunk)", "tab:blue"),
    ):
        kept = [s for s in scored if not s["rolled_back"]]
        ax.plot([s["step"] for s in kept], [s["forget"][key] for s in kept], ".-", color=color, label=label)
        back = [s for s in scored if s["rolled_back"]]
        if back:
            ax.plot([s["step"] for s in back], [s["forget"][key] for s in back], "x", color=color, alpha=0.4)
    if "memorization_accuracy" in thresholds:
        ax.axhline(
            thresholds["memorization_accuracy"],
            color="tab:blue",
            ls=":",
            lw=1,
            label=f"MA threshold ({thresholds.get('source')})",
        )
    for s in report["steps"]:
        if s.get("gate"):
            accepted = s["gate"]["decision"] == "accepted"
            ax.axvline(s["step"], color="tab:green" if accepted else "tab:red", alpha=0.15 if accepted else 0.5, lw=1)
    starts = {}
    for s in report["steps"]:
        starts.setdefault(s["chunk"], s["step"])
    for chunk, step in starts.items():
        ax.axvline(step - 0.5, color="black", ls="--", lw=0.8)
        ax.text(step - 0.5, 1.02, f"chunk {chunk}", fontsize=7, transform=ax.get_xaxis_transform())
    ax.set_xlabel("optimizer step (x: rolled back; green/red lines: gate accepted/rejected)")
    ax.set_ylabel("forget metric")
    ax.set_ylim(-0.02, 1.05)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"erasure: {report['config']['method']} / {report['config']['selector']}", fontsize=10)
    return fig


def _plot_sequences(plt, report: dict, thresholds: dict):
    """Each erased sequence's MA and extraction probability (log) before and after, green when forgotten."""
    seqs = report["sequences"]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 0.25 * len(seqs) + 4), 4))
    x = range(len(seqs))
    for ax, key, log in ((axes[0], "memorization_accuracy", False), (axes[1], "extraction_probability", True)):
        b = [max(s["before"][key], 1e-30) if log else s["before"][key] for s in seqs]
        a = [max(s["after"][key], 1e-30) if log else s["after"][key] for s in seqs]
        ax.bar([i - 0.2 for i in x], b, width=0.4, label="before", color="tab:gray")
        ax.bar(
            [i + 0.2 for i in x],
            a,
            width=0.4,
            label="after",
            color=["tab:green" if s["forgotten"] else "tab:red" for s in seqs],
        )
        if thresholds.get(key) is not None:
            ax.axhline(thresholds[key], color="black", ls=":", lw=1, label="threshold")
        if log:
            ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.set_xticks(list(x))
        ax.set_xticklabels([s["id"] for s in seqs], rotation=90, fontsize=6)
        ax.legend(fontsize=7)
    fig.suptitle("per sequence before/after (green: forgotten)", fontsize=10)
    return fig
