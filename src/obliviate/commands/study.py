"""``obliviate study``: run one of the literature reproductions on the built-in toy model."""

from __future__ import annotations

DESCRIPTION = """Run a study recipe (recipes/studies/*.yaml) on the built-in ~1M-parameter toy model and
write OUT/<study>.json (every number), OUT/<study>.md (tables) and OUT/*.png (plots).

  obliviate study recipes/studies/skew.yaml --out runs/studies/skew              # skewed memorization
  obliviate study recipes/studies/finetune_method.yaml --out runs/studies/ft    # full / head / LoRA
  obliviate study recipes/studies/density.yaml --minimal --out /tmp/density     # seconds, one seed

docs/studies.md has the measured tables and what they do and do not reproduce."""


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="a study recipe, e.g. recipes/studies/skew.yaml")
    parser.add_argument("--out", help="output directory (default: runs/studies/<recipe name>)")
    parser.add_argument(
        "--minimal",
        action="store_true",
        help="apply the recipe's `minimal:` overrides: a few steps, one seed (what the tests run)",
    )
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override a recipe key, dotted, repeatable: --set epochs=4 --set seeds=[0]",
    )


def run(args) -> int:
    from pathlib import Path

    from obliviate.commands.demo import parse_overrides
    from obliviate.recipes import resolve_recipe
    from obliviate.studies import run_recipe

    recipe = resolve_recipe(args.recipe)  # recipes/studies/NAME.yaml also names the shipped copy, installed
    out = Path(args.out or Path("runs/studies") / Path(args.recipe).stem)
    run_recipe(recipe, out, args.minimal, parse_overrides(args.overrides))
    for name in sorted(out.glob("*.md")):
        print(name.read_text())
    print(f"wrote {out}")
    return 0
