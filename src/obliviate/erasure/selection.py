"""Streaming weight selection: gradients folded into scores tensor by tensor, and an exact global
top-k threshold found from score histograms, never from one index over every weight.

    python -c "from obliviate.erasure.selection import top_units; help(top_units)"

Memory (DESIGN §8: erasure peak <= 4x the float32 weights + 1.5 GB). A selector names its gradient
*streams*, each a linear combination of the loss terms the eraser yields (the contrastive metric
needs two: g_L and g_NLL - lambda * g_R). :func:`accumulate_streams` computes each stream with plain
backward passes that accumulate into ``.grad`` in place (no per-micro-batch copy of all gradients),
so at most two gradient-sized buffers exist, and the selector folds them into one score tensor per
parameter as soon as both exist, freeing each pair. Only the per-tensor scores, which replace the
first buffer, survive into :func:`top_units`.

The threshold. Scores are mapped to 32-bit keys whose integer order is the float order
(:func:`order_keys_`); a histogram of the high 16 bits of every key, weighted by the unit's element
count and summed over tensors (and over processes, for sharded parameters), locates the 65,536-wide
bin holding the cut; a second histogram of the low 16 bits inside that bin gives the exact key ``T``
of the unit at which the best-first running element count first reaches the target. Everything above
``T`` is selected; units *equal* to ``T`` are taken in candidate order (parameter order, then rank,
then flat index) until the target is reached, the crossing unit included, so the result is exactly a
stable descending sort taken best-first, and deterministic. ``-0.0`` counts as ``+0.0`` and NaN as
``-inf`` (never selected before a number).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

BINS = 1 << 16
_LOW = BINS - 1


@dataclass
class ShardGroup:
    """The processes among which the *scores* are sharded (FSDP / ZeRO-3 parameters), or one process.

    With full gradients on every rank (DDP: gradients all-reduced before scoring) use the default single
    group: every rank then computes the same selection alone. With sharded parameters each rank scores
    its own shard and the histograms and tie counts are summed over the group, so all ranks agree on one
    global threshold.

    Args:
        rank: this process's index in the group.
        world: number of processes holding shards.
    """

    rank: int = 0
    world: int = 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the group in place (a no-op for one process)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def order_keys_(scores: torch.Tensor) -> torch.Tensor:
    """Turn float32 ``scores`` into int32 keys, in place, such that key order is score order.

    Non-negative floats already compare like their bit patterns; negative ones compare in reverse,
    so their 31 magnitude bits are flipped. ``-0.0`` becomes ``+0.0`` first and NaN becomes ``-inf``.
    """
    if scores.dtype != torch.float32:
        raise TypeError(f"order_keys_ needs float32 scores, got {scores.dtype}")
    torch.nan_to_num_(scores, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    scores.add_(0.0)  # IEEE: -0.0 + 0.0 == +0.0, so the two zeros get one key
    bits = scores.view(torch.int32)
    flip = bits >> 31  # -1 (all ones) for negatives, 0 otherwise: arithmetic shift
    bits.bitwise_xor_(flip.bitwise_and_(0x7FFFFFFF))
    return bits


def _high(keys: torch.Tensor) -> torch.Tensor:
    return (keys >> 16).add_(BINS // 2)  # the signed high half, shifted into [0, BINS)


def _cut(hist: torch.Tensor, need: int) -> tuple[int, int]:
    """The bin at which the descending running total of ``hist`` first reaches ``need``, and the total above it."""
    running = hist.flip(0).cumsum(0)
    pos = int(torch.searchsorted(running, torch.tensor(need, dtype=running.dtype)).clamp(max=BINS - 1))
    b = BINS - 1 - pos
    return b, int(running[pos]) - int(hist[b])


def threshold_key(
    keys: dict[str, torch.Tensor], unit_sizes: dict[str, int], target: int, group: ShardGroup | None = None
) -> tuple[int, int]:
    """The key ``T`` of the unit where the best-first element count reaches ``target``, and the count strictly above.

    Args:
        keys: int32 keys (:func:`order_keys_`) of every unit, per parameter (this rank's shard).
        unit_sizes: elements per unit of each parameter.
        target: elements to select over the whole group (>= 1 and <= the group's total).
        group: the processes whose shards are ranked together.
    """
    group = group or ShardGroup()
    hist = torch.zeros(BINS, dtype=torch.long)
    for name, k in keys.items():
        hist += torch.bincount(_high(k), minlength=BINS) * unit_sizes[name]
    high, above = _cut(group.all_reduce(hist), target)
    hist = torch.zeros(BINS, dtype=torch.long)
    for name, k in keys.items():
        inside = k[(k >> 16) == high - BINS // 2]
        hist += torch.bincount(inside & _LOW, minlength=BINS) * unit_sizes[name]
    low, more = _cut(group.all_reduce(hist), target - above)
    return (high - BINS // 2) * BINS + low, above + more


def top_units(
    keys: dict[str, torch.Tensor], unit_sizes: dict[str, int], target: int, group: ShardGroup | None = None
) -> dict[str, torch.Tensor]:
    """Sorted indices of the selected units of each parameter (parameters with none are left out).

    The units a stable descending sort of all scores would take best-first until they hold ``target``
    elements (see the module docstring for ties), without sorting: two histogram passes and one mask.
    """
    group = group or ShardGroup()
    t, above = threshold_key(keys, unit_sizes, target, group)
    names = list(keys)
    ties = torch.zeros(len(names), group.world, dtype=torch.long)
    for j, name in enumerate(names):
        ties[j, group.rank] = int((keys[name] == t).sum())
    group.all_reduce(ties)
    remaining, chosen = target - above, {}
    for j, name in enumerate(names):
        k = keys[name]
        mask = k > t
        for rank in range(group.world):
            if remaining <= 0:
                break
            take = min(int(ties[j, rank]), math.ceil(remaining / unit_sizes[name]))
            remaining -= take * unit_sizes[name]
            if rank == group.rank and take:
                mask[(k == t).nonzero().squeeze(-1)[:take]] = True
        picked = mask.nonzero().squeeze(-1)
        if picked.numel():
            chosen[name] = picked
    return chosen


def accumulate_streams(
    terms: Iterable[dict[str, torch.Tensor]],
    params: dict[str, torch.nn.Parameter],
    streams: dict[str, dict[str, float]],
) -> dict[str, dict[str, torch.Tensor]]:
    """Gradients of each stream w.r.t. ``params``, summed over the micro-batches ``terms`` yields.

    Args:
        terms: per micro-batch, ``{kind: scalar}`` (the kinds share one forward graph per micro-batch).
        params: the parameters to differentiate (each gets ``requires_grad`` only for the duration).
        streams: ``{stream: {kind: coefficient}}``; a stream's gradient is the coefficient-weighted sum of
            its kinds' gradients. A kind may feed only one stream.

    Returns:
        ``{stream: {name: gradient}}`` (zeros for a parameter no term reaches). Each gradient is built by
        backward passes accumulating into ``.grad`` in place; the ``.grad`` slots are swapped between
        streams by reference, so no gradient is ever copied.
    """
    feeds: dict[str, tuple[str, float]] = {}
    for stream, combo in streams.items():
        for kind, coefficient in combo.items():
            if kind in feeds:
                raise ValueError(f"gradient kind {kind!r} feeds two streams ({feeds[kind][0]}, {stream})")
            feeds[kind] = (stream, float(coefficient))
    names, tensors = list(params), list(params.values())
    acc: dict[str, list[torch.Tensor | None]] = {s: [None] * len(tensors) for s in streams}
    saved = [p.grad for p in tensors]
    for p in tensors:
        p.requires_grad_(True)
        p.grad = None
    try:
        for batch in terms:
            items = [(kind, value) for kind, value in batch.items() if kind in feeds and feeds[kind][1] != 0.0]
            for j, (kind, value) in enumerate(items):
                stream, coefficient = feeds[kind]
                for p, g in zip(tensors, acc[stream]):
                    p.grad = g
                torch.autograd.backward(
                    value * coefficient if coefficient != 1.0 else value,
                    inputs=tensors,
                    retain_graph=j < len(items) - 1,
                )
                acc[stream] = [p.grad for p in tensors]
            for p in tensors:
                p.grad = None
    finally:
        for p, g in zip(tensors, saved):
            p.requires_grad_(False)
            p.grad = g
    return {
        s: {n: g if g is not None else torch.zeros_like(p) for n, p, g in zip(names, tensors, grads)}
        for s, grads in acc.items()
    }
