"""Study 2, fine-tuning method vs memorization (Mireshghallah et al. 2022, arXiv 2205.12506).

    obliviate study recipes/studies/finetune_method.yaml --out runs/studies/finetune_method

Mireshghallah et al. fine-tune GPT-2 on Penn Treebank (and others) with full fine-tuning, the head
only, and adapters, and attack each with a reference-model membership-inference test (the
likelihood ratio to the pre-trained model, threshold set on held-out data at 10% FPR). Their anchor:
with full fine-tuning recall at 10% FPR rose from 28% to 94.5% over 20 epochs while validation
perplexity plateaued near 19.6; fine-tuning the head was the most vulnerable, small adapters the least.

Here every method trains the same toy corpus from the same base; each epoch the callback scores the
members, canaries and never-trained controls (the corpus's and its calibration controls: 128 per group,
so a 10% FPR admits 25 of 256) with the base as reference model. Reported per epoch:
recall at ``max_fpr`` (:func:`obliviate.metrics.sets.recall_at_fpr`, threshold from the controls) and
AUC of ``reference_ratio`` (and of the loss attack), validation perplexity (the controls' token-weighted
suffix loss: never-trained text of the training formats), extraction rate; after training, the exposure
(Carlini et al. 2019) of the canaries repeated ``exposure_repetitions`` times.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from obliviate.metrics.sets import grouped_recall_at_fpr, grouped_roc_auc
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
    save_figure,
    track_run,
    write_outputs,
)

METHOD_KEYS = ("name", "learning_rate", "lora", "trainable")


def learning_rates(method: dict) -> list[float | None]:
    """The method's learning rates: a list sweeps them (one run per rate and seed); none: the training default."""
    value = method.get("learning_rate")
    return list(value) if isinstance(value, list) else [value]


def run_name(method: dict, lr: float | None) -> str:
    """``name`` for a method with one learning rate, ``name-lr<rate>`` for each rate of a sweep."""
    return method["name"] if len(learning_rates(method)) == 1 else f"{method['name']}-lr{lr:g}"


def check_learning_rates(method: dict) -> None:
    """A method's learning_rate: one positive number, null (the training default), or a list of distinct ones."""
    rates = learning_rates(method)
    if not rates or any(
        isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 0 for r in rates if r is not None
    ):
        raise StudyError(f"method {method['name']!r}: learning_rate must be > 0 or a list of them, got {rates!r}.")
    if None in rates and len(rates) > 1:
        raise StudyError(f"method {method['name']!r}: a learning-rate sweep cannot include null.")
    if len(set(rates)) != len(rates):
        raise StudyError(f"method {method['name']!r}: learning rate listed twice in {rates!r}.")


@dataclass
class FinetuneMethodConfig(StudyConfig):
    """Study 2: MIA recall, AUC, exposure and extraction for full, head-only and LoRA fine-tuning."""

    epochs: int = field(default=10, metadata={"help": "SFT epochs; every epoch is scored."})
    methods: list = field(
        default_factory=list,
        metadata={
            "help": "Each {name, learning_rate, lora (peft.LoraConfig fields) or trainable (regexes)}; "
            "neither lora nor trainable: full fine-tuning."
        },
    )
    mia_scores: list[str] = field(
        default_factory=lambda: ["reference_ratio", "neg_loss"],
        metadata={"help": "Membership scores (higher = member) from the history rows."},
    )
    max_fpr: float = field(default=0.1, metadata={"help": "FPR budget of the control-calibrated threshold."})
    threshold_per_group: bool = field(
        default=False,
        metadata={
            "help": "Set the threshold (and count AUC pairs) per probe group: each trained row against the "
            "controls of its own format. Fair to LOSS when the formats' base losses differ and the trained "
            "set and the controls mix them differently; false: one threshold over all controls (the paper's)."
        },
    )
    exposure_repetitions: list[int] = field(
        default_factory=lambda: [4, 8],
        metadata={"help": "Canaries of these repetition counts get an exposure after training; [] for none."},
    )
    exposure_samples: int = field(default=5000, metadata={"help": "Sampled candidates of the exposure fit."})
    exposure_seeds: int = field(
        default=1,
        metadata={
            "help": "Exposure for the first this many seeds only (each canary scores exposure_samples candidates)."
        },
    )
    corpus: Any = field(
        default=None,
        metadata={
            "help": "obliviate.data.synthetic.make_corpus keyword arguments (n_members, fact_repetitions, "
            "controls_per_group, ...); the seed comes from seeds. Smaller corpora for a larger model."
        },
    )
    match_ppl_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Also compare methods at matched utility (Mireshghallah et al. compare at similar "
            "perplexity): each run (method and rate) at its epoch whose seed-mean validation perplexity is "
            "nearest this multiple of the base's (> 1: a cost the toy pays; < 1: a gain a new domain gives). "
            "null: off."
        },
    )
    match_tolerance: float = field(
        default=0.1,
        metadata={"help": "A matched point more than this relative distance from the target is reported as unmatched."},
    )

    def __post_init__(self):
        super().__post_init__()
        positive_int(self.epochs, "epochs")
        if not isinstance(self.threshold_per_group, bool):
            raise StudyError(f"threshold_per_group must be true or false, got {self.threshold_per_group!r}.")
        if not self.methods:
            raise StudyError("methods is empty: give at least one {name, learning_rate, ...} entry.")
        names = set()
        for method in self.methods:
            if not isinstance(method, dict) or "name" not in method:
                raise StudyError(f"each method needs a name (and learning_rate, lora or trainable), got {method!r}.")
            unknown = set(method) - set(METHOD_KEYS)
            if unknown:
                raise StudyError(f"method {method['name']!r}: unknown keys {sorted(unknown)}; use {METHOD_KEYS}.")
            if method.get("lora") and method.get("trainable"):
                raise StudyError(f"method {method['name']!r}: give lora or trainable, not both.")
            if method["name"] in names:
                raise StudyError(f"method name {method['name']!r} appears twice.")
            names.add(method["name"])
            check_learning_rates(method)
        if isinstance(self.exposure_seeds, bool) or not isinstance(self.exposure_seeds, int) or self.exposure_seeds < 0:
            raise StudyError(f"exposure_seeds must be an integer >= 0, got {self.exposure_seeds!r}.")
        if self.match_ppl_ratio is not None and not (self.match_ppl_ratio > 0 and self.match_ppl_ratio != 1):
            raise StudyError(f"match_ppl_ratio must be > 0 and not 1 (or null), got {self.match_ppl_ratio}.")
        if not 0 < self.match_tolerance < 1:
            raise StudyError(f"match_tolerance must be in (0, 1), got {self.match_tolerance}.")
        self.corpus = dict(self.corpus or {})
        from obliviate.data.synthetic import make_corpus

        allowed = set(inspect.signature(make_corpus).parameters) - {"seed"}
        unknown = set(self.corpus) - allowed
        if unknown:
            raise StudyError(f"corpus: unknown make_corpus arguments {sorted(unknown)}; use {sorted(allowed)}.")
        if not 0 < self.max_fpr < 1:
            raise StudyError(f"max_fpr must be in (0, 1), got {self.max_fpr}.")


def trainable_parameters(model_dir: str | Path, method: dict) -> int:
    """How many weights ``method`` trains on the model at ``model_dir`` (the count the trainer updates)."""
    from obliviate.modeling import freeze_except, load_model

    model = load_model(model_dir)
    if method.get("lora"):
        from peft import LoraConfig, get_peft_model

        # The adapter run_track builds from the same fields (its lora: section, task CAUSAL_LM).
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **method["lora"]))
    elif method.get("trainable") is not None:
        freeze_except(model, method["trainable"])
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def validation_perplexity(controls: list[dict]) -> float:
    """exp of the controls' token-weighted mean suffix NLL (``loss`` is the per-token mean of each)."""
    tokens = sum(r["suffix_length"] for r in controls)
    return math.exp(sum(r["loss"] * r["suffix_length"] for r in controls) / tokens)


def mia_at_step(rows: list[dict], scores: list[str], max_fpr: float, per_group: bool = False) -> dict:
    """Recall at ``max_fpr`` (threshold on the controls) and AUC of each score; members+canaries vs controls.

    ``per_group``: each trained row meets the threshold of its own group's controls, and AUC counts
    within-group pairs only (:func:`~obliviate.metrics.sets.grouped_recall_at_fpr`).
    """
    from obliviate.metrics.sets import mia_score

    trained = [r for r in rows if r["role"] in TRAINED_ROLES]
    controls = [r for r in rows if r["role"] == "control"]
    out: dict[str, Any] = {
        "epoch": rows[0]["epoch"],
        "val_ppl": validation_perplexity(controls),
        "extraction_rate": float(np.mean([r["exact_extraction"] for r in trained])),
    }
    # Pooled is the one-group case of the per-group rule (the same threshold, the same pairs).
    trained_groups = [r["group"] if per_group else None for r in trained]
    control_groups = [r["group"] if per_group else None for r in controls]
    for name in scores:
        pos = [mia_score(r, name) for r in trained]
        neg = [mia_score(r, name) for r in controls]
        if None in pos or None in neg:
            raise StudyError(f"history rows have no {name!r}; reference_ratio needs tracking.reference_model.")
        out[f"recall/{name}"] = grouped_recall_at_fpr(pos, trained_groups, neg, control_groups, max_fpr)
        out[f"auc/{name}"] = grouped_roc_auc(pos, trained_groups, neg, control_groups)
    return out


def keep_model_callback():
    """A ``TrainerCallback`` that keeps the trained model (LoRA-wrapped or not) for the exposure after training."""
    from transformers import TrainerCallback

    class KeepModel(TrainerCallback):
        model = tokenizer = None

        def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            self.model, self.tokenizer = model, processing_class

    return KeepModel()


def canary_exposures(keep, probe_rows: list[dict], config: FinetuneMethodConfig) -> dict[int, list[float]]:
    """Exposure (bits) of each canary of ``exposure_repetitions``, by repetition count (estimated fit)."""
    from obliviate.data.probes import load_probes
    from obliviate.metrics.exposure import ExposureConfig, exposures

    chosen = [r for r in probe_rows if r["role"] == "canary" and r["repetitions"] in config.exposure_repetitions]
    if not chosen:
        return {}
    probes = load_probes(chosen, keep.tokenizer)
    reps = {r["id"]: r["repetitions"] for r in chosen}
    # |R| = 10^6: estimated from a skew-normal fit to sampled candidates (exact enumeration costs minutes).
    found = exposures(
        keep.model, keep.tokenizer, probes, ExposureConfig(exact_limit=0, samples=config.exposure_samples)
    )
    out: dict[int, list[float]] = {}
    for row in found:
        out.setdefault(reps[row["id"]], []).append(row["exposure"])
    return out


def _run(config: FinetuneMethodConfig, base: Path, out: Path, method: dict, lr: float | None, seed: int) -> dict:
    from obliviate.data.synthetic import make_corpus

    corpus = make_corpus(**config.corpus, seed=seed)
    probes = probes_with_calibration(corpus)  # 128 controls per group: a real 10%-FPR threshold
    keep = keep_model_callback()
    extra = {k: method[k] for k in ("lora", "trainable") if method.get(k) is not None}
    training = {"num_train_epochs": config.epochs}
    if lr is not None:
        training["learning_rate"] = lr
    name = run_name(method, lr)
    run = track_run(
        out / "runs" / f"{name}-seed{seed}",
        base,
        corpus.train,
        probes,
        config,
        seed,
        training=training,
        callbacks=(keep,),
        tracking={"every_n_steps": None, "every_epoch": True, "score_on_start": True, "reference_model": "base"},
        **extra,
    )
    curve = [
        mia_at_step(rows, config.mia_scores, config.max_fpr, config.threshold_per_group)
        for _, rows in sorted(run.by_step().items())
    ]
    wanted = config.exposure_repetitions and config.seeds.index(seed) < config.exposure_seeds
    exposure = canary_exposures(keep, probes, config) if wanted else {}
    print(f"  {name} seed {seed}: {run.seconds:.0f}s, val ppl {curve[-1]['val_ppl']:.2f}", flush=True)
    return {"curve": curve, "exposure": exposure, "seconds": run.seconds, "learning_rate": lr}


def base_perplexity(results: dict) -> float:
    """The base's validation perplexity: epoch 0 of any run (every run starts from the base), seed mean."""
    return float(np.mean([s["curve"][0]["val_ppl"] for s in next(iter(results.values()))]))


def tables(config: FinetuneMethodConfig, results: dict, params: dict) -> list[tuple[str, str]]:
    """The final-epoch table (every run), the per-epoch curve (each method's first rate) and the matched one."""
    score = config.mia_scores[0]
    pct = f"{config.max_fpr:.0%}"
    final = []
    for method in config.methods:
        for lr in learning_rates(method):
            seeds = results[run_name(method, lr)]
            last = [s["curve"][-1] for s in seeds]
            row = [run_name(method, lr), "-" if lr is None else f"{lr:g}", params[method["name"]]]
            row.append(mean_std([x["val_ppl"] for x in last]))
            for m in config.mia_scores:
                row += [mean_std([x[f"recall/{m}"] for x in last]), mean_std([x[f"auc/{m}"] for x in last])]
            row.append(mean_std([x["extraction_rate"] for x in last]))
            for k in config.exposure_repetitions if config.exposure_seeds else ():
                row.append(mean_std([float(np.mean(s["exposure"][k])) for s in seeds if k in s["exposure"]]))
            final.append(row)
    headers = ["run", "learning rate", "trainable params", "val ppl"]
    for m in config.mia_scores:
        headers += [f"recall@{pct}FPR {m}", f"AUC {m}"]
    exposed = config.exposure_repetitions if config.exposure_seeds else []
    headers += ["extraction rate", *(f"exposure x{k} (bits of 19.9)" for k in exposed)]
    # One column per method (its first learning rate): a column per rate of a sweep would not fit a page.
    firsts = [run_name(m, learning_rates(m)[0]) for m in config.methods]
    epochs = [[f"{e['epoch']:.3g}"] for e in results[firsts[0]][0]["curve"]]
    for name in firsts:
        for i, row in enumerate(epochs):
            seeds = results[name]
            row.append(
                f"{mean_std([s['curve'][i][f'recall/{score}'] for s in seeds])} "
                f"(ppl {np.mean([s['curve'][i]['val_ppl'] for s in seeds]):.2f})"
            )
    swept = any(len(learning_rates(m)) > 1 for m in config.methods)
    out = [
        (f"After {config.epochs} epochs (mean ± std over seeds {config.seeds})", markdown_table(headers, final)),
        (
            f"recall@{pct}FPR of {score} over epochs (validation perplexity)"
            + (": each method at its first learning rate" if swept else ""),
            markdown_table(["epoch", *firsts], epochs),
        ),
    ]
    if config.match_ppl_ratio is not None:
        base_ppl = base_perplexity(results)
        target = config.match_ppl_ratio * base_ppl
        # One row per run, not per method: at equal perplexity the rate decides as much as the method does
        # (a slower rate reaches the same perplexity after more epochs, with more exposures of each record).
        rows = [
            matched_row(run_name(m, lr), lr, results[run_name(m, lr)], score, target, config.match_tolerance)
            for m in config.methods
            for lr in learning_rates(m)
        ]
        out.append(
            (
                f"At matched utility: each run at its epoch with seed-mean validation perplexity nearest "
                f"{config.match_ppl_ratio:g} x the base's {base_ppl:.2f} = {target:.2f}",
                markdown_table(
                    [
                        "run",
                        "learning rate",
                        "epoch",
                        "val ppl",
                        f"recall@{pct}FPR {score}",
                        f"AUC {score}",
                        "extraction rate",
                    ],
                    rows,
                ),
            )
        )
    return out


def matched_row(name: str, rate: float | None, seeds: list[dict], score: str, target: float, tolerance: float) -> list:
    """The run's row at its epoch whose seed-mean validation perplexity is nearest ``target``.

    Nearest in log perplexity (a ratio, so 10% above and 10% below weigh the same); epoch 0 (the base, the
    same for every run) is never a match. A nearest epoch further than ``tolerance`` (relative) from the
    target is shown as unmatched with its perplexity, so a table never compares runs at unlike utility.
    """
    ppl = [float(np.mean([s["curve"][i]["val_ppl"] for s in seeds])) for i in range(len(seeds[0]["curve"]))]
    i = min(range(1, len(ppl)), key=lambda k: abs(math.log(ppl[k] / target)))
    shown = "-" if rate is None else f"{rate:g}"
    if abs(ppl[i] / target - 1) > tolerance:
        return [name, shown, "-", f"{ppl[i]:.2f} (nearest; not within {tolerance:.0%})", "-", "-", "-"]
    return [
        name,
        shown,
        f"{seeds[0]['curve'][i]['epoch']:.3g}",
        f"{ppl[i]:.2f}",
        mean_std([s["curve"][i][f"recall/{score}"] for s in seeds]),
        mean_std([s["curve"][i][f"auc/{score}"] for s in seeds]),
        mean_std([s["curve"][i]["extraction_rate"] for s in seeds]),
    ]


def plots(out: Path, config: FinetuneMethodConfig, results: dict) -> list[str]:
    """Recall and validation perplexity per epoch (a line per seed), and recall against perplexity (seed means).

    The third panel is the matched-utility comparison as a curve: each run's epochs in the (perplexity,
    recall) plane, so methods are read off at any common perplexity, not only the recipe's target.
    """
    plt = pyplot()
    score = config.mia_scores[0]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    # A colour per method, a line style per rate of its sweep (first rate solid).
    styles = {
        run_name(m, lr): (f"C{i}", ["-", "--", ":", "-."][k % 4])
        for i, m in enumerate(config.methods)
        for k, lr in enumerate(learning_rates(m))
    }
    for name, seeds in results.items():
        colour, style = styles[name]
        for s in seeds:
            epochs = [e["epoch"] for e in s["curve"]]
            recall = [e[f"recall/{score}"] for e in s["curve"]]
            axes[0].plot(epochs, recall, color=colour, linestyle=style, alpha=0.6)
            axes[1].plot(epochs, [e["val_ppl"] for e in s["curve"]], color=colour, linestyle=style, alpha=0.6)
        ppl = np.mean([[e["val_ppl"] for e in s["curve"]] for s in seeds], axis=0)
        recall = np.mean([[e[f"recall/{score}"] for e in s["curve"]] for s in seeds], axis=0)
        # From epoch 1: epoch 0 is the base, the same point (recall 0) for every run, drawn once below.
        axes[2].plot(ppl[1:], recall[1:], marker="o", markersize=3, color=colour, linestyle=style, label=name)
    base_ppl = base_perplexity(results)
    axes[2].plot([base_ppl], [0.0], "ks", markersize=5, label=f"base (ppl {base_ppl:.1f})")
    if config.match_ppl_ratio is not None:
        target = config.match_ppl_ratio * base_ppl
        axes[2].axvline(target, color="grey", linestyle=":", label=f"matched ppl {target:.1f}")
    axes[0].set(xlabel="epoch", ylabel=f"recall @ {config.max_fpr:.0%} FPR", title=f"MIA ({score})")
    axes[1].set(xlabel="epoch", ylabel="validation perplexity (controls)", title="utility", yscale="log")
    axes[2].set(
        xlabel="validation perplexity (seed mean)",
        ylabel=f"recall @ {config.max_fpr:.0%} FPR (seed mean)",
        title="memorization at equal utility",
        xscale="log",
    )
    from matplotlib.ticker import LogFormatter

    for axis in (axes[1].yaxis, axes[2].xaxis):  # the log axes: plain numbers, minor labels within a decade
        axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    axes[2].legend(fontsize=7 if len(results) > 6 else None)
    return [save_figure(fig, out / "finetune_method_mia.png")]


def run_study(config: FinetuneMethodConfig, out: Path) -> dict:
    start = time.perf_counter()
    base = prepare_base(out, config)
    params = {m["name"]: trainable_parameters(base, m) for m in config.methods}
    results = {
        run_name(m, lr): [_run(config, base, out, m, lr, seed) for seed in config.seeds]
        for m in config.methods
        for lr in learning_rates(m)
    }
    record = {"trainable_parameters": params, "per_method": results, "plots": plots(out, config, results)}
    write_outputs(out, "finetune_method", config, record, tables(config, results, params), time.perf_counter() - start)
    return record
