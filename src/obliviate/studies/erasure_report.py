"""Study 4's tables and plot: one table per run block (mean ± std over its seeds), the seed models, the plot.

python -c "from obliviate.studies.erasure_report import tables; help(tables)"
"""

from __future__ import annotations

from pathlib import Path

from obliviate.studies.common import markdown_table, mean_std, pyplot, save_figure
from obliviate.studies.erasure import COLLAPSE_RATIO, ErasureStudyConfig

HEADERS = [
    "size",
    "arm",
    "method / selector",
    "seeds",
    "forgotten (per-seq)",
    "set-mean forgotten",
    "extraction after",
    "held-out ppl Δ%",
    "KL to original",
    "MC Δ pts",
    "controls MA Δ",
    "others MA Δ",
    "collapsed",
    "steps",
    "wall s",
]


def _cells(rows: list[dict]) -> list:
    """One table row from the runs of one (size, arm) over seeds."""
    first = rows[0]

    def col(f):
        values = [f(r) for r in rows]
        return "–" if any(v is None for v in values) else mean_std(values)

    return [
        first["size"],
        first["arm"],
        f"{first['method']} / {first['selector']}",
        len(rows),
        col(lambda r: r["forgotten"]),
        f"{sum(r['set_mean']['forgotten'] for r in rows)}/{len(rows)}",
        col(lambda r: r["extraction_after"]),
        col(lambda r: 100 * r["heldout_ppl_change"]),
        col(lambda r: r["kl"]),
        col(lambda r: 100 * (r["mc_after"] - r["mc_before"])),
        col(lambda r: r["controls_ma_change"]),
        col(lambda r: r["others_ma_change"]),
        f"{sum(r['collapsed'] for r in rows)}/{len(rows)}",
        col(lambda r: r["steps"]),
        col(lambda r: r["wall_s"]),
    ]


def block_table(block, runs: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        model = (r["n_members"], r["epochs"]) == (block.n_members, block.epochs)
        if (
            model
            and r["seed"] in block.seeds
            and r["size"] in block.sizes
            and (r["method"], r["selector"]) in block.pairs()
        ):
            groups.setdefault((r["size"], r["method"], r["selector"]), []).append(r)
    order = {pair: i for i, pair in enumerate(block.pairs())}
    keys = sorted(groups, key=lambda k: (k[0], order[k[1:]]))
    return markdown_table(HEADERS, [_cells(groups[k]) for k in keys])


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
            f"seeds {block.seeds} (mean ± std over seeds; collapsed = held-out ppl > {COLLAPSE_RATIO:g}x)"
        )
        out.append((title, block_table(block, runs)))
    return out


def plots(out: Path, runs: list[dict]) -> list[str]:
    """Forgetting (per-sequence) against held-out perplexity change, one colour per method, marker per size."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = sorted({r["method"] for r in runs})
    sizes = sorted({r["size"] for r in runs})
    markers = dict(zip(sizes, "os^Dvp*"))
    for i, method in enumerate(methods):
        for size in sizes:
            rows = [r for r in runs if r["method"] == method and r["size"] == size]
            if rows:
                ax.scatter(
                    [100 * r["forgotten"] for r in rows],
                    [100 * r["heldout_ppl_change"] for r in rows],
                    color=f"C{i}",
                    marker=markers[size],
                    alpha=0.75,
                    label=f"{method}, n={size}",
                )
    ax.axhline(100 * (COLLAPSE_RATIO - 1), color="grey", ls="--", lw=0.8)
    ax.set_yscale("symlog", linthresh=10)
    ax.set(xlabel="forgotten % (per-sequence criterion)", ylabel="held-out perplexity change %")
    ax.set_title("forgetting vs utility, every run (dashed: collapse)")
    ax.legend(fontsize=6, ncol=2)
    return [save_figure(fig, out / "erasure_forgetting_vs_utility.png")]
