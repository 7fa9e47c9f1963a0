"""forget_reduction token vs sequence, side by side, for every loss on the same forget sets.

    python perf/forget_reduction.py                       # demo-setting model, forget sets of 16 and 32, gated
    python perf/forget_reduction.py --sizes 16 --methods ga emso --gate off

``token`` (open-unlearning, Jang et al.) averages the loss over all suffix tokens of the batch, so
long suffixes dominate; ``sequence`` gives each sequence the same weight. The forgetting criterion is
per sequence, so the question is which one forgets every sequence with less damage. Reuses
``perf/erasure_bench.py``'s cached setup (toy build + the demo SFT run under ``--work``) and its
per-run measurements: forgotten %, retain / held-out perplexity change, multiple-choice change,
collateral loss change on the trained sequences not asked to be forgotten, kept steps, wall time.
Forget sets are the N most memorized members/canaries; their suffix lengths are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from erasure_bench import gate_section, most_memorized, run_one
from obliviate.data import load_probes
from obliviate.erasure import EraseConfig
from obliviate.metrics import score_probes
from obliviate.modeling import load_model_and_tokenizer
from obliviate.report.tables import format_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/erasure-bench")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--methods", nargs="+", default=["ga", "graddiff", "npo", "emso"])
    parser.add_argument(
        "--gate",
        choices=["on", "off"],
        default="on",
        help="on: the default gate (retain perplexity +2%%) checked every --gate-every steps",
    )
    parser.add_argument("--gate-every", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = demo_paths(Path(args.work))
    model, tokenizer = load_model_and_tokenizer(paths["demo"] / "model", device="cpu")
    probes = load_probes(paths["toy"] / "probes.jsonl", tokenizer)
    controls = probes.by_role("control")
    rows = []
    for size in args.sizes:
        forget, extractable = most_memorized(model, tokenizer, probes, size)
        lengths = sorted(len(p.suffix_ids) for p in forget)
        others = probes.by_role("member", "canary").subset(
            [i for i in probes.by_role("member", "canary").ids if i not in set(forget.ids)]
        )
        others_before = score_probes(model, tokenizer, others)
        print(
            f"forget set of {size} ({extractable} extractable); suffix lengths {lengths[0]}..{lengths[-1]}, "
            f"mean {sum(lengths) / len(lengths):.1f}",
            flush=True,
        )
        for method in args.methods:
            for reduction in ("token", "sequence"):
                config = EraseConfig(
                    method=method,
                    forget_reduction=reduction,
                    learning_rate=args.lr,
                    max_steps=args.max_steps,
                    chunk_size=size,
                    batch_size=size,
                    plots=False,
                    gate=None if args.gate == "off" else gate_section(paths["toy"], forget, tokenizer, args.gate_every),
                )
                row = run_one(model, tokenizer, forget, controls, paths["toy"], config, (others, others_before))
                row.update(size=size, method=method, reduction=reduction)
                rows.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    headers = [
        "size",
        "method",
        "reduction",
        "forgotten %",
        "steps",
        "retain ppl %",
        "held-out ppl %",
        "MC pts",
        "others loss %",
        "others lost",
        "wall s",
    ]
    table = [
        [
            r["size"],
            r["method"],
            r["reduction"],
            r["forgotten_pct"],
            r["steps"],
            r["ppl_pct"],
            r["heldout_pct"],
            r["mc_points"],
            r["others_loss_pct"],
            f"{r['others_lost']}/{r['others_extractable']}",
            r["wall_s"],
        ]
        for r in rows
    ]
    print(format_table(table, headers))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


def demo_paths(work: Path) -> dict:
    """The toy build and the demo-setting SFT run (``recipes/track-sft.yaml``), built once under ``work``."""
    from erasure_bench import ROOT
    from obliviate.callbacks import run_track
    from obliviate.toy import build_toy

    toy = work / "toy"
    if not (toy / "base").is_dir():
        build_toy(toy)
    out = work / "track-demo"
    if not (out / "model").is_dir():
        run_track(
            str(ROOT / "recipes" / "track-sft.yaml"),
            {
                "model": str(toy / "base"),
                "train_file": str(toy / "train.jsonl"),
                "probes": str(toy / "probes.jsonl"),
                "output_dir": str(out),
            },
        )
    return {"toy": toy, "demo": out}


if __name__ == "__main__":
    main()
