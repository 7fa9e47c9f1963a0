"""Splitting probe work across processes so every rank runs the same number of forward passes.

    python -c "from obliviate.callbacks.distributed import padded_shard; print(padded_shard(5, 2, 1))"

Each rank takes one contiguous shard (as ``accelerate``'s ``split_between_processes`` splits a list)
and, when the probes do not divide evenly, pads it by repeating the shard's last item (its
``apply_padding=True``), so every rank holds ``ceil(n / world)`` items. Under FSDP or DeepSpeed ZeRO-3
a forward pass is a collective (parameters are all-gathered layer by layer), so a rank that ran one
pass fewer would hang the others; with DDP the padding is merely wasted work. Each rank drops its
padding before ``gather_object`` concatenates the shards in rank order, so every rank ends up with the
rows of all probes exactly once, in their original order: flag and budget decisions, computed on
every rank from the same rows, agree everywhere, and only the main process writes files.
"""

from __future__ import annotations

import dataclasses

PAD_SUFFIX = "#pad"
"""Appended to a padding copy's probe id (ids must stay unique within a shard)."""


def shard_bounds(n: int, world_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each rank's contiguous shard; the first ``n % world_size`` ranks get one more."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    base, extra = divmod(n, world_size)
    bounds, start = [], 0
    for rank in range(world_size):
        end = start + base + (rank < extra)
        bounds.append((start, end))
        start = end
    return bounds


def padded_shard(n: int, world_size: int, rank: int) -> tuple[list[int], int]:
    """This rank's positions, padded to ``ceil(n / world_size)``, and how many of them are real.

    The padding repeats the shard's last position (or position ``n - 1`` for a rank whose shard is
    empty, when ``n < world_size``); ``positions[real:]`` are the duplicates to drop after scoring.
    No padding is needed (and none is added) for ``n == 0``: no rank runs a pass.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    start, end = shard_bounds(n, world_size)[rank]
    positions = list(range(start, end))
    length = -(-n // world_size)
    if n and len(positions) < length:
        positions += [positions[-1] if positions else n - 1] * (length - len(positions))
    return positions, end - start


def shard_probes(probes, world_size: int, rank: int):
    """``(ProbeSet, real)``: this rank's padded shard of ``probes`` (padding copies get ``#pad<k>`` ids)."""
    from obliviate.data.probes import ProbeSet

    positions, real = padded_shard(len(probes), world_size, rank)
    items = [probes[i] for i in positions[:real]]
    items += [
        dataclasses.replace(probes[i], id=f"{probes[i].id}{PAD_SUFFIX}{k}") for k, i in enumerate(positions[real:])
    ]
    return ProbeSet(items), real


def gather_rows(rows: list[dict], accelerator, real: int | None = None) -> list[dict]:
    """All ranks' rows concatenated in rank order, each rank's padding (``rows[real:]``) dropped first."""
    rows = rows if real is None else rows[:real]
    if accelerator is None or accelerator.num_processes <= 1:
        return rows
    from accelerate.utils import gather_object

    return gather_object(rows)


def sharded_parameters(model) -> str | None:
    """How ``model``'s parameters are sharded across processes, or None when every rank holds them whole.

    Read off the model itself, not the accelerator state, so a model wrapped by hand (``fully_shard``) is seen
    too: ``"fsdp2"`` when a parameter is a ``DTensor`` (``torch.distributed.fsdp.fully_shard``), ``"fsdp"``
    for a ``FullyShardedDataParallel`` module, ``"deepspeed-zero3"`` when a parameter carries DeepSpeed's
    partition id (``ds_id``). On such a model each forward pass is a collective: every rank must run it.
    """
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed support
        DTensor = ()
    for module in model.modules():
        if type(module).__name__ == "FullyShardedDataParallel":
            return "fsdp"
    for param in model.parameters():
        if isinstance(param, DTensor):
            return "fsdp2"
        if hasattr(param, "ds_id"):
            return "deepspeed-zero3"
    return None


def broadcast_from_main(value, accelerator):
    """The main process's ``value`` on every rank (a no-op on one process)."""
    if accelerator is None or accelerator.num_processes <= 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]
