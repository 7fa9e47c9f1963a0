"""Splitting probe scoring across processes and gathering the rows back in probe order.

    python -c "from obliviate.callbacks.distributed import shard_bounds; print(shard_bounds(10, 3))"

Each rank scores one contiguous shard (as ``accelerate``'s ``split_between_processes`` splits a
list), and ``gather_object`` concatenates the shards in rank order, so every rank ends up with the
rows of all probes in their original order: flag and budget decisions, computed on every rank from
the same rows, agree everywhere, and only the main process writes files.
"""

from __future__ import annotations


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


def gather_rows(rows: list[dict], accelerator) -> list[dict]:
    """All ranks' rows concatenated in rank order (a no-op on one process)."""
    if accelerator is None or accelerator.num_processes <= 1:
        return rows
    from accelerate.utils import gather_object

    return gather_object(rows)


def broadcast_from_main(value, accelerator):
    """The main process's ``value`` on every rank (a no-op on one process)."""
    if accelerator is None or accelerator.num_processes <= 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]
