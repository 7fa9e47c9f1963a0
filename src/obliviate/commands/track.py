"""``obliviate track --config RECIPE``: SFT with TRL's SFTTrainer while tracking memorization."""

from __future__ import annotations

DESCRIPTION = """Fine-tune a model with TRL's SFTTrainer while a MemorizationCallback scores the probes every
N optimizer steps, flags memorized ones and (optionally) stops training at a memorization budget.
Writes OUTPUT_DIR/memorization/{history.jsonl,flagged.jsonl,flagged.meta.json,summaries.jsonl},
OUTPUT_DIR/model and OUTPUT_DIR/track.json. Flags override the recipe's keys.

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
    parser.add_argument("--resume-from-checkpoint",
                        help="checkpoint directory to resume from (training.resume_from_checkpoint)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any recipe key, dotted (e.g. training.learning_rate=1e-3); repeatable")


def overrides_from_args(args) -> dict:
    import yaml

    overrides = {"output_dir": args.output_dir, "model": args.model, "train_file": args.train_file,
                 "probes": args.probes, "tracking.every_n_steps": args.every_n_steps,
                 "training.max_steps": args.max_steps,
                 "training.resume_from_checkpoint": args.resume_from_checkpoint}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE (e.g. training.learning_rate=1e-3), got {item!r}")
        value = value.strip()
        # Mappings and lists (lora={r: 8}) are YAML; scalars stay strings, typed later by the config fields.
        overrides[key.strip()] = yaml.safe_load(value) if value[:1] in "{[" and value else value
    return overrides


def run(args) -> int:
    import json

    from obliviate.callbacks import run_track
    from obliviate.commands.score import summary_table

    out = run_track(args.config, overrides_from_args(args))
    record = json.loads((out / "track.json").read_text())
    print(summary_table(record["final_summary"]))
    print(f"\nstep {record['global_step']}: {record['flagged']} of {record['probes']} probes flagged; "
          f"scoring took {record['scoring_seconds']:.1f} s of {record['train_seconds']:.1f} s of training")
    if record["stop_reason"]:
        print(record["stop_reason"])
    print(f"wrote {out}/memorization/ (history.jsonl, flagged.jsonl, flagged.meta.json) and {out}/model")
    return 0
