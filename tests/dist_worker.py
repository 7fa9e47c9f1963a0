"""The worker tests/test_distributed.py launches with 1 and with 2 processes (gloo, CPU).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_worker.py OUT

On an uneven split (5 probes on 2 ranks) it records, per rank, how many forward passes each sharded
computation ran (FSDP/ZeRO-3 need them equal), and on the main process the results to compare with
one process: the gathered probe rows, the erasure's selection gradients and selection, the weights
after a short erasure, and a selection over parameters sharded across the ranks (one global threshold).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

N_PROBES = 5
SHAPES = {"emb": (13, 5), "w": (7, 3, 2), "bias": (9,), "norm": (4,)}


def full_scores(seed: int = 0) -> dict[str, torch.Tensor]:
    """Tie-heavy scores, the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randint(-3, 4, s, generator=g).float() for n, s in SHAPES.items()}


def sharded_selection(rank: int, world: int, scope: str) -> list[tuple[str, int]]:
    """(name, global flat index) selected when each rank holds a contiguous slice of every flattened tensor."""
    from obliviate.callbacks.distributed import shard_bounds
    from obliviate.erasure.selection import ShardGroup
    from obliviate.erasure.selectors import select_top

    scores, params, starts = {}, {}, {}
    for n, s in full_scores().items():
        start, end = shard_bounds(s.numel(), world)[rank]
        scores[n], params[n], starts[n] = s.reshape(-1)[start:end].clone(), torch.zeros(end - start), start
    selection = select_top(scores, params, 0.2, "element", scope, ShardGroup(rank, world))
    return [
        (n, starts[n] + i)
        for n, idx in selection.indices.items()
        for i in (range(params[n].numel()) if idx is None else idx.tolist())
    ]


def main(out: str) -> None:
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    from obliviate.callbacks.distributed import gather_rows, shard_probes
    from obliviate.erasure import EraseConfig, Eraser
    from obliviate.erasure.eraser import _seeded
    from obliviate.metrics import score_probes
    from tests.ddp_worker import fresh_model, sft_probes
    from tests.helpers import corpus_tokenizer

    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)  # on CPU only cpu=True makes accelerate join the torchrun gloo group
    rank, world = acc.process_index, acc.num_processes
    _, tokenizer = corpus_tokenizer()
    probes = sft_probes(tokenizer)
    forget = probes.subset(probes.ids[:N_PROBES])
    model = fresh_model(tokenizer).eval()
    forwards = [0]
    model.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    counts, result = {}, {"world": world}

    # the callback's path: a padded shard, scored, the padding dropped before gathering
    shard, real = shard_probes(forget, world, rank)
    rows = score_probes(model, tokenizer, shard, batch_size=2)
    result["rows"] = gather_rows(rows, acc, real)
    counts["score"], forwards[0] = forwards[0], 0

    # the erasure's selection gradients, micro-batches of 2 over the padded shard
    config = EraseConfig(batch_size=2, select_fraction=0.05, learning_rate=1e-2, max_steps=3, gate=None)
    eraser = Eraser(model, tokenizer, forget, config, accelerator=acc)
    eraser._prepare_model()
    grads = eraser._gradients(forget, list(range(N_PROBES)), None, _seeded(0), eraser.selector.streams)
    counts["gradients"], forwards[0] = forwards[0], 0
    result["grads"] = {s: {n: g.clone() for n, g in v.items()} for s, v in grads.items()}
    selection = eraser.selector.select(eraser.candidates, grads, _seeded(0))
    result["selection"] = {n: None if i is None else i.tolist() for n, i in selection.indices.items()}

    # a short erasure (fresh eraser and model): steps over the padded shard, summed gradients
    model = fresh_model(tokenizer).eval()
    model.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    erased = Eraser(model, tokenizer, forget, config, accelerator=acc).erase()
    counts["erase"] = forwards[0]
    result["weights"] = {n: p.detach().clone() for n, p in erased.model.named_parameters()}
    result["losses"] = [s["loss"] for s in erased.report["steps"]]

    result["sharded"] = {
        scope: sorted(x for part in gather_object([sharded_selection(rank, world, scope)]) for x in part)
        if world > 1
        else sorted(sharded_selection(0, 1, scope))
        for scope in ("global", "per_tensor")
    }
    result["forwards"] = gather_object([counts]) if world > 1 else [counts]
    if acc.is_main_process:
        torch.save(result, out)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
