"""``obliviate toy --out DIR``: write the built-in tiny model, tokenizer and corpus."""

from __future__ import annotations

DESCRIPTION = """Write the built-in ~1M-parameter GPT-2, its BPE tokenizer and the synthetic SFT corpus.

Layout: DIR/base (model+tokenizer), DIR/train.jsonl, DIR/probes.jsonl, DIR/retain.jsonl,
DIR/heldout.jsonl, DIR/multiple_choice.jsonl. Everything loads by path like a hub model."""


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="directory to write (created; must not hold a model already)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus and model")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="warm-up steps for the base model (0: random init)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing toy build in --out")


def run(args) -> int:
    from pathlib import Path

    from obliviate.toy import ToyConfig, build_toy

    out = Path(args.out)
    if (out / "base").exists() and not args.force:
        raise FileExistsError(f"{out}/base already exists; pass --force to rebuild it, or choose another --out.")
    build_toy(out, ToyConfig(seed=args.seed, pretrain_steps=args.pretrain_steps))
    print(f"wrote the toy model to {out}/base and its data to {out}/*.jsonl")
    return 0
