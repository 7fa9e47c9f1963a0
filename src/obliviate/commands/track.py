"""``obliviate track --config RECIPE``: SFT with TRL's SFTTrainer while tracking memorization."""

from __future__ import annotations

DESCRIPTION = """Fine-tune a model with TRL's SFTTrainer while a MemorizationCallback scores the probes every
N optimizer steps, flags memorized ones and (optionally) stops training at a memorization budget.
Writes OUTPUT_DIR/memorization/{history.jsonl,flagged.jsonl,flagged.meta.json,summaries.jsonl},
OUTPUT_DIR/model and OUTPUT_DIR/track.json. Flags override the recipe's keys. An OUTPUT_DIR that
already holds a run is an error unless --overwrite (its old outputs are removed first) or
--resume-from-checkpoint (the same run continues). Under `accelerate launch` / `torchrun` every rank
trains and scores its share of the probes; rank 0 writes and prints.

  obliviate toy --out runs/toy
  obliviate track --config recipes/track-sft.yaml
  obliviate track --config recipes/track-sft.yaml --set training.learning_rate=1e-3 --set tracking.every_n_steps=20"""


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="track recipe (YAML), e.g. recipes/track-sft.yaml")
    parser.add_argument("--output-dir", help="run directory (recipe key output_dir)")
    parser.add_argument("--model", help="model directory or hub name (recipe key model)")
    parser.add_argument("--train-file", help="training JSONL (recipe key train_file)")
    parser.add_argument("--probes", help="probes JSONL (recipe key probes)")
    parser.add_argument("--every-n-steps", help="score every N optimizer steps (tracking.every_n_steps)")
    parser.add_argument("--max-steps", help="stop after N optimizer steps (training.max_steps)")
    parser.add_argument(
        "--resume-from-checkpoint", help="checkpoint directory to resume from (training.resume_from_checkpoint)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any recipe key, dotted (e.g. training.learning_rate=1e-3); repeatable",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in OUTPUT_DIR (its model, memorization/, report, checkpoints)",
    )


def overrides_from_args(args) -> dict:
    import yaml

    flags = {
        "output_dir": args.output_dir,
        "model": args.model,
        "train_file": args.train_file,
        "probes": args.probes,
        "tracking.every_n_steps": args.every_n_steps,
        "training.max_steps": args.max_steps,
        "training.resume_from_checkpoint": args.resume_from_checkpoint,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}  # an unset flag keeps the recipe's value
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE (e.g. training.learning_rate=1e-3), got {item!r}")
        value = value.strip()
        # Mappings and lists (lora={r: 8}) are YAML; scalars stay strings, typed later by the config fields.
        overrides[key.strip()] = yaml.safe_load(value) if value[:1] in "{[" and value else value
    return overrides


OUTPUTS = ("track.json", "memorization", "model", "report.md", "report.html", "plots")
"""What a track run (and `obliviate report` on it) writes into OUTPUT_DIR."""


def _is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch (or a single process)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def preflight(args, overrides: dict) -> list:
    """Refuse to train into an earlier run's directory unless --overwrite or --resume-from-checkpoint.

    Returns the earlier outputs that --overwrite removed (rank 0 removes them; the other ranks only check).
    """
    from pathlib import Path

    from obliviate.callbacks.track import load_track_recipe
    from obliviate.commands._paths import check_output_dir, claim_outputs

    settings = load_track_recipe(args.config, overrides)  # checks every key before the model loads
    if settings.probes:
        from obliviate.data.probes import check_unique_ids, read_jsonl

        # The recipe's probes are merged by content when built from SFT rows: refuse a repeated id first,
        # as `obliviate score` does, instead of silently keeping one.
        check_unique_ids(read_jsonl(settings.probes), str(settings.probes))
    out = check_output_dir(settings.output_dir, "output_dir")
    names = [*OUTPUTS, *(p.name for p in sorted(Path(out).glob("checkpoint-*")))]
    if settings.training.resume_from_checkpoint:
        return []  # the same run, continued from its checkpoint: its outputs are rewritten
    return claim_outputs(out, names, args.overwrite, "track", remove=args.overwrite and _is_main_process())


def _run_size(record: dict) -> str:
    """What ran, derived from the run itself (never a number frozen in a recipe comment)."""
    from obliviate.data.probes import read_jsonl

    recipe, training = record.get("recipe") or {}, (record.get("recipe") or {}).get("training") or {}
    try:
        rows = f"{len(read_jsonl(recipe['train_file']))} training rows" if recipe.get("train_file") else "the dataset"
    except (OSError, ValueError):
        rows = str(recipe.get("train_file"))
    return (
        f"trained {record['global_step']} optimizer steps on {rows} (epochs {training.get('num_train_epochs')}, "
        f"batch {training.get('per_device_train_batch_size')} per device, max_steps {training.get('max_steps')})"
    )


def run(args) -> int:
    import json

    from obliviate.callbacks import run_track
    from obliviate.commands._paths import replaced_note
    from obliviate.commands.score import summary_table

    overrides = overrides_from_args(args)
    replaced = preflight(args, overrides) if _is_main_process() or not args.overwrite else []
    out = run_track(args.config, overrides)
    if not _is_main_process():
        # Only rank 0 writes track.json, after its last step; reading it here would race that write.
        return 0
    record = json.loads((out / "track.json").read_text())
    print(summary_table(record["final_summary"]))
    print(f"\n{_run_size(record)}")
    print(
        f"step {record['global_step']}: {record['flagged']} of {record['probes']} probes flagged; "
        f"scoring took {record['scoring_seconds']:.1f} s of {record['train_seconds']:.1f} s of training"
    )
    if record["stop_reason"]:
        print(record["stop_reason"])
    print(f"wrote {out}/memorization/ (history.jsonl, flagged.jsonl, flagged.meta.json) and {out}/model")
    if replaced:
        print(replaced_note(replaced))
    return 0
