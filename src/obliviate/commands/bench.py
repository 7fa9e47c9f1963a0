"""``obliviate bench --model PATH --config suite.yaml --out DIR``: run a utility benchmark suite.

obliviate toy --out runs/toy
obliviate bench --model runs/toy/base --config recipes/utility.yaml --out runs/toy/utility
"""

from __future__ import annotations

DESCRIPTION = """Run the utility benchmarks of a suite recipe on a model and write DIR/utility.json
({benchmark: {score: value}}), printing a table. The recipe is

  benchmarks:
    - {name: perplexity, data: runs/toy/retain.jsonl, label: retain}
    - {name: multiple_choice, data: runs/toy/multiple_choice.jsonl}

with names from: perplexity, multiple_choice, evaluate_metric, lm_eval (needs obliviate[lm-eval]),
memorization. The recipe and its data files are checked before the model is loaded.

  obliviate bench --model runs/toy/base --config recipes/utility.yaml --out runs/toy/utility"""


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model directory or hub name (AutoModelForCausalLM)")
    parser.add_argument("--config", required=True, help="suite recipe YAML with a `benchmarks:` list")
    parser.add_argument(
        "--out",
        required=True,
        help="output directory for utility.json (not inside --model; an "
        "earlier utility.json there is an error unless --overwrite)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier utility.json in --out")
    parser.add_argument("--tokenizer", help="tokenizer path when the model directory has none")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")


def results_table(results: dict, suite, seconds: dict | None = None) -> str:
    """One row per score; a benchmark's wall time on its first row."""
    from obliviate.report.tables import format_table

    rows = []
    for label, scores in results.items():
        for i, (score, value) in enumerate(scores.items()):
            wall = seconds.get(label) if seconds and i == 0 else None
            rows.append(
                [
                    label if i == 0 else "",
                    score,
                    value,
                    suite[label].direction(score) or "-",
                    f"{wall:.2f}" if wall is not None else "",
                ]
            )
    return format_table(rows, ["benchmark", "score", "value", "better", "seconds"])


def run(args) -> int:
    import json

    from obliviate.benchmarks import UtilitySuite
    from obliviate.commands._paths import check_not_inside, check_output_dir, claim_outputs, replaced_note
    from obliviate.modeling import load_model_and_tokenizer

    # Built without a tokenizer first: names, keys, files and rows are checked before the model loads.
    suite = UtilitySuite.from_recipe(args.config)
    out = check_output_dir(args.out)
    check_not_inside(out, {"model": args.model, "tokenizer": args.tokenizer})
    replaced = claim_outputs(out, ["utility.json"], args.overwrite, "bench")
    model, tokenizer = load_model_and_tokenizer(args.model, args.dtype, args.device, args.tokenizer)
    results = suite.run(model, tokenizer, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "utility.json").write_text(json.dumps(results, indent=2))
    print(results_table(results, suite, dict(suite.last_seconds)))
    print(f"\nwrote {out / 'utility.json'}")
    if replaced:
        print(replaced_note(replaced))
    return 0
