"""Study 3, data density vs memorization (Kirchenbauer et al. 2024, LMD3, arXiv 2405.06331).

    obliviate study recipes/studies/density.yaml --out runs/studies/density

LMD3 finds that the training-set density around a sample predicts its memorization: a sample with
many near neighbours (duplicates, paraphrases) is memorized more. Here the density at each trained
probe (members and canaries) is the Gaussian kernel density of the training set in the embedding
space of the toy's own base model (attention-masked mean of its last hidden states, L2-normalized;
the kernel of :mod:`obliviate.metrics.density`, bandwidth by Scott's rule on the training set before
injection unless given, one exact copy of the probe itself left out). Copies or paraphrases of ``targets`` members are injected into
the training set to raise their density; after fine-tuning, memorization accuracy (MA) and the flag
are regressed on log-density by least squares, with R² and slope and their bootstrap percentile
confidence intervals. The flag rule's control percentile is taken over 128 never-trained controls per
group (the corpus's and its calibration controls), not over the corpus's 16.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from obliviate.studies.common import (
    TRAINED_ROLES,
    StudyConfig,
    StudyError,
    markdown_table,
    mean_std,
    positive_int,
    prepare_base,
    probes_with_calibration,
    pyplot,
    read_jsonl,
    save_figure,
    track_run,
    write_outputs,
)

KINDS = ("copy", "paraphrase")
# Same question, other words: each record question of data/synthetic.py and its rewordings.
PARAPHRASES = {
    r"What is the phone number of (.+)\?": (
        "Which phone number does {} have?",
        "How can {} be reached by phone?",
        "Give the phone number of {}.",
        "Which number should we call for {}?",
    ),
    r"Which e-mail does (.+) use\?": (
        "What is the e-mail address of {}?",
        "Where can {} be e-mailed?",
        "Give the e-mail of {}.",
        "Which address does {} read mail at?",
    ),
    r"Where does (.+) live\?": (
        "What is the home address of {}?",
        "At which address does {} live?",
        "Give the address of {}.",
        "Where is {} registered as living?",
    ),
}


@dataclass
class DensityStudyConfig(StudyConfig):
    """Study 3: memorization regressed on training-set density, density raised by injected copies/paraphrases."""

    epochs: int = field(default=6, metadata={"help": "SFT epochs (memorization is read after the last)."})
    targets: int = field(default=48, metadata={"help": "Members that get injections (the first ones)."})
    levels: list[int] = field(
        default_factory=lambda: [0, 1, 2, 4],
        metadata={"help": "Injections per target, assigned round-robin (0: the target stays alone)."},
    )
    kinds: list[str] = field(
        default_factory=lambda: list(KINDS),
        metadata={
            "help": "copy (exact duplicate rows) and/or paraphrase (same answer, reworded question); alternated."
        },
    )
    bandwidth: float | str = field(
        default="scott", metadata={"help": "Kernel bandwidth: scott, silverman or a number."}
    )
    bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples of the regression's CI."})
    confidence: float = field(default=0.95, metadata={"help": "Level of the bootstrap percentile interval."})

    def __post_init__(self):
        super().__post_init__()
        for name in ("epochs", "targets", "bootstrap"):
            positive_int(getattr(self, name), name)
        if not self.levels or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in self.levels):
            raise StudyError(f"levels must be a non-empty list of integers >= 0, got {self.levels!r}.")
        if max(self.levels) > 4:
            raise StudyError(
                f"levels above 4 need more paraphrase templates than the 4 per question; got {self.levels}."
            )
        if not self.kinds or set(self.kinds) - set(KINDS):
            raise StudyError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds!r}.")
        if not 0 < self.confidence < 1:
            raise StudyError(f"confidence must be in (0, 1), got {self.confidence}.")
        from obliviate.metrics.density import DensityConfig

        self.bandwidth = DensityConfig(bandwidth=self.bandwidth).bandwidth  # the one bandwidth check


def paraphrase(prompt: str, j: int) -> str:
    """The ``j``-th rewording of a record prompt's question (the answer stays the same)."""
    for pattern, templates in PARAPHRASES.items():
        match = re.search(pattern, prompt)
        if match:
            return (
                prompt[: match.start()] + templates[j % len(templates)].format(match.group(1)) + prompt[match.end() :]
            )
    raise StudyError(f"no paraphrase template fits {prompt!r}: paraphrases are made for the toy's record questions.")


def inject(train: list[dict], probes: list[dict], config: DensityStudyConfig) -> list[dict]:
    """``train`` plus the injections; each target probe gets ``kind`` and ``injections`` (others: none, 0)."""
    rows = list(train)
    members = [p for p in probes if p["role"] == "member"]
    if config.targets > len(members):
        raise StudyError(f"targets ({config.targets}) exceeds the corpus's {len(members)} members.")
    for probe in probes:
        probe.update(kind="none", injections=0)
    for i, probe in enumerate(members[: config.targets]):
        level, kind = config.levels[i % len(config.levels)], config.kinds[(i // len(config.levels)) % len(config.kinds)]
        probe.update(kind=kind if level else "none", injections=level)
        for j in range(level):
            prompt = probe["prompt"] if kind == "copy" else paraphrase(probe["prompt"], j)
            rows.append({"id": f"{probe['id']}~{kind}{j}", "prompt": prompt, "completion": probe["completion"]})
    return rows


def densities(
    base: Path, probes: list[dict], before: list[dict], after: list[dict], config: DensityStudyConfig
) -> dict:
    """Log-density at each probe (by id) of the training set ``before`` and ``after`` injection.

    One bandwidth for both, set (rule of thumb, or the given number) on the ``before`` set: Scott's h
    recomputed on the injected set would move every log-density by (d/2) log(h'^2/h^2), d = 128 here,
    far more than the injections themselves do.
    """
    import torch

    from obliviate.metrics.density import bandwidth_rule, embed_texts, kernel_log_density
    from obliviate.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(base))

    def embed(rows: list[dict]) -> torch.Tensor:
        return torch.nn.functional.normalize(
            embed_texts(model, tokenizer, [r["prompt"] + r["completion"] for r in rows]), dim=-1
        )

    points, old, new = embed(probes), embed(before), embed(after)
    h = bandwidth_rule(old, config.bandwidth) if isinstance(config.bandwidth, str) else float(config.bandwidth)
    ids = [p["id"] for p in probes]
    return {
        "before": dict(zip(ids, kernel_log_density(old, points, h, leave_one_out=True)[0].tolist())),
        "after": dict(zip(ids, kernel_log_density(new, points, h, leave_one_out=True)[0].tolist())),
        "bandwidth": h,
    }


def regression(x, y) -> dict[str, float]:
    """Least squares y = a + b x: slope b, intercept a and R² (the squared correlation)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.std() == 0:
        raise StudyError("every probe has the same density: nothing to regress on.")
    b = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    a = float(y.mean() - b * x.mean())
    residual = ((y - a - b * x) ** 2).sum()
    total = ((y - y.mean()) ** 2).sum()
    return {"slope": b, "intercept": a, "r2": float(1 - residual / total) if total > 0 else 0.0}


def bootstrap_regression(x, y, resamples: int, confidence: float, seed: int = 0) -> dict:
    """:func:`regression` with percentile intervals of slope and R² over ``resamples`` resamplings of the probes."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        idx = rng.integers(0, len(x), len(x))
        if x[idx].std() > 0:
            draws.append(regression(x[idx], y[idx]))
    tail = 100 * (1 - confidence) / 2
    out = regression(x, y)
    for key in ("slope", "r2"):
        values = [d[key] for d in draws]
        out[f"{key}_ci"] = [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
    return out


def _per_seed(config: DensityStudyConfig, base: Path, out: Path, seed: int) -> dict:
    from obliviate.data.synthetic import make_corpus

    corpus = make_corpus(seed=seed)
    probes = probes_with_calibration(corpus)  # 128 controls per group: the flag rule's 99th percentile
    train = inject(corpus.train, probes, config)
    trained = [p for p in probes if p["role"] in TRAINED_ROLES]
    density = densities(base, trained, corpus.train, train, config)
    run = track_run(
        out / "runs" / f"seed{seed}",
        base,
        train,
        probes,
        config,
        seed,
        training={"num_train_epochs": config.epochs},
        tracking={"every_n_steps": None, "every_epoch": False},
    )
    final = {r["id"]: r for r in run.rows_at(roles=TRAINED_ROLES)}
    flagged = {r["id"] for r in read_jsonl(run.dir / "memorization" / "flagged.jsonl")}
    rows = [
        {
            "id": p["id"],
            "role": p["role"],
            "kind": p["kind"],
            "injections": p["injections"],
            "repetitions": p["repetitions"],
            "log_density_before": density["before"][p["id"]],
            "log_density": density["after"][p["id"]],
            "ma": final[p["id"]]["memorization_accuracy"],
            "flagged": int(p["id"] in flagged),
        }
        for p in trained
    ]
    x = [r["log_density"] for r in rows]
    fits = {
        y: bootstrap_regression(x, [r[y] for r in rows], config.bootstrap, config.confidence, seed)
        for y in ("ma", "flagged")
    }
    print(f"  seed {seed}: {len(train)} rows, {run.seconds:.0f}s, R² MA {fits['ma']['r2']:.3f}", flush=True)
    return {"bandwidth": density["bandwidth"], "rows": rows, "fits": fits, "seconds": run.seconds}


def _ci(fit: dict, key: str) -> str:
    lo, hi = fit[f"{key}_ci"]
    return f"{fit[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def tables(config: DensityStudyConfig, results: dict) -> list[tuple[str, str]]:
    pct = f"{config.confidence:.0%}"
    fits = [
        [
            seed,
            f"{r['bandwidth']:.4f}",
            len(r["rows"]),
            _ci(r["fits"]["ma"], "r2"),
            _ci(r["fits"]["ma"], "slope"),
            _ci(r["fits"]["flagged"], "r2"),
            _ci(r["fits"]["flagged"], "slope"),
        ]
        for seed, r in results.items()
    ]
    groups: dict[tuple, list] = {}
    for r in results.values():
        for row in r["rows"]:
            key = ("canary", f"x{row['repetitions']}") if row["role"] == "canary" else (row["kind"], row["injections"])
            groups.setdefault(key, []).append(row)
    by_group = [
        [
            kind,
            level,
            len(rows) // len(results),
            mean_std([r["log_density_before"] for r in rows]),
            mean_std([r["log_density"] for r in rows]),
            mean_std([r["ma"] for r in rows]),
            f"{np.mean([r['flagged'] for r in rows]):.3f}",
        ]
        for (kind, level), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))
    ]
    return [
        (
            f"Regression on log-density (members + canaries; {pct} bootstrap CI over {config.bootstrap} resamples)",
            markdown_table(
                ["seed", "bandwidth h", "probes", "R² (MA)", "slope (MA)", "R² (flagged)", "slope (flagged)"], fits
            ),
        ),
        (
            "By injection (pooled over seeds; ± is the spread over probes)",
            markdown_table(
                ["kind", "injections", "probes/seed", "log-density before", "log-density after", "MA", "flagged rate"],
                by_group,
            ),
        ),
    ]


def plots(out: Path, results: dict) -> list[str]:
    plt = pyplot()
    first = next(iter(results.values()))["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, kind in enumerate(("none", *KINDS)):
        rows = [r for r in first if r["kind"] == kind and r["role"] == "member"]
        ax.scatter([r["log_density"] for r in rows], [r["ma"] for r in rows], s=12, color=f"C{i}", label=kind)
    rows = [r for r in first if r["role"] == "canary"]
    ax.scatter([r["log_density"] for r in rows], [r["ma"] for r in rows], s=14, marker="x", color="C3", label="canary")
    ax.set(
        xlabel="log training-set density (base embeddings)",
        ylabel="memorization accuracy",
        title="memorization vs density (first seed)",
    )
    ax.legend(fontsize=8)
    return [save_figure(fig, out / "density_scatter.png")]


def run_study(config: DensityStudyConfig, out: Path) -> dict:
    start = time.perf_counter()
    base = prepare_base(out, config)
    results = {seed: _per_seed(config, base, out, seed) for seed in config.seeds}
    record = {
        "per_seed": results,
        "plots": plots(out, results),
        "embedding": f"{config.model or 'toy'} base model, attention-masked mean of last hidden states, L2-normalized",
        "kernel": "Gaussian, isotropic",
        "bandwidth_rule": config.bandwidth,
    }
    write_outputs(out, "density", config, record, tables(config, results), time.perf_counter() - start)
    return record
