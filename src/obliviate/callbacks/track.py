"""``run_track``: fine-tune with TRL's ``SFTTrainer`` while tracking memorization (the ``track`` recipe).

    obliviate toy --out runs/toy && obliviate track --config recipes/track-sft.yaml

Recipe keys (top level): ``model``, ``tokenizer``, ``dtype``, ``train_file`` (JSONL of prompt/completion,
messages or text rows) or ``dataset_name``/``dataset_config``/``dataset_split`` (a ``datasets`` name),
``probes`` (file; default: built from the training rows plus ``controls``), ``controls`` (file of
never-trained rows), ``output_dir``, ``lora`` (``peft.LoraConfig`` fields), ``trainable`` (top N blocks or
parameter-name regexes to train, the rest frozen: ``modeling.freeze_except``), ``training`` (``SFTConfig``
fields) and ``tracking`` (:class:`~obliviate.callbacks.TrackConfig`). Every section is checked before a
model is loaded; an unknown key names the nearest valid one.

The run directory holds ``memorization/`` (history, flags, summaries), ``model/`` (the fine-tuned model
or LoRA adapter, with its tokenizer), checkpoints when ``training.save_strategy`` asks for them, and
``track.json`` (resolved recipe, timings, final summary, why training stopped).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from obliviate.callbacks.config import TrackConfig
from obliviate.config import RecipeError, from_dict, load_recipe, section

SFT_ROW_KEYS = ("prompt", "messages")

logger = logging.getLogger(__name__)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class TrackRecipe:
    """A checked track recipe: the keys of this module's docstring, ``training`` an ``SFTConfig``,
    ``lora`` a ``LoraConfig`` (or None), ``tracking`` a :class:`TrackConfig`. No model is loaded."""

    model: str | None = field(default=None, metadata={"help": "Model directory or hub name."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer (default: the model's)."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype."})
    train_file: str | None = field(default=None, metadata={"help": "Training JSONL (or dataset_name)."})
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` name (or train_file)."})
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    dataset_split: str = field(default="train", metadata={"help": "The dataset's split."})
    probes: str | None = field(default=None, metadata={"help": "Probes JSONL (default: the training rows)."})
    controls: str | None = field(default=None, metadata={"help": "Never-trained rows, added as controls."})
    output_dir: str = field(default="runs/track", metadata={"help": "The run directory."})
    lora: Any = field(default=None, metadata={"help": "peft.LoraConfig fields (a mapping); null: full weights."})
    trainable: Any = field(default=None, metadata={"help": "Top N blocks or parameter-name regexes to train."})
    training: Any = field(default=None, metadata={"help": "SFTConfig fields (a mapping)."})
    tracking: Any = field(default=None, metadata={"help": "TrackConfig fields (a mapping)."})

    def __post_init__(self):
        self.tracking = section(TrackConfig, self.tracking, "tracking")
        if not self.model:
            raise RecipeError("no 'model': give a model directory (e.g. runs/toy/base) or a hub name.")
        if bool(self.train_file) == bool(self.dataset_name):
            raise RecipeError("give exactly one of 'train_file' (a JSONL file) and 'dataset_name'.")
        from trl import SFTConfig

        if not isinstance(self.training, SFTConfig):
            self.training = _training_args(dict(self.training or {}), str(self.output_dir))
        if isinstance(self.lora, dict) or not self.lora:
            self.lora = _lora_config(self.lora) if self.lora else None
        for key in ("train_file", "probes", "controls"):
            if getattr(self, key) and not Path(getattr(self, key)).is_file():
                raise FileNotFoundError(
                    f"{key} {getattr(self, key)} does not exist (relative paths start at "
                    f"{Path.cwd()}). For the toy files run `obliviate toy --out runs/toy` first."
                )

    def record(self) -> dict[str, Any]:
        """The resolved recipe as ``track.json`` keeps it (every section as plain values)."""
        top = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("training", "lora", "tracking")}
        return {
            **top,
            "training": self.training.to_dict(),
            "tracking": self.tracking.to_dict(),
            "lora": self.lora.to_dict() if self.lora is not None else None,
        }


def load_track_recipe(recipe: dict | str | os.PathLike, overrides: dict | None = None) -> TrackRecipe:
    """Read and check a track recipe (a YAML path or a mapping) with dotted ``overrides``; no model is loaded."""
    where = "the track recipe" if isinstance(recipe, dict) else None
    return load_recipe(recipe, TrackRecipe, overrides, where)


def _training_args(training: dict, output_dir: str):
    from trl import SFTConfig

    if "output_dir" in training:
        raise RecipeError("set output_dir at the top level, not under 'training'.")
    defaults: dict[str, Any] = {
        "output_dir": output_dir,
        "report_to": ["none"],
        "save_strategy": "no",
        "packing": False,
        "logging_steps": 10,
    }
    if not _cuda():
        # SFTConfig's defaults (bf16, gradient checkpointing) are GPU defaults; on CPU they are slow or fail.
        defaults.update(bf16=False, use_cpu=True)
        if "gradient_checkpointing" not in training:
            defaults["activation_checkpointing"] = False
    if isinstance(training.get("report_to"), str):
        training["report_to"] = [training["report_to"]]  # a bare "none" would be read as null
    return from_dict(SFTConfig, {**defaults, **training}, "section 'training'")


def _lora_config(lora: dict):
    from peft import LoraConfig

    return from_dict(LoraConfig, {"task_type": "CAUSAL_LM", **lora}, "section 'lora'")


def _load_rows(settings: TrackRecipe) -> list[dict]:
    from datasets import load_dataset

    if settings.train_file:
        return [dict(r) for r in load_dataset("json", data_files=str(settings.train_file), split="train")]
    try:
        ds = load_dataset(settings.dataset_name, settings.dataset_config, split=settings.dataset_split)
    except Exception as e:  # datasets raises many types for a missing name; say what to do instead
        raise RecipeError(
            f"cannot load dataset {settings.dataset_name!r}: {e}. Offline, give a local train_file (JSONL) instead."
        ) from None
    return [dict(r) for r in ds]


def _training_columns(rows: list[dict], text_field: str) -> list[str]:
    first = rows[0]
    if "prompt" in first and "completion" in first:
        return ["prompt", "completion"]
    if "messages" in first:
        return ["messages"]
    if text_field in first:
        return [text_field]
    raise RecipeError(f"training rows need prompt/completion, messages or {text_field!r}; got {sorted(first)}.")


def _cap_members(probes, max_probes: int | None, seed: int = 0):
    from obliviate.data import ProbeSet

    if max_probes is None or len(probes) <= max_probes:
        return probes
    keep = [p for p in probes if p.role != "member"]
    members = [p.id for p in probes if p.role == "member"]
    room = max(0, max_probes - len(keep))
    if room < len(members):
        logger.warning(
            "max_probes %d: tracking %d of %d members (canaries and controls, %d, are always kept); raise "
            "tracking.max_probes (or null) to track them all.",
            max_probes,
            min(room, len(members)),
            len(members),
            len(keep),
        )
    chosen = set(random.Random(seed).sample(members, min(room, len(members))))
    return ProbeSet(p for p in probes if p.role != "member" or p.id in chosen)


def build_probes(settings: TrackRecipe, rows: list[dict], tokenizer):
    """The probes of a track run: the ``probes`` file, or the training rows plus ``controls``."""
    from obliviate.data import ProbeSet, load_probes, read_jsonl
    from obliviate.data.sft import probes_from_sft_rows

    cfg: TrackConfig = settings.tracking
    kwargs = dict(
        include_eos=cfg.include_eos,
        prefix_tokens=cfg.prefix_tokens,
        suffix_tokens=cfg.suffix_tokens,
        text_field=settings.training.dataset_text_field,
    )
    text_field = kwargs["text_field"]

    def from_rows(source: list[dict], **extra):
        if all(any(k in r for k in (*SFT_ROW_KEYS, text_field)) for r in source):
            return probes_from_sft_rows(source, tokenizer, **extra, **kwargs)
        return load_probes(source, tokenizer, cfg.prefix_tokens, cfg.suffix_tokens)

    if settings.probes:
        probes = from_rows(read_jsonl(settings.probes))
    else:
        probes = from_rows(rows, id_prefix="train")
        if settings.controls:
            controls = from_rows(read_jsonl(settings.controls), role="control", id_prefix="control")
            probes = ProbeSet([*probes, *controls])
    return _cap_members(probes, cfg.max_probes)


def run_track(recipe: dict | str | os.PathLike, overrides: dict | None = None, callbacks=()) -> Path:
    """Fine-tune with ``SFTTrainer`` and a :class:`~obliviate.callbacks.MemorizationCallback`.

    Args:
        recipe: a YAML path or a mapping with the keys of this module's docstring.
        overrides: dotted keys set over the recipe (``{"output_dir": ..., "training.max_steps": 10}``).
        callbacks: more ``TrainerCallback``s for the trainer. A ``ProgressCallback`` or ``PrinterCallback``
            among them replaces the trainer's own printer of logs (the demo prints one line per log).

    Returns:
        The run directory (``output_dir``).
    """
    from obliviate.callbacks.memorization import MemorizationCallback
    from obliviate.modeling import freeze_except, load_model, load_model_and_tokenizer

    settings = load_track_recipe(recipe, overrides)
    cfg, args = settings.tracking, settings.training
    out = Path(settings.output_dir).resolve()
    model, tokenizer = load_model_and_tokenizer(settings.model, settings.dtype, None, settings.tokenizer)
    if settings.trainable is not None:  # full fine-tuning of part of the model (modeling.freeze_except)
        freeze_except(model, settings.trainable)
    train, probes = _load_data(settings, tokenizer)
    reference = None
    if cfg.reference_model:
        source = settings.model if cfg.reference_model == "base" else cfg.reference_model
        reference = load_model(source, settings.dtype, args.device.type)
    trainer = _build_trainer(settings, model, tokenizer, train, callbacks)
    callback = MemorizationCallback(trainer, probes, config=cfg, reference_model=reference)
    trainer.add_callback(callback)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    train_seconds = time.perf_counter() - t0
    if trainer.is_world_process_zero():
        _save_run(out, settings, trainer, tokenizer, callback, len(probes), train_seconds)
    return out


def _load_data(settings, tokenizer):
    """The training ``Dataset`` (only the columns TRL trains on) and the probes built from the same rows."""
    from datasets import Dataset

    rows = _load_rows(settings)
    if not rows:
        raise RecipeError("the training data has no rows.")
    columns = _training_columns(rows, settings.training.dataset_text_field)
    train = Dataset.from_list([{k: r[k] for k in columns} for r in rows])
    return train, build_probes(settings, rows, tokenizer)


def _build_trainer(settings, model, tokenizer, train, callbacks):
    """The ``SFTTrainer`` with the extra callbacks (a given printer replaces the trainer's own)."""
    from transformers import PrinterCallback, ProgressCallback
    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=model, args=settings.training, train_dataset=train, processing_class=tokenizer, peft_config=settings.lora
    )
    for extra in callbacks:
        if isinstance(extra, (ProgressCallback, PrinterCallback)):
            trainer.remove_callback(ProgressCallback)
            trainer.remove_callback(PrinterCallback)
        trainer.add_callback(extra)
    return trainer


def _save_run(out: Path, settings, trainer, tokenizer, callback, n_probes: int, train_seconds: float) -> None:
    """Save the model and tokenizer under ``out/model`` and the run's record as ``out/track.json``."""
    trainer.save_model(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    record = {
        "recipe": settings.record(),
        "global_step": trainer.state.global_step,
        "train_seconds": train_seconds,
        "scoring_seconds": callback.scoring_seconds,
        "stop_reason": callback.stop_reason,
        "flagged": len(callback.flagged),
        "probes": n_probes,
        "final_summary": callback.last_summary,
    }
    (out / "track.json").write_text(json.dumps(record, indent=2, default=str))
