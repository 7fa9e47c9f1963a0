"""Study 1, skewed memorization (Li et al. 2025, "Skewed Memorization in LLMs", arXiv 2502.01187).

    obliviate study recipes/studies/skew.yaml --out runs/studies/skew

Li et al. find per-sample memorization heavy-tailed: a few sequences carry most of it, and the tail
grows with training epochs, repetition and inter-sample similarity, and shrinks with dataset size.
They model extracting a sequence as the product of per-token recall probabilities, so with one
per-token probability p the prefix-match length is geometric: P(PML >= k) = p^k. This study
measures the tail of ``prefix_match_length`` and ``extraction_probability`` over the toy's members
and canaries (max, p99, skewness, Gini, top-1% share: :func:`obliviate.metrics.sets.tail_statistics`)
against epochs, ``n_members``, canary repetitions and injected near-duplicates, and compares the
measured PML survival with the geometric one fitted from the mean per-token greedy recall.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from obliviate.metrics.sets import tail_statistics
from obliviate.studies.common import (
    TRAINED_ROLES,
    StudyConfig,
    StudyError,
    markdown_table,
    mean_std,
    positive_int,
    prepare_base,
    pyplot,
    save_figure,
    token_weighted_recall,
    track_run,
    write_outputs,
)

TAIL_METRICS = ("prefix_match_length", "extraction_probability")
TAIL_COLUMNS = ("max", "p99", "skewness", "gini", "top1pct_share")


@dataclass
class SkewConfig(StudyConfig):
    """Study 1: the tail of per-sample memorization vs epochs, dataset size, repetition, near-duplicates."""

    epochs: int = field(default=10, metadata={"help": "SFT epochs; every epoch is scored."})
    n_members: list[int] = field(
        default_factory=lambda: [80, 160, 320], metadata={"help": "Dataset sizes (records trained once) to compare."}
    )
    base_members: int = field(
        default=160,
        metadata={"help": "Dataset size of the epoch, repetition and near-duplicate comparisons (one of n_members)."},
    )
    near_duplicate_targets: int = field(default=16, metadata={"help": "Members given near-duplicates."})
    near_duplicates: int = field(
        default=4, metadata={"help": "Near-duplicates injected per target (prompt reworded, same completion)."}
    )
    survival_ks: list[int] = field(
        default_factory=lambda: [1, 2, 4, 6, 8], metadata={"help": "k of the P(PML >= k) comparison table."}
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("epochs", "base_members", "near_duplicate_targets", "near_duplicates"):
            positive_int(getattr(self, name), name)
        if not self.n_members or self.base_members not in self.n_members:
            raise StudyError(f"base_members ({self.base_members}) must be one of n_members ({self.n_members}).")
        for n in self.n_members:
            positive_int(n, "n_members entries")
        if self.near_duplicate_targets > self.base_members:
            raise StudyError(
                f"near_duplicate_targets ({self.near_duplicate_targets}) exceeds base_members ({self.base_members})."
            )


def tails(rows: list[dict]) -> dict:
    """Tail statistics of each metric of :data:`TAIL_METRICS` over ``rows``, plus the exact-extraction rate."""
    out = {m: tail_statistics([r[m] for r in rows]) for m in TAIL_METRICS}
    out["extraction_rate"] = float(np.mean([r["exact_extraction"] for r in rows]))
    out["n"] = len(rows)
    return out


def geometric_fit(rows: list[dict], ks: list[int] | None = None) -> dict:
    """Measured P(PML >= k) and the geometric model's, p = the mean per-token greedy recall (Li et al. 2025).

    A probe's PML cannot exceed its suffix length L_i, so the model's survival is mean_i [k <= L_i] p^k
    and its exact-extraction rate mean_i p^{L_i}.
    """
    p = token_weighted_recall(rows)
    pml = np.array([r["prefix_match_length"] for r in rows])
    lengths = np.array([r["suffix_length"] for r in rows])
    ks = list(range(int(lengths.max()) + 1)) if ks is None else ks
    measured = [float(np.mean(pml >= k)) for k in ks]
    model = [float(np.mean((k <= lengths) * p**k)) for k in ks]
    return {
        "p": p,
        "k": ks,
        "measured": measured,
        "geometric": model,
        "exact_measured": float(np.mean(pml == lengths)),
        "exact_geometric": float(np.mean(p**lengths)),
    }


def near_duplicate_prompt(prompt: str, j: int) -> str:
    """The ``j``-th rewording of a record's prompt: same question and answer, another ticket header."""
    headers = (
        "Support ticket, follow-up.",
        "Support ticket (reopened).",
        "Support ticket, escalated.",
        "Support ticket, second request.",
        "Support ticket, urgent.",
        "Support ticket, archived.",
    )
    if not prompt.startswith("Support ticket."):
        raise StudyError(f"near-duplicates are made for record prompts ('Support ticket. ...'), got {prompt!r}.")
    return headers[j % len(headers)] + prompt[len("Support ticket.") :]


def corpus_rows(n_members: int, seed: int, targets: int = 0, copies: int = 0) -> tuple[list[dict], list[dict]]:
    """Training rows and probes of the toy corpus; the first ``targets`` members get ``copies`` near-duplicates."""
    from obliviate.data.synthetic import make_corpus

    corpus = make_corpus(n_members=n_members, seed=seed)
    train, probes = [dict(r) for r in corpus.train], [dict(p) for p in corpus.probes]
    members = [p for p in probes if p["role"] == "member"][:targets]
    for probe in probes:
        probe["near_duplicates"] = 0
    for probe in members:
        probe["near_duplicates"] = copies
        train += [
            {
                "id": f"{probe['id']}~near{j}",
                "prompt": near_duplicate_prompt(probe["prompt"], j),
                "completion": probe["completion"],
            }
            for j in range(copies)
        ]
    return train, probes


def _run(config: SkewConfig, base: Path, out: Path, seed: int, n_members: int, dups: bool):
    copies = config.near_duplicates if dups else 0
    train, probes = corpus_rows(n_members, seed, config.near_duplicate_targets if dups else 0, copies)
    name = f"seed{seed}-n{n_members}{'-near' if dups else ''}"
    run = track_run(
        out / "runs" / name,
        base,
        train,
        probes,
        config,
        seed,
        training={"num_train_epochs": config.epochs},
        tracking={"every_n_steps": None, "every_epoch": True, "score_on_start": True},
    )
    print(f"  {name}: {len(train)} rows, {run.seconds:.0f}s", flush=True)
    return run, probes


def _per_seed(config: SkewConfig, base: Path, out: Path, seed: int) -> dict:
    result: dict = {"by_size": {}}
    for n in config.n_members:
        run, probes = _run(config, base, out, seed, n, dups=False)
        trained = run.rows_at(roles=TRAINED_ROLES)
        result["by_size"][n] = tails(trained)
        if n != config.base_members:
            continue
        result["by_epoch"] = [
            {"epoch": rows[0]["epoch"], **tails([r for r in rows if r["role"] in TRAINED_ROLES])}
            for _, rows in sorted(run.by_step().items())
        ]
        reps = {p["id"]: p["repetitions"] for p in probes}
        result["by_repetition"] = {
            k: tails([r for r in trained if reps[r["id"]] == k]) for k in sorted({reps[r["id"]] for r in trained})
        }
        result["geometric"] = geometric_fit(trained)
        result["geometric_table"] = geometric_fit(trained, config.survival_ks)
        targets = set([p["id"] for p in probes if p["role"] == "member"][: config.near_duplicate_targets])
        result["targets_before"] = tails([r for r in trained if r["id"] in targets])
    run, probes = _run(config, base, out, seed, config.base_members, dups=True)
    trained = run.rows_at(roles=TRAINED_ROLES)
    result["targets_after"] = tails(
        [r for r in trained if r["id"] in {p["id"] for p in probes if p["near_duplicates"]}]
    )
    result["with_near_duplicates"] = tails(trained)
    return result


def _tail_cells(results: list[dict]) -> list[str]:
    cells = [mean_std([r["prefix_match_length"][c] for r in results]) for c in TAIL_COLUMNS]
    cells += [mean_std([r["extraction_probability"][c] for r in results]) for c in ("p99", "gini", "top1pct_share")]
    return cells + [mean_std([r["extraction_rate"] for r in results])]


def _group_cells(results: list[dict]) -> list[str]:
    # Groups of 4-16 probes: their own Gini / p99 say little, their means and maxima do.
    return [
        results[0]["n"],
        *(mean_std([r[m][c] for r in results]) for m in TAIL_METRICS for c in ("mean", "max")),
        mean_std([r["extraction_rate"] for r in results]),
    ]


GROUP_HEADERS = ["probes", "PML mean", "PML max", "EP mean", "EP max", "extraction rate"]
TAIL_HEADERS = [
    "PML max",
    "PML p99",
    "PML skew",
    "PML Gini",
    "PML top-1%",
    "EP p99",
    "EP Gini",
    "EP top-1%",
    "extraction rate",
]


def tables(config: SkewConfig, seeds: list[dict]) -> list[tuple[str, str]]:
    epochs = [
        [f"{seeds[0]['by_epoch'][i]['epoch']:.0f}", *_tail_cells([s["by_epoch"][i] for s in seeds])]
        for i in range(len(seeds[0]["by_epoch"]))
    ]
    sizes = [[n, *_tail_cells([s["by_size"][n] for s in seeds])] for n in config.n_members]
    reps = [[k, *_group_cells([s["by_repetition"][k] for s in seeds])] for k in seeds[0]["by_repetition"]]
    near = [
        [label, *_group_cells([pick(s) for s in seeds])]
        for label, pick in (
            (f"{config.near_duplicate_targets} targets, no near-duplicates", lambda s: s["targets_before"]),
            (f"same targets + {config.near_duplicates} near-duplicates each", lambda s: s["targets_after"]),
            ("all trained probes, no near-duplicates", lambda s: s["by_size"][config.base_members]),
            ("all trained probes, with near-duplicates", lambda s: s["with_near_duplicates"]),
        )
    ]
    ks = seeds[0]["geometric_table"]["k"]
    geo = [
        [
            k,
            mean_std([s["geometric_table"]["measured"][i] for s in seeds]),
            mean_std([s["geometric_table"]["geometric"][i] for s in seeds]),
        ]
        for i, k in enumerate(ks)
    ]
    geo.append(
        [
            "exact (k = L)",
            mean_std([s["geometric"]["exact_measured"] for s in seeds]),
            mean_std([s["geometric"]["exact_geometric"] for s in seeds]),
        ]
    )
    where = f"members + canaries, n_members={config.base_members}, mean ± std over seeds {config.seeds}"
    return [
        (f"Tail vs epoch ({where})", markdown_table(["epoch", *TAIL_HEADERS], epochs)),
        (f"Tail vs dataset size (after {config.epochs} epochs)", markdown_table(["n_members", *TAIL_HEADERS], sizes)),
        (
            "Tail by repetition count (after training; 1 = members and 1x canaries)",
            markdown_table(["repetitions", *GROUP_HEADERS], reps),
        ),
        ("Near-duplicates injected", markdown_table(["set", *GROUP_HEADERS], near)),
        (
            f"P(PML >= k): measured vs geometric p^k, p = per-token recall = "
            f"{mean_std([s['geometric']['p'] for s in seeds])}",
            markdown_table(["k", "measured", "geometric"], geo),
        ),
    ]


def plots(out: Path, config: SkewConfig, seeds: list[dict]) -> list[str]:
    plt = pyplot()
    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, (metric, stat) in zip(
        axes,
        [("prefix_match_length", "p99"), ("prefix_match_length", "gini"), ("extraction_probability", "top1pct_share")],
    ):
        for s in seeds:
            ax.plot([e["epoch"] for e in s["by_epoch"]], [e[metric][stat] for e in s["by_epoch"]], marker=".")
        ax.set(xlabel="epoch", title=f"{metric} {stat}")
    paths.append(save_figure(fig, out / "skew_tail_vs_epoch.png"))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for s in seeds:
        g = s["geometric"]
        ax.semilogy(g["k"], np.maximum(g["measured"], 1e-3), "o-", color="C0", alpha=0.7)
        ax.semilogy(g["k"], np.maximum(g["geometric"], 1e-3), "s--", color="C1", alpha=0.7)
    ax.legend(["measured", "geometric p^k"])
    ax.set(xlabel="k (tokens)", ylabel="P(PML >= k)", title="prefix-match survival, final step")
    paths.append(save_figure(fig, out / "skew_pml_survival.png"))
    return paths


def run_study(config: SkewConfig, out: Path) -> dict:
    start = time.perf_counter()
    base = prepare_base(out, config)
    seeds = []
    for seed in config.seeds:
        seeds.append(_per_seed(config, base, out, seed))
    results = {"per_seed": dict(zip(config.seeds, seeds)), "plots": plots(out, config, seeds)}
    write_outputs(out, "skew", config, results, tables(config, seeds), time.perf_counter() - start)
    return results
