"""``obliviate score --model PATH --probes FILE --out DIR``: every per-probe metric, one pass."""

from __future__ import annotations

from pathlib import Path

DESCRIPTION = """Score probes with every memorization and membership metric of DESIGN §3 from one
batched teacher-forced pass. Writes DIR/scores.jsonl (one row per probe), DIR/summary.json
(set-level statistics) and prints a table by role.

Slower scores, each off unless asked: --exposure (canary exposure for probes with a secret_format),
--el-n N (extraction likelihood EL_N on --el-subset probes), --density-train FILE (LMD3 density).

  obliviate score --model runs/toy/base --probes runs/toy/probes.jsonl --out runs/toy/scores
  obliviate score --model runs/toy/base --probes runs/toy/probes.jsonl --out runs/toy/scores \\
      --exposure --exposure-exact-limit 0 --el-n 2 --el-subset 16 --density-train runs/toy/train.jsonl"""


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model directory or hub name (AutoModelForCausalLM)")
    parser.add_argument("--probes", required=True, help="probes JSONL (prefix/suffix, prompt/completion, text or ids)")
    parser.add_argument("--reference", help="reference model (e.g. the base before SFT) for reference_ratio")
    parser.add_argument(
        "--out",
        required=True,
        help="output directory (not inside --model; an earlier "
        "scores.jsonl/summary.json there is an error unless --overwrite)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier score run's files in --out")
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
    slow = parser.add_argument_group("slower scores (off by default)")
    slow.add_argument(
        "--exposure", action="store_true", help="canary exposure for probes whose row has secret_format (e.g. digits:6)"
    )
    slow.add_argument(
        "--exposure-exact-limit",
        type=int,
        default=1_000_000,
        help="enumerate the candidate space exactly up to this size, else estimate (skew-normal)",
    )
    slow.add_argument("--exposure-samples", type=int, default=5000, help="candidates sampled when estimating")
    slow.add_argument("--el-n", type=int, help="extraction likelihood EL_n (Jang et al. 2022) with this n-gram size")
    slow.add_argument(
        "--el-subset", type=int, default=64, help="EL_n on this many probes (seeded random subset; 0 = all)"
    )
    slow.add_argument("--el-stride", type=int, default=1, help="step between prefix lengths for EL_n")
    slow.add_argument(
        "--density-train",
        help="training set JSONL (text, prompt/completion or prefix/suffix rows): "
        "adds LMD3 log_density of the training data around each probe",
    )
    slow.add_argument("--density-bandwidth", default="scott", help="scott, silverman or a number")


def summary_table(summary: dict) -> str:
    from obliviate.report.tables import format_table

    roles = sorted(k.split("/", 1)[1] for k in summary if k.startswith("count/"))
    rows = [
        [
            role,
            summary[f"count/{role}"],
            summary.get(f"{role}/extraction_rate", float("nan")),
            summary.get(f"{role}/mean_memorization_accuracy", float("nan")),
        ]
        for role in roles
    ]
    text = format_table(rows, ["role", "probes", "extraction rate", "mean MA"])
    mia = sorted({k.split("/", 1)[1] for k in summary if k.startswith("auc/")})
    if mia:
        mia_rows = [[m, summary[f"auc/{m}"], summary[f"tpr@1%fpr/{m}"], summary[f"tpr@0.1%fpr/{m}"]] for m in mia]
        text += "\n\n" + format_table(mia_rows, ["MIA score", "ROC AUC", "TPR@1%FPR", "TPR@0.1%FPR"])
    exposed = [role for role in roles if f"exposure/{role}/mean" in summary]
    if exposed:
        exp_rows = [[role, summary[f"exposure/{role}/mean"], summary[f"exposure/{role}/max"]] for role in exposed]
        text += "\n\n" + format_table(exp_rows, ["role", "mean exposure (bits)", "max exposure (bits)"])
    return text


def run(args) -> int:
    import json

    from obliviate.commands._paths import replaced_note
    from obliviate.data import load_probes
    from obliviate.metrics import SamplingConfig, score_probes
    from obliviate.metrics.sets import summarize_scores
    from obliviate.modeling import load_model, load_model_and_tokenizer

    out, replaced = check_outputs(args)
    model, tokenizer = load_model_and_tokenizer(args.model, args.dtype, args.device, args.tokenizer)
    probes = load_probes(args.probes, tokenizer, args.prefix_tokens, args.suffix_tokens)
    reference = load_model(args.reference, args.dtype, args.device) if args.reference else None
    sampling = SamplingConfig(n=args.samples, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    rows = score_probes(
        model,
        tokenizer,
        probes,
        batch_size=args.batch_size,
        reference_model=reference,
        min_k=args.min_k,
        sampling=sampling,
        truncate=args.truncate,
        progress="scoring probes",
    )
    by_id = {row["id"]: row for row in rows}
    settings = {
        "model": args.model,
        "reference": args.reference,
        "min_k": args.min_k,
        "sampling": vars(sampling),
        "probes": args.probes,
    }
    if args.exposure:
        settings["exposure"] = add_exposure(model, tokenizer, probes, by_id, args)
    if args.el_n is not None:
        settings["extraction_likelihood"] = add_extraction_likelihood(model, tokenizer, probes, by_id, args)
    if args.density_train:
        settings["density"] = add_density(model, tokenizer, probes, by_id, args)
    summary = summarize_scores(rows)
    summary.update(extra_summary(rows))
    summary["settings"] = settings
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scores.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(summary_table(summary))
    print(f"\nwrote {out / 'scores.jsonl'} ({len(rows)} probes) and {out / 'summary.json'}")
    if replaced:
        print(replaced_note(replaced))
    return 0


OUTPUTS = ("scores.jsonl", "summary.json")


def check_outputs(args) -> tuple[Path, list[Path]]:
    """Before any model loads: --out is writable, not inside an input model, and replaces only our own files.

    Returns:
        The output directory and the earlier files there that this run replaces (with --overwrite).
    """
    import json

    from obliviate.commands._paths import check_not_inside, check_output_dir, claim_outputs

    out = check_output_dir(args.out)
    check_not_inside(out, {"model": args.model, "reference model": args.reference, "tokenizer": args.tokenizer})
    try:  # an earlier `obliviate score` wrote a summary.json with its settings
        ours = "settings" in json.loads((out / "summary.json").read_text())
    except (OSError, ValueError, TypeError):
        ours = not (out / "scores.jsonl").exists()
    return out, claim_outputs(out, OUTPUTS, args.overwrite, "score", ours=ours)


def add_exposure(model, tokenizer, probes, by_id: dict, args) -> dict:
    from obliviate.metrics.exposure import ExposureConfig, exposures

    config = ExposureConfig(
        exact_limit=args.exposure_exact_limit, samples=args.exposure_samples, batch_size=max(args.batch_size, 64)
    )
    results = exposures(model, tokenizer, probes, config, progress="exposure")
    if not results:
        raise ValueError(
            f"--exposure: no probe in {args.probes} has a secret_format field "
            '(e.g. "secret_format": "digits:6"); add it to the canary rows.'
        )
    for r in results:
        by_id[r["id"]].update(
            exposure=r["exposure"], exposure_rank=r["rank"], exposure_method=r["method"], exposure_space=r["space_size"]
        )
    return {
        "exact_limit": config.exact_limit,
        "samples": config.samples,
        "rank_by": config.rank_by,
        "methods": sorted({r["method"] for r in results}),
    }


def add_extraction_likelihood(model, tokenizer, probes, by_id: dict, args) -> dict:
    import random

    from obliviate.metrics.generation import extraction_likelihood

    ids = probes.ids
    if 0 < args.el_subset < len(ids):
        ids = sorted(random.Random(0).sample(ids, args.el_subset), key=probes.ids.index)
    results = extraction_likelihood(
        model,
        tokenizer,
        probes.subset(ids),
        n=args.el_n,
        stride=args.el_stride,
        batch_size=args.batch_size,
        progress="extraction likelihood",
    )
    for r in results:
        by_id[r["id"]]["extraction_likelihood"] = r["extraction_likelihood"]
    return {"n": args.el_n, "stride": args.el_stride, "probes": len(ids)}


def add_density(model, tokenizer, probes, by_id: dict, args) -> dict:
    from obliviate.data import read_jsonl
    from obliviate.metrics.density import DensityConfig, probe_density

    def text(row: dict, where: str) -> str:
        for a, b in (("prompt", "completion"), ("prefix", "suffix")):
            if a in row and b in row:
                return row[a] + row[b]
        if "text" in row:
            return row["text"]
        raise ValueError(f"{where}: a density training row needs text, prompt/completion or prefix/suffix.")

    train = [text(r, f"{args.density_train}:{n}") for n, r in enumerate(read_jsonl(args.density_train), 1)]
    config = DensityConfig(bandwidth=args.density_bandwidth, batch_size=args.batch_size)
    probe_texts = [
        tokenizer.decode(p.input_ids) if p.prefix is None or p.suffix is None else p.prefix + p.suffix for p in probes
    ]
    result = probe_density(model, tokenizer, probe_texts, train, config, progress=True)
    for probe, value, near in zip(probes, result["log_density"].tolist(), result["nearest_distance"].tolist()):
        by_id[probe.id].update(log_density=value, nearest_train_distance=near)
    return {"train": args.density_train, "train_rows": len(train), "bandwidth": result["bandwidth"]}


def extra_summary(rows: list[dict]) -> dict:
    """Per-role means of the optional scores: ``exposure/<role>/mean`` and ``max``, ``<role>/mean_<score>``."""
    import numpy as np

    out = {}
    for role in sorted({r["role"] for r in rows}):
        group = [r for r in rows if r["role"] == role]
        values = [r["exposure"] for r in group if r.get("exposure") is not None]
        if values:
            out[f"exposure/{role}/mean"] = float(np.mean(values))
            out[f"exposure/{role}/max"] = float(np.max(values))
        for name in ("extraction_likelihood", "log_density"):
            values = [r[name] for r in group if r.get(name) is not None]
            if values:
                out[f"{role}/mean_{name}"] = float(np.mean(values))
    return out
