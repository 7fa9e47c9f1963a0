"""Study 4's tables and plot: one table per run block (mean ± std over its seeds), the seed models, the plot.

A gated block's table adds what the gate did (rejected blocks, chunks it stopped); the claim table and the plot
are the ungated runs (equal forgetting), a gated block its own table (equal utility budget).

python -c "from obliviate.studies.erasure_report import tables; help(tables)"
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from obliviate.studies.common import markdown_table, pyplot, save_figure
from obliviate.studies.erasure import ARMS, COLLAPSE_RATIO, ErasureStudyConfig, gate_tag

RUN_HEADERS = ["size", "corpus records", "arm", "method / selector", "seeds"]  # the cells of _run_cells
_UTILITY_HEADERS = ["held-out ppl Δ%", "KL to original", "MC Δ pts", "controls MA Δ", "others MA Δ"]
HEADERS = [
    *RUN_HEADERS,
    "extractable in set",
    "memorized before (per-seq)",
    "forgotten (per-seq)",
    "set-mean memorized before",
    "set-mean forgotten",
    "extraction after",
    *_UTILITY_HEADERS,
    "collapsed",
    "steps",
    "wall s",
]

GATED_HEADERS = [
    *RUN_HEADERS,
    "memorized before (per-seq)",
    "forgotten (per-seq)",
    "extraction after",
    *_UTILITY_HEADERS,
    "gate rejections",
    "chunks gate_exhausted",
    "steps",
    "wall s",
]


def _mean_std(values: list[float], digits: int) -> str:
    """``mean ± std`` over seeds (population std) at ``digits`` decimals; one value alone shows only itself."""
    x = np.asarray(values, float)
    return f"{x.mean():.{digits}f}" if len(x) == 1 else f"{x.mean():.{digits}f} ± {x.std():.{digits}f}"


def _columns(rows: list[dict]):
    """``col(f, digits)`` (mean ± std of ``f`` over ``rows``) and ``count(f)`` (how many rows ``f`` holds for)."""

    def col(f, digits: int = 3):
        values = [f(r) for r in rows]
        return "–" if any(v is None for v in values) else _mean_std(values, digits)

    def count(f):
        return f"{sum(bool(f(r)) for r in rows)}/{len(rows)}"

    return col, count


def _run_cells(rows: list[dict]) -> list:
    """The cells that say which runs a table row holds: size, corpus records, arm, method / selector, seeds."""
    first = rows[0]
    return [first["size"], first["n_members"], first["arm"], f"{first['method']} / {first['selector']}", len(rows)]


def _cells(rows: list[dict]) -> list:
    """One table row from the runs of one (size, arm) over seeds."""
    col, count = _columns(rows)
    return [
        *_run_cells(rows),
        col(lambda r: r["forget_extractable"], 0),
        col(lambda r: r["memorized_before"], 2),
        col(lambda r: r["forgotten"], 2),
        count(lambda r: not r["set_mean_before"]["forgotten"]),
        count(lambda r: r["set_mean"]["forgotten"]),
        col(lambda r: r["extraction_after"], 2),
        col(lambda r: 100 * r["heldout_ppl_change"], 1),
        col(lambda r: r["kl"], 2),
        col(lambda r: 100 * (r["mc_after"] - r["mc_before"]), 1),
        col(lambda r: r["controls_ma_change"]),
        col(lambda r: r["others_ma_change"]),
        count(lambda r: r["collapsed"]),
        col(lambda r: r["steps"], 0),
        col(lambda r: r["wall_s"], 0),
    ]


def _gated_cells(rows: list[dict]) -> list:
    """One row of a gated block's table: forgetting and utility as :func:`_cells`, and what the gate did."""
    col, _ = _columns(rows)
    exhausted = sum(r["chunks_gate_exhausted"] for r in rows)
    return [
        *_run_cells(rows),
        col(lambda r: r["memorized_before"], 2),
        col(lambda r: r["forgotten"], 2),
        col(lambda r: r["extraction_after"], 2),
        col(lambda r: 100 * r["heldout_ppl_change"], 1),
        col(lambda r: r["kl"], 2),
        col(lambda r: 100 * (r["mc_after"] - r["mc_before"]), 1),
        col(lambda r: r["controls_ma_change"]),
        col(lambda r: r["others_ma_change"]),
        col(lambda r: r["gate_rejections"], 1),
        f"{exhausted}/{sum(r['chunks'] for r in rows)}",  # over every chunk of every seed
        col(lambda r: r["steps"], 0),
        col(lambda r: r["wall_s"], 0),
    ]


def grouped_table(runs: list[dict], pairs: list[tuple[str, str]], gated: bool = False) -> str:
    """One row per (size, corpus, method, selector) of ``pairs`` present in ``runs``, over their seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if (r["method"], r["selector"]) in pairs:
            groups.setdefault((r["size"], r["n_members"], r["method"], r["selector"]), []).append(r)
    order = {pair: i for i, pair in enumerate(pairs)}
    keys = sorted(groups, key=lambda k: (k[0], k[1], order[k[2:]]))
    if gated:
        return markdown_table(GATED_HEADERS, [_gated_cells(groups[k]) for k in keys])
    return markdown_table(HEADERS, [_cells(groups[k]) for k in keys])


def ungated(r: dict) -> bool:
    return r.get("gate") is None  # rows cached before blocks had gates have no "gate"


def in_block(block, r: dict) -> bool:
    model = (r["n_members"], r["epochs"]) == (block.n_members, block.epochs)
    same_gate = gate_tag(r.get("gate")) == gate_tag(block.gate)
    return model and same_gate and r["seed"] in block.seeds and r["size"] in block.sizes


def block_table(block, runs: list[dict]) -> str:
    return grouped_table([r for r in runs if in_block(block, r)], block.pairs(), gated=block.gate is not None)


CLAIM_ARMS = ("emso", "ga", "graddiff", "npo")


def claim_table(runs: list[dict]) -> str:
    """The four main methods at every request size measured ungated (every seed each was run with)."""
    return grouped_table([r for r in runs if ungated(r)], [ARMS[a] for a in CLAIM_ARMS])


def models_table(models: dict) -> str:
    rows = [
        [name, m["train_rows"], m["trained"], m["extractable"], f"{m['sft_seconds']:.0f}"]
        for name, m in sorted(models.items())
    ]
    return markdown_table(["model", "SFT rows", "trained sequences", "exactly extractable", "SFT s"], rows)


def tables(config: ErasureStudyConfig, runs: list[dict], models: dict) -> list[tuple[str, str]]:
    out = [("Seed models (members + canaries after SFT)", models_table(models))]
    for block in config.blocks:
        title = (
            f"Block {block.name}: n_members {block.n_members}, {block.epochs} epochs, forget sets of {block.sizes}, "
            f"seeds {block.seeds}, gate {block.gate if block.gate is not None else 'none'} (mean ± std over seeds; "
            + ("chunks gate_exhausted over all seeds' chunks)" if block.gate is not None else "")
            + (f"collapsed = held-out ppl > {COLLAPSE_RATIO:g}x)" if block.gate is None else "")
        )
        out.append((title, block_table(block, runs)))
    out.append(
        (
            "The claim: EMSO vs GA (and GradDiff, NPO) by request size, every seed run (all ungated blocks)",
            claim_table(runs),
        )
    )
    return out


def plots(out: Path, runs: list[dict]) -> list[str]:
    """Forgetting (per-sequence) against held-out perplexity change and KL, one colour per arm, marker per size,
    and the forgetting curves (the ungated runs: a gated run stops where the gate does, a different comparison)."""
    runs = [r for r in runs if ungated(r)]
    return [_scatter(out, runs), *_curves(out, runs)]


def _scatter(out: Path, runs: list[dict]) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    arms = sorted({r["arm"] for r in runs})  # by arm: emso and entropy_only share a method, not a selector
    sizes = sorted({r["size"] for r in runs})
    markers = dict(zip(sizes, "os^Dvp*"))
    panels = (
        (lambda r: 100 * r["heldout_ppl_change"], "held-out perplexity change %", "symlog"),
        (lambda r: r["kl"], "KL to the original on held-out text (nats/token)", "log"),
    )
    for ax, (y, label, scale) in zip(axes, panels):
        for i, arm in enumerate(arms):
            for size in sizes:
                rows = [r for r in runs if r["arm"] == arm and r["size"] == size]
                if rows:
                    ax.scatter(
                        [100 * r["forgotten"] for r in rows],
                        [max(y(r), 1e-4) if scale == "log" else y(r) for r in rows],
                        color=f"C{i % 10}",
                        marker=markers[size],
                        alpha=0.75,
                        label=f"{arm}, n={size}",
                    )
        ax.set_yscale(scale, **({"linthresh": 10} if scale == "symlog" else {}))
        ax.set(xlabel="forgotten % (per-sequence criterion)", ylabel=label)
    axes[0].axhline(100 * (COLLAPSE_RATIO - 1), color="grey", ls="--", lw=0.8)
    axes[0].set_title("forgetting vs utility, every run (dashed: collapse)")
    axes[1].set_title("forgetting vs drift from the original")
    axes[1].legend(fontsize=6, ncol=2)
    return save_figure(fig, out / "erasure_forgetting_vs_utility.png")


CURVE_ARMS = ("emso", "emso_entropy", "entropy_only", "emso_retain", "ga", "graddiff", "npo")


def curve(rows: list[dict], steps: np.ndarray) -> np.ndarray:
    """Mean over ``rows`` (seeds) of the share of the forget set forgotten by each of ``steps``."""
    shares = [
        [sum(s is not None and s <= k for s in r["forgotten_at"]) / len(r["forgotten_at"]) for k in steps] for r in rows
    ]
    return np.mean(shares, axis=0)


def _curves(out: Path, runs: list[dict]) -> list[str]:
    """Per-sequence forgetting along each run: share of the set forgotten by optimizer step, one panel per
    request size, one line per arm (mean over its seeds); the runs of the methods and entropy blocks."""
    runs = [r for r in runs if r["arm"] in CURVE_ARMS and r.get("forgotten_at")]
    sizes = sorted({r["size"] for r in runs})
    if not sizes:
        return []
    plt = pyplot()
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        at_size = [r for r in runs if r["size"] == size]
        steps = np.arange(0, max(r["steps"] for r in at_size) + 1)
        for arm in CURVE_ARMS:
            rows = [r for r in at_size if r["arm"] == arm]
            if rows:
                i = CURVE_ARMS.index(arm)
                ax.step(steps, 100 * curve(rows, steps), where="post", color=f"C{i}", label=f"{arm} ({len(rows)})")
        ax.set(xlabel="optimizer step", ylabel="forgotten % (per-sequence)", title=f"forget set of {size}")
        ax.set_ylim(-2, 102)
    axes[0][0].legend(fontsize=7, title="arm (seeds)", title_fontsize=7)
    return [save_figure(fig, out / "erasure_forgetting_curves.png")]
