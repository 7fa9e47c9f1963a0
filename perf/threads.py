"""Torch intra-op threads on this machine: a toy training step and a scoring pass, 1 vs 2 threads side by side.

    python perf/threads.py                         # builds the toy model (random init) in a temp dir
    python perf/threads.py --toy runs/toy --repeats 5 --threads 1 2 4

What ``obliviate.threads.DEFAULT_THREADS`` rests on. Each repeat runs every thread count in turn
(interleaved, so load changes on a shared machine hit all alike): ``--steps`` AdamW steps of the toy
GPT-2 on batches of 16 SFT rows, and one ``score_probes`` pass over every toy probe (batch 32, the
scorer's default, 100 sampled attacker draws). Prints the median seconds per step / per pass and
the machine's load average, since the answer depends on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def train_steps(model, tokenizer, texts: list[str], steps: int) -> float:
    """Seconds per optimizer step (forward, backward, AdamW) on batches of 16 rows."""
    import torch

    enc = tokenizer([t + tokenizer.eos_token for t in texts], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, ids.shape[0], (16,), generator=gen)
        model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
    model.eval()
    return (time.perf_counter() - start) / steps


def scoring_pass(model, tokenizer, probes) -> float:
    from obliviate.metrics import score_probes

    start = time.perf_counter()
    score_probes(model, tokenizer, probes, batch_size=32)
    return time.perf_counter() - start


def main() -> None:
    import torch

    from obliviate.data import load_probes, read_jsonl
    from obliviate.modeling import load_model_and_tokenizer
    from obliviate.report.tables import format_table
    from obliviate.toy import ToyConfig, build_toy

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", help="an `obliviate toy` build (default: build one, random init, in a temp dir)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    toy = Path(args.toy) if args.toy else build_toy(Path(tempfile.mkdtemp()) / "toy", ToyConfig(pretrain_steps=0))
    model, tokenizer = load_model_and_tokenizer(toy / "base", device="cpu")
    texts = [r["prompt"] + r["completion"] for r in read_jsonl(toy / "train.jsonl")]
    probes = load_probes(toy / "probes.jsonl", tokenizer)
    step_s = {n: [] for n in args.threads}
    score_s = {n: [] for n in args.threads}
    train_steps(model, tokenizer, texts, 2)  # warm-up: allocator and kernels
    for _ in range(args.repeats):
        for n in args.threads:
            torch.set_num_threads(n)
            step_s[n].append(train_steps(model, tokenizer, texts, args.steps))
            score_s[n].append(scoring_pass(model, tokenizer, probes))
    base = args.threads[0]
    rows = [
        [
            n,
            statistics.median(step_s[n]),
            statistics.median(step_s[n]) / statistics.median(step_s[base]),
            statistics.median(score_s[n]),
            statistics.median(score_s[n]) / statistics.median(score_s[base]),
        ]
        for n in args.threads
    ]
    print(
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"{len(probes)} probes, {args.repeats} repeats (medians)"
    )
    print(format_table(rows, ["threads", "s / train step", f"vs {base}", "s / scoring pass", f"vs {base}"]))


if __name__ == "__main__":
    main()
