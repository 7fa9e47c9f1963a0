"""The frozen-prefix cache against the full model, pass by pass, on the real SmolLM2-135M, in one run.

    make real-model                                    # the model, once
    OMP_NUM_THREADS=1 python perf/prefix_cache.py      # top 4 of 30 blocks written, as recipes/real/erase.yaml
    OMP_NUM_THREADS=1 python perf/prefix_cache.py --top 8 12 --repeat 5

The erasure's three kinds of pass, each timed with the cache off and on (alternating, so both see the same
machine load), on the data ``obliviate real-model --data`` writes: an optimizer step's forward + backward over
8 secret-bearing probes (blocks below the top ``--top`` frozen, as with ``target_modules``), a scoring pass over
all 72 probes (the criterion's), and a forward pass over the retain texts (the gate's and the KL term's). The
cache's one-time fill (one unpadded pass of the frozen blocks per text) is shown apart. Every cached pass is
also checked against the full one: the largest |difference| of the step's loss and of the scores.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

from obliviate.data import load_probes, read_jsonl
from obliviate.erasure.losses import forward_suffix, retain_nll_terms
from obliviate.erasure.prefix_cache import FrozenPrefixCache
from obliviate.metrics import score_probes
from obliviate.modeling import load_model_and_tokenizer
from obliviate.real import ensure_real_model, write_real_data


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """Seconds of the first call (the cached path fills the cache there), the median of ``repeat`` calls after
    it, and the last call's result."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), result


def passes(model, tokenizer, probes, forget, retain_rows):
    """The three passes, each returning a number to compare between the two paths."""

    def step():
        out = forward_suffix(
            model, [p.prefix_ids for p in forget], [p.suffix_ids for p in forget], tokenizer.pad_token_id
        )
        loss = out.sequence_nll().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss.detach())

    @torch.no_grad()
    def score():
        return torch.tensor([r["suffix_log_prob"] for r in score_probes(model, tokenizer, probes, batch_size=16)])

    @torch.no_grad()
    def retain():
        return float(sum(retain_nll_terms(model, retain_rows, tokenizer.pad_token_id, 8)))

    return {"step (8 probes, fwd+bwd)": step, "score (72 probes)": score, "retain text (fwd)": retain}


def difference(a, b) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the converted SmolLM2 of `make real-model`)")
    parser.add_argument("--top", type=int, nargs="+", default=[4], help="blocks written, counted from the top")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_model_and_tokenizer(args.model or ensure_real_model()[0], device="cpu")
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        write_real_data(Path(tmp), tokenizer)
        probes = load_probes(Path(tmp) / "probes.jsonl", tokenizer)
        retain_rows = [tokenizer(r["text"])["input_ids"] for r in read_jsonl(Path(tmp) / "retain.jsonl")][:16]
    forget = [p for p in probes if p.role == "canary"][:8]
    n_blocks = model.config.num_hidden_layers
    print(f"SmolLM2-135M ({n_blocks} blocks), 1 torch thread, median of {args.repeat}\n")
    print("| blocks written | pass | full model (s) | cached (s) | speed-up | first cached call (s) | max |diff| |")
    print("|---|---|---|---|---|---|---|")
    for top in args.top:
        pattern = rf"layers\.({'|'.join(str(i) for i in range(n_blocks - top, n_blocks))})\."
        for p in model.parameters():
            p.requires_grad_(False)
        written = {n: p for n, p in model.named_parameters() if re.search(pattern, n)}
        kinds = passes(model, tokenizer, probes, forget, retain_rows)
        full = {name: measure(fn, name, written, args.repeat) for name, fn in kinds.items()}
        sample = [list(p.prefix_ids) + list(p.suffix_ids) for p in forget[:4]]
        cache, status = FrozenPrefixCache.install(model, written, sample, 2**30)
        if cache is None:
            raise SystemExit(f"the cache refused this model: {status}")
        for name, fn in kinds.items():
            first, seconds, result = measure(fn, name, written, args.repeat)
            before = full[name][1]
            print(
                f"| top {top} | {name} | {before:.2f} | {seconds:.2f} | {before / seconds:.1f}x | {first:.2f} "
                f"| {difference(result, full[name][2]):.1e} |"
            )
        summary = cache.summary()
        print(f"\ntop {top}: {summary['rows']} texts cached, {summary['bytes'] / 2**20:.1f} MB")
        cache.remove()


def measure(fn, name: str, written, repeat: int):
    """``timed(fn)`` with gradients on the written weights for the step only."""
    for p in written.values():
        p.requires_grad_(name.startswith("step"))
    try:
        return timed(fn, repeat)
    finally:
        for p in written.values():
            p.requires_grad_(False)


if __name__ == "__main__":
    main()
