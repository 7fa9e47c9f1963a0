"""``obliviate score --model PATH --probes FILE --out DIR``: every per-probe metric, one pass."""

from __future__ import annotations

DESCRIPTION = """Score probes with every memorization and membership metric of DESIGN §3 from one
batched teacher-forced pass. Writes DIR/scores.jsonl (one row per probe), DIR/summary.json
(set-level statistics) and prints a table by role.

  obliviate score --model runs/toy/base --probes runs/toy/probes.jsonl --out runs/toy/scores"""


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model directory or hub name (AutoModelForCausalLM)")
    parser.add_argument("--probes", required=True, help="probes JSONL (prefix/suffix, prompt/completion, text or ids)")
    parser.add_argument("--reference", help="reference model (e.g. the base before SFT) for reference_ratio")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--tokenizer", help="tokenizer path when the model directory has none")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    parser.add_argument("--prefix-tokens", type=int, default=32, help="prefix length for plain-text probes")
    parser.add_argument("--suffix-tokens", type=int, default=32, help="suffix length for plain-text probes")
    parser.add_argument("--truncate", action="store_true", help="left-truncate prefixes longer than the context")
    parser.add_argument("--min-k", type=float, default=0.2, help="fraction of tokens for Min-K%% and Min-K%%++")
    parser.add_argument("--samples", type=int, default=100, help="n of extraction_probability (attacker's samples)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)


def summary_table(summary: dict) -> str:
    from obliviate.report.tables import format_table

    roles = sorted(k.split("/", 1)[1] for k in summary if k.startswith("count/"))
    rows = [[role, summary[f"count/{role}"], summary.get(f"{role}/extraction_rate", float("nan")),
             summary.get(f"{role}/mean_memorization_accuracy", float("nan"))] for role in roles]
    text = format_table(rows, ["role", "probes", "extraction rate", "mean MA"])
    mia = sorted({k.split("/", 1)[1] for k in summary if k.startswith("auc/")})
    if mia:
        mia_rows = [[m, summary[f"auc/{m}"], summary[f"tpr@1%fpr/{m}"], summary[f"tpr@0.1%fpr/{m}"]] for m in mia]
        text += "\n\n" + format_table(mia_rows, ["MIA score", "ROC AUC", "TPR@1%FPR", "TPR@0.1%FPR"])
    return text


def run(args) -> int:
    import json
    from pathlib import Path

    from obliviate.data import load_probes
    from obliviate.metrics import SamplingConfig, score_probes
    from obliviate.metrics.sets import summarize_scores
    from obliviate.modeling import load_model, load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model, args.dtype, args.device, args.tokenizer)
    probes = load_probes(args.probes, tokenizer, args.prefix_tokens, args.suffix_tokens)
    reference = load_model(args.reference, args.dtype, args.device) if args.reference else None
    sampling = SamplingConfig(n=args.samples, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    rows = score_probes(model, tokenizer, probes, batch_size=args.batch_size, reference_model=reference,
                        min_k=args.min_k, sampling=sampling, truncate=args.truncate, progress="scoring probes")
    summary = summarize_scores(rows)
    summary["settings"] = {"model": args.model, "reference": args.reference, "min_k": args.min_k,
                           "sampling": vars(sampling), "probes": args.probes}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scores.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(summary_table(summary))
    print(f"\nwrote {out / 'scores.jsonl'} ({len(rows)} probes) and {out / 'summary.json'}")
    return 0
