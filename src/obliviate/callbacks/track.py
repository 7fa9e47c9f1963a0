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
import os
import random
import time
from pathlib import Path
from typing import Any

from obliviate.callbacks.config import TrackConfig
from obliviate.config import RecipeError, apply_overrides, check_keys, from_dict, read_yaml

SECTIONS: dict[str, Any] = {
    "model": None, "tokenizer": None, "dtype": "float32", "train_file": None, "dataset_name": None,
    "dataset_config": None, "dataset_split": "train", "probes": None, "controls": None, "output_dir": "runs/track",
    "lora": None, "trainable": None, "training": None, "tracking": TrackConfig,
}
SFT_ROW_KEYS = ("prompt", "messages")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_track_recipe(recipe: dict | str | os.PathLike, overrides: dict | None = None) -> dict[str, Any]:
    """Read and check a track recipe; returns the merged mapping with ``tracking`` a TrackConfig,
    ``training`` an ``SFTConfig`` and ``lora`` a ``LoraConfig`` (or None). No model is loaded."""
    where = "the track recipe" if isinstance(recipe, dict) else f"recipe {recipe}"
    data = dict(recipe) if isinstance(recipe, dict) else read_yaml(recipe)
    data = apply_overrides(data, overrides or {})
    check_keys(data, SECTIONS, where)
    out = {k: data.get(k, v) for k, v in SECTIONS.items() if not isinstance(v, type)}
    out["tracking"] = from_dict(TrackConfig, data.get("tracking"), f"section 'tracking' of {where}")
    if not out["model"]:
        raise RecipeError(f"{where} has no 'model': give a model directory (e.g. runs/toy/base) or a hub name.")
    if bool(out["train_file"]) == bool(out["dataset_name"]):
        raise RecipeError(f"{where} needs exactly one of 'train_file' (a JSONL file) and 'dataset_name'.")
    out["training"] = _training_args(dict(data.get("training") or {}), str(out["output_dir"]), where)
    out["lora"] = _lora_config(data.get("lora"), where)
    for key in ("train_file", "probes", "controls"):
        if out[key] and not Path(out[key]).is_file():
            raise FileNotFoundError(f"{key} {out[key]} does not exist (relative paths start at {Path.cwd()}). "
                                    "For the toy files run `obliviate toy --out runs/toy` first.")
    return out


def _training_args(training: dict, output_dir: str, where: str):
    from trl import SFTConfig

    if "output_dir" in training:
        raise RecipeError(f"set output_dir at the top level of {where}, not under 'training'.")
    defaults: dict[str, Any] = {"output_dir": output_dir, "report_to": ["none"], "save_strategy": "no",
                                "packing": False, "logging_steps": 10}
    if not _cuda():
        # SFTConfig's defaults (bf16, gradient checkpointing) are GPU defaults; on CPU they are slow or fail.
        defaults.update(bf16=False, use_cpu=True)
        if "gradient_checkpointing" not in training:
            defaults["activation_checkpointing"] = False
    if isinstance(training.get("report_to"), str):
        training["report_to"] = [training["report_to"]]  # a bare "none" would be read as null
    return from_dict(SFTConfig, {**defaults, **training}, f"section 'training' of {where}")


def _lora_config(lora: dict | None, where: str):
    if not lora:
        return None
    from peft import LoraConfig

    return from_dict(LoraConfig, {"task_type": "CAUSAL_LM", **lora}, f"section 'lora' of {where}")


def _load_rows(settings: dict) -> list[dict]:
    from datasets import load_dataset

    if settings["train_file"]:
        return [dict(r) for r in load_dataset("json", data_files=str(settings["train_file"]), split="train")]
    try:
        ds = load_dataset(settings["dataset_name"], settings["dataset_config"], split=settings["dataset_split"])
    except Exception as e:  # datasets raises many types for a missing name; say what to do instead
        raise RecipeError(f"cannot load dataset {settings['dataset_name']!r}: {e}. Offline, give a local "
                          "train_file (JSONL) instead.") from None
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
    chosen = set(random.Random(seed).sample(members, min(room, len(members))))
    return ProbeSet(p for p in probes if p.role != "member" or p.id in chosen)


def build_probes(settings: dict, rows: list[dict], tokenizer):
    """The probes of a track run: the ``probes`` file, or the training rows plus ``controls``."""
    from obliviate.data import ProbeSet, load_probes, read_jsonl
    from obliviate.data.sft import probes_from_sft_rows

    cfg: TrackConfig = settings["tracking"]
    kwargs = dict(include_eos=cfg.include_eos, prefix_tokens=cfg.prefix_tokens, suffix_tokens=cfg.suffix_tokens,
                  text_field=settings["training"].dataset_text_field)
    text_field = kwargs["text_field"]

    def from_rows(source: list[dict], **extra):
        if all(any(k in r for k in (*SFT_ROW_KEYS, text_field)) for r in source):
            return probes_from_sft_rows(source, tokenizer, **extra, **kwargs)
        return load_probes(source, tokenizer, cfg.prefix_tokens, cfg.suffix_tokens)

    if settings["probes"]:
        probes = from_rows(read_jsonl(settings["probes"]))
    else:
        probes = from_rows(rows, id_prefix="train")
        if settings["controls"]:
            controls = from_rows(read_jsonl(settings["controls"]), role="control", id_prefix="control")
            probes = ProbeSet([*probes, *controls])
    return _cap_members(probes, cfg.max_probes)


def run_track(recipe: dict | str | os.PathLike, overrides: dict | None = None) -> Path:
    """Fine-tune with ``SFTTrainer`` and a :class:`~obliviate.callbacks.MemorizationCallback`.

    Args:
        recipe: a YAML path or a mapping with the keys of this module's docstring.
        overrides: dotted keys set over the recipe (``{"output_dir": ..., "training.max_steps": 10}``).

    Returns:
        The run directory (``output_dir``).
    """
    from datasets import Dataset
    from trl import SFTTrainer

    from obliviate.callbacks.memorization import MemorizationCallback
    from obliviate.modeling import freeze_except, load_model, load_model_and_tokenizer

    settings = load_track_recipe(recipe, overrides)
    cfg: TrackConfig = settings["tracking"]
    args = settings["training"]
    out = Path(settings["output_dir"]).resolve()
    model, tokenizer = load_model_and_tokenizer(settings["model"], settings["dtype"], None, settings["tokenizer"])
    if settings["trainable"] is not None:  # full fine-tuning of part of the model (modeling.freeze_except)
        freeze_except(model, settings["trainable"])
    rows = _load_rows(settings)
    if not rows:
        raise RecipeError("the training data has no rows.")
    columns = _training_columns(rows, args.dataset_text_field)
    train = Dataset.from_list([{k: r[k] for k in columns} for r in rows])
    probes = build_probes(settings, rows, tokenizer)
    reference = None
    if cfg.reference_model:
        source = settings["model"] if cfg.reference_model == "base" else cfg.reference_model
        reference = load_model(source, settings["dtype"], args.device.type)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         peft_config=settings["lora"])
    callback = MemorizationCallback.from_config(trainer, probes, cfg, reference_model=reference)
    trainer.add_callback(callback)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    train_seconds = time.perf_counter() - t0
    if trainer.is_world_process_zero():
        trainer.save_model(str(out / "model"))
        tokenizer.save_pretrained(str(out / "model"))
        record = {
            "recipe": {**{k: v for k, v in settings.items() if k not in ("training", "lora", "tracking")},
                       "training": args.to_dict(), "tracking": cfg.to_dict(),
                       "lora": settings["lora"].to_dict() if settings["lora"] is not None else None},
            "global_step": trainer.state.global_step, "train_seconds": train_seconds,
            "scoring_seconds": callback.scoring_seconds, "stop_reason": callback.stop_reason,
            "flagged": len(callback.flagged), "probes": len(probes), "final_summary": callback.last_summary,
        }
        (out / "track.json").write_text(json.dumps(record, indent=2, default=str))
    return out
