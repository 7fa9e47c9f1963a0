"""What one utility-gate check costs next to one erasure-sized optimizer step, on the toy model.

    obliviate toy --out runs/toy          # optional: without it a fresh (untrained) toy is built in a temp dir
    python perf/gate_cost.py --toy runs/toy --repeats 7

Measures, as medians over ``--repeats``: one AdamW step (forward + backward + update) on a forget
batch of ``--forget-batch`` toy probes; one gate check (retain perplexity + multiple choice, the
default demo gate) with the tokenization cached in the benchmarks (the normal case) and with it
cleared before every check (what re-tokenizing per check would cost); the snapshot and the restore
of all weights + AdamW state; and, when lm-eval is installed, the same multiple-choice file run as an
lm-eval task. Operations are interleaved round by round. Prints each cost as a multiple of the step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", default="runs/toy", help="directory written by `obliviate toy`")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--forget-batch", type=int, default=16, help="sequences per erasure step")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadiest on a shared 2-core machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from obliviate.benchmarks import UtilityGate
    from obliviate.data import load_probes
    from obliviate.erasure.losses import retain_nll
    from obliviate.modeling import load_model_and_tokenizer
    from obliviate.tables import format_table
    from obliviate.toy import ToyConfig, build_toy

    toy = Path(args.toy)
    if not (toy / "base").is_dir():
        toy = Path(tempfile.mkdtemp(prefix="gate-cost-")) / "toy"
        print(f"{args.toy}/base not found: building an untrained toy in {toy} (timings do not depend on training)")
        build_toy(toy, ToyConfig(pretrain_steps=0))
    model, tok = load_model_and_tokenizer(toy / "base", device="cpu")
    section = {
        "benchmarks": [
            {
                "name": "perplexity",
                "data": str(toy / "retain.jsonl"),
                "label": "retain",
                "batch_size": 32,
                "max_relative_increase": 0.02,
            },
            {"name": "multiple_choice", "data": str(toy / "multiple_choice.jsonl"), "max_absolute_drop": 0.01},
        ]
    }
    gate = UtilityGate.from_config(section, tok)
    gate.measure_baseline(model)

    probes = load_probes(toy / "probes.jsonl", tok).by_role("canary", "member")
    rows = [p.input_ids for p in list(probes)[: args.forget_batch]]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)

    def step():
        # The token-mean NLL of the batch, computed as the erasure's retain term is (one LM loss, one place).
        model.train()
        retain_nll(model, ids, mask).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up; AdamW state exists from here on, as it does mid-erasure
    benches = list(gate.suite)

    def uncached_check():
        for b in benches:
            b.clear_cache()
        gate.check(model, step=0)

    def tokenize_only():
        for b in benches:
            b.clear_cache()
            b.prepare(tok)

    ops = {
        "step": step,
        "check": lambda: gate.check(model, step=0),
        "uncached": uncached_check,
        "tokenize": tokenize_only,
        "snapshot": lambda: gate.snapshot(model.parameters(), optimizer),
        "restore": gate.restore,
        "mc": lambda: gate.suite["multiple_choice"].run(model),
    }
    lm_eval_bench = lm_eval_twin(toy, tok)
    if lm_eval_bench is not None:
        lm_eval_bench.run(model)  # lm-eval builds its task and dataset cache on the first run
        ops["lm_eval"] = lambda: lm_eval_bench.run(model)
    # Interleaved rounds, so a load spike from other processes hits every operation alike.
    times = {name: [] for name in ops}
    for _ in range(args.repeats):
        for name, fn in ops.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    t = {name: statistics.median(v) for name, v in times.items()}
    t_step = t["step"]

    n_params = sum(p.numel() for p in model.parameters())
    tokens = int(mask.sum())
    print(
        f"\ntoy model: {n_params / 1e6:.2f}M parameters; erasure step on {len(rows)} sequences ({tokens} tokens); "
        f"gate: retain perplexity ({gate.suite['retain'].last_token_count} tokens) + multiple_choice "
        f"({len(gate.suite['multiple_choice'].pairs)} choices); {args.threads} threads, median of {args.repeats}\n"
    )
    table = [
        ["AdamW step (forward+backward+update)", t_step * 1e3, 1.0],
        ["gate check, tokenization cached", t["check"] * 1e3, t["check"] / t_step],
        ["gate check, re-tokenizing each time", t["uncached"] * 1e3, t["uncached"] / t_step],
        ["  tokenization alone", t["tokenize"] * 1e3, t["tokenize"] / t_step],
        ["snapshot (weights + AdamW state)", t["snapshot"] * 1e3, t["snapshot"] / t_step],
        ["restore (bitwise)", t["restore"] * 1e3, t["restore"] / t_step],
    ]
    table.append(["  multiple_choice benchmark alone", t["mc"] * 1e3, t["mc"] / t_step])
    if "lm_eval" in t:
        table.append(["  lm_eval on the same multiple-choice data", t["lm_eval"] * 1e3, t["lm_eval"] / t_step])
    print(format_table(table, ["operation", "median ms", "x AdamW step"]))
    print(
        f"\nuncached / cached check: {t['uncached'] / t['check']:.2f}x; a gate every step adds "
        f"{(t['check'] + t['snapshot']) / t_step:.1f}x the step's own time (every=k divides that by k)"
    )


def lm_eval_twin(toy: Path, tok):
    """The toy multiple-choice file as an lm-eval task, when lm-eval is installed (else None)."""
    from obliviate.benchmarks.lm_eval import lm_eval_available

    if not lm_eval_available():
        return None
    from obliviate.benchmarks import UtilityBenchmark

    tasks = Path(tempfile.mkdtemp(prefix="gate-cost-tasks-"))
    (tasks / "toy_facts.yaml").write_text(
        "task: toy_facts\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {(toy / 'multiple_choice.jsonl').resolve()}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: label\ntarget_delimiter: ''\n"
        "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
    )
    return UtilityBenchmark.from_entry({"name": "lm_eval", "data": str(tasks), "tasks": ["toy_facts"]}, tok)


if __name__ == "__main__":
    main()
