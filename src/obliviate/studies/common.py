"""What every study shares: its recipe base class, one tracked SFT run on the toy, and the output files.

    python -c "from obliviate.studies.common import StudyConfig; help(StudyConfig)"

A study recipe (``recipes/studies/*.yaml``) names its ``study`` and fills the fields of that study's
config dataclass (a subclass of :class:`StudyConfig`); ``minimal:`` holds the dotted overrides that
``--minimal`` applies (a few steps, one seed: what the tests run). Each study writes
``OUT/<study>.json`` (every measured number), ``OUT/<study>.md`` (its tables) and ``OUT/*.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from obliviate.config import RecipeError

TRAINED_ROLES = ("member", "canary")
SMOLLM2 = "smollm2"  # StudyConfig.model's name for the packaged SmolLM2-135M-Instruct


class StudyError(ValueError):
    """A study recipe or run that cannot go ahead; the message says what to change."""


def positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StudyError(f"{name} must be an integer >= 1, got {value!r}.")


@dataclass
class StudyConfig:
    """Fields every study recipe has; each study's config adds its own."""

    study: str = field(default="", metadata={"help": "Which study: skew, finetune_method, density or erasure."})
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "SFT seeds (corpus shuffle and training); >= 3 where a gap is small."},
    )
    toy: Any = field(default=None, metadata={"help": "obliviate.toy.ToyConfig fields of the base model."})
    model: str | None = field(
        default=None,
        metadata={
            "help": "Fine-tune this model instead of the toy base: a model directory, a .gguf file, or "
            "'smollm2' (the packaged SmolLM2-135M-Instruct, converted once as `obliviate real-model` does). "
            "The corpus is the toy's records either way. null: the toy base."
        },
    )
    training: Any = field(default=None, metadata={"help": "SFTConfig fields shared by every run of the study."})
    tracking: Any = field(default=None, metadata={"help": "TrackConfig fields shared by every run of the study."})
    minimal: Any = field(default=None, metadata={"help": "Dotted overrides --minimal applies (seconds, one seed)."})
    is_minimal: bool = field(
        default=False, init=False, metadata={"help": "Whether the minimal overrides were applied."}
    )

    def __post_init__(self):
        from obliviate.config import section
        from obliviate.toy import ToyConfig

        self.toy = section(ToyConfig, self.toy, "toy")
        if not isinstance(self.seeds, list) or not self.seeds:
            raise StudyError(f"seeds must be a non-empty list of integers, got {self.seeds!r}.")
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise StudyError(f"seeds must be integers, got {seed!r}.")
        for name in ("training", "tracking", "minimal"):
            value = getattr(self, name) or {}
            if not isinstance(value, dict):
                raise StudyError(f"{name} must be a mapping of keys to values, got {value!r}.")
            setattr(self, name, dict(value))
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise StudyError(
                f"model must be a model directory, a .gguf file or 'smollm2' (or null), got {self.model!r}."
            )
        if self.model not in (None, SMOLLM2) and not Path(self.model).exists():
            raise StudyError(
                f"model {self.model} does not exist: give a model directory or .gguf file, 'smollm2' for the "
                "packaged SmolLM2-135M-Instruct, or null for the toy base."
            )
        if "output_dir" in self.training:
            raise StudyError("set the study's output with --out, not training.output_dir.")


def load_study(path: str | os.PathLike, config_class, minimal: bool = False, overrides: dict | None = None):
    """Read a study recipe into ``config_class``, applying its ``minimal:`` overrides under ``--minimal``."""
    from obliviate.config import load_recipe, read_yaml

    data = read_yaml(path)
    extra = dict(overrides or {})
    if minimal:
        quick = data.get("minimal") or {}
        if not isinstance(quick, dict):
            raise RecipeError(f"minimal: in {path} must be a mapping of dotted keys, got {quick!r}.")
        extra = {**quick, **extra}
    config = load_recipe(data, config_class, extra, where=f"recipe {path}")
    config.is_minimal = minimal
    return config


def prepare_base(out: Path, config: StudyConfig) -> Path:
    """The model directory (or .gguf) every run of the study fine-tunes from.

    ``config.model`` when set (``'smollm2'``: the packaged SmolLM2-135M-Instruct, converted once into the
    model cache); otherwise the toy build's ``base/``, cached under ``~/.cache/obliviate``.
    """
    if config.model == SMOLLM2:
        from obliviate.real import ensure_real_model

        return ensure_real_model()[0]
    if config.model is not None:
        return Path(config.model)
    from obliviate.demo.toycache import prepare_toy

    toy, _ = prepare_toy(out / "toy", config.toy)
    return toy / "base"


def probes_with_calibration(corpus) -> list[dict]:
    """Copies of the corpus's probes followed by its ``calibration_controls`` (never-trained, per group).

    A study that sets a threshold on the controls (a 10%-FPR cut, a 99th percentile) needs many: with the
    corpus's 16 controls per group a 10% FPR lets 3 of 32 through and a 99th percentile is their maximum;
    ``make_corpus(controls_per_group=128)`` draws the rest last, so every other row is unchanged.
    """
    return [dict(p) for p in corpus.probes + corpus.calibration_controls]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class TrackedRun:
    """One tracked SFT run: its per-probe history, per-step summaries, ``track.json`` and wall time."""

    dir: Path
    history: list[dict]
    summaries: list[dict]
    record: dict
    seconds: float

    def steps(self) -> list[int]:
        return sorted({r["step"] for r in self.history})

    def rows_at(self, step: int | None = None, roles: tuple[str, ...] | None = None) -> list[dict]:
        """History rows at ``step`` (default: the last scored step), of ``roles`` (default: all)."""
        step = self.steps()[-1] if step is None else step
        return [r for r in self.history if r["step"] == step and (roles is None or r["role"] in roles)]

    def by_step(self) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = defaultdict(list)
        for r in self.history:
            out[r["step"]].append(r)
        return dict(out)


@contextlib.contextmanager
def _quiet():
    """No dataset / weight-loading progress bars in a study's log (restored after)."""
    import datasets
    from transformers.utils import logging as hf_logging

    bars, hf_bars = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if hf_bars:
            hf_logging.enable_progress_bar()
        if bars:
            datasets.enable_progress_bars()


def track_run(
    run_dir: Path,
    base: Path,
    train_rows: list[dict],
    probe_rows: list[dict],
    config: StudyConfig,
    seed: int,
    training: dict | None = None,
    tracking: dict | None = None,
    callbacks: tuple = (),
    **recipe: Any,
) -> TrackedRun:
    """Fine-tune the base on ``train_rows`` with the memorization callback scoring ``probe_rows``.

    Args:
        run_dir: the run's directory (``train.jsonl``, ``probes.jsonl`` and the track output go there).
        base: the model to fine-tune (:func:`prepare_base`).
        train_rows / probe_rows: SFT rows and probes (``id``, ``role``, ``prompt``, ``completion``, ...).
        config: the study's config; its ``training`` and ``tracking`` sections, then ``training`` /
            ``tracking`` given here, then ``training.seed = seed``.
        callbacks: more ``TrainerCallback``s for the trainer.
        recipe: more top-level track-recipe keys (``lora``, ``trainable``).
    """
    from obliviate.callbacks import run_track

    train_file = write_jsonl(run_dir / "train.jsonl", train_rows)
    probes_file = write_jsonl(run_dir / "probes.jsonl", probe_rows)
    settings = {
        "model": str(base),
        "train_file": str(train_file),
        "probes": str(probes_file),
        "output_dir": str(run_dir / "track"),
        # Studies score on their own schedule and print one line per run, not the trainer's logs.
        "training": {
            "logging_steps": 10_000,
            "disable_tqdm": True,
            "report_to": "none",
            **config.training,
            **(training or {}),
            "seed": seed,
        },
        "tracking": {"max_probes": None, **config.tracking, **(tracking or {})},
        **recipe,
    }
    from transformers import PrinterCallback

    class Silent(PrinterCallback):  # replaces the trainer's printer: a study prints one line per run
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    start = time.perf_counter()
    with _quiet():
        out = run_track(settings, callbacks=[Silent(), *callbacks])
    seconds = time.perf_counter() - start
    memo = out / "memorization"
    return TrackedRun(
        out,
        read_jsonl(memo / "history.jsonl"),
        read_jsonl(memo / "summaries.jsonl"),
        json.loads((out / "track.json").read_text()),
        seconds,
    )


def token_weighted_recall(rows: list[dict]) -> float:
    """Per-token greedy recall over rows: correct suffix tokens / suffix tokens (MA weighted by length)."""
    tokens = sum(r["suffix_length"] for r in rows)
    if tokens == 0:
        raise StudyError("no suffix tokens to average over; the probe set is empty.")
    return sum(r["memorization_accuracy"] * r["suffix_length"] for r in rows) / tokens


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats to 3 significant decimals."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values: list[float]) -> str:
    """``mean ± std`` over seeds (population std; a single seed shows only the value)."""
    import numpy as np

    x = np.asarray(values, float)
    return f"{x.mean():.3f}" if len(x) == 1 else f"{x.mean():.3f} ± {x.std():.3f}"


def write_outputs(
    out: Path, name: str, config: StudyConfig, results: dict, tables: list[tuple[str, str]], seconds: float
) -> Path:
    """``OUT/<name>.json`` (config, results, wall time) and ``OUT/<name>.md`` (titled tables)."""
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "study": name,
        "minimal": config.is_minimal,
        "wall_seconds": seconds,
        "config": {k: v for k, v in asdict(config).items() if k not in ("minimal", "is_minimal")},
        "results": results,
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=2, default=str))
    body = [f"# Study: {name}", "", f"Wall time: {seconds:.0f} s; seeds: {config.seeds}.", ""]
    for title, table in tables:
        body += [f"## {title}", "", table, ""]
    (out / f"{name}.md").write_text("\n".join(body))
    return out / f"{name}.json"


def save_figure(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on a server)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
