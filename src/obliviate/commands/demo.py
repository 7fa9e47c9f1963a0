"""``obliviate demo``: the whole loop on the built-in tiny model (what ``make demo`` runs)."""

from __future__ import annotations

DESCRIPTION = """Run the whole loop on the built-in ~1M-parameter model, in a few minutes on a laptop CPU:

  1. toy     build the base model and synthetic SFT corpus (cached: ~/.cache/obliviate)
  2. track   fine-tune it with TRL's SFTTrainer; MemorizationCallback scores every probe as it
             trains and flags the canaries and records it memorized
  3. before  score every probe and run the utility suite on the fine-tuned model
  4. erase   erase the flagged sequences with EMSO under the recipe's utility gate (erase.gate:
             retain perplexity and multiple-choice accuracy, each within the tolerance the recipe
             sets), checked every few steps; the report draws the tolerances the run applied
  5. after   score and benchmark the erased model
  6. report  OUT/report.html (self-contained), OUT/report.md and OUT/plots/

Settings come from recipes/demo.yaml; --config picks another recipe, --set overrides any key.

  obliviate demo --out runs/demo
  obliviate demo --quick --out /tmp/demo
  obliviate demo --out runs/demo-ga --method ga --set erase.learning_rate=1e-4"""


def add_arguments(parser) -> None:
    parser.add_argument(
        "--out",
        default="runs/demo",
        help="directory for every stage's output (an earlier demo there is replaced; its toy/ build is reused)",
    )
    parser.add_argument("--config", metavar="RECIPE", help="demo recipe (default: recipes/demo.yaml)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="apply the recipe's `quick:` overrides (fewer epochs and steps; what the tests run)",
    )
    parser.add_argument("--toy", metavar="DIR", help="use this existing `obliviate toy` build instead of building one")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override a recipe key, dotted, repeatable: --set training.num_train_epochs=10 "
        "--set erase.gate.every=2 (values are YAML: 1e-3, null, [a, b])",
    )
    parser.add_argument("--epochs", type=float, help="shorthand for --set training.num_train_epochs=N")
    parser.add_argument(
        "--method", choices=["emso", "ga", "graddiff", "npo"], help="shorthand for --set erase.method=M"
    )
    parser.add_argument("--seed", type=int, help="shorthand for --set toy.seed=N --set training.seed=N")


def parse_overrides(pairs: list[str]) -> dict:
    """``["a.b=1", ...]`` -> ``{"a.b": 1}`` with YAML-typed values."""
    import yaml

    from obliviate.config import RecipeError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set expects KEY=VALUE (e.g. training.num_train_epochs=10), got {pair!r}.")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def run(args) -> int:
    from obliviate.commands._paths import check_output_dir
    from obliviate.demo import load_demo_recipe, run_demo

    check_output_dir(args.out)  # a file or an unwritable place fails now, not after the first stage
    overrides = parse_overrides(args.overrides)
    shorthands = {
        "training.num_train_epochs": args.epochs,
        "erase.method": args.method,
        "toy.seed": args.seed,
        "training.seed": args.seed,
    }
    overrides.update({k: v for k, v in shorthands.items() if v is not None})
    settings = load_demo_recipe(args.config, overrides, quick=args.quick)
    run_demo(args.out, settings, toy_dir=args.toy, threads=None)  # cli.main set the threads
    return 0
