"""``obliviate toy --out DIR``: write the built-in tiny model, tokenizer and corpus."""

from __future__ import annotations

DESCRIPTION = """Write the built-in ~1M-parameter GPT-2, its BPE tokenizer and the synthetic SFT corpus.

Layout: DIR/base (model+tokenizer), DIR/train.jsonl, DIR/probes.jsonl, DIR/retain.jsonl,
DIR/heldout.jsonl, DIR/multiple_choice.jsonl, DIR/toy_config.json. Everything loads by path like
a hub model. DIR may hold other files; an earlier toy build there is replaced only with
--overwrite, and files of these names that a toy build did not write are never replaced.

  obliviate toy --out runs/toy"""

OUTPUTS = (
    "base",
    "train.jsonl",
    "probes.jsonl",
    "retain.jsonl",
    "heldout.jsonl",
    "multiple_choice.jsonl",
    "toy_config.json",
)
MARKER = "toy_config.json"
"""Written last by every toy build: its presence says the other outputs are a toy build's too."""


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="directory to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus and model")
    parser.add_argument(
        "--pretrain-steps", type=int, default=300, help="warm-up steps for the base model (0: random init)"
    )
    parser.add_argument(
        "--overwrite",
        "--force",
        action="store_true",
        dest="overwrite",
        help="replace an earlier toy build in --out (never files a toy build did not write)",
    )


def run(args) -> int:
    from obliviate.commands._paths import check_output_dir, claim_outputs, replaced_note
    from obliviate.toy import ToyConfig, build_toy

    config = ToyConfig(seed=args.seed, pretrain_steps=args.pretrain_steps)
    out = check_output_dir(args.out)
    replaced = claim_outputs(out, OUTPUTS, args.overwrite, "toy", ours=(out / MARKER).is_file())
    build_toy(out, config)
    print(f"wrote the toy model to {out}/base and its data to {out}/*.jsonl")
    if replaced:
        print(replaced_note(replaced))
    return 0
