"""Keeping the process's resident memory close to what is live (glibc malloc), for the erasure's peak RSS.

    python -c "from obliviate.erasure.memory import release_freed_memory; release_freed_memory()"

PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves large requests with ``mmap``
only above a *dynamic* threshold that rises to the size of the largest chunk freed so far (up to 32 MB
on 64-bit), so after the first big backward pass nearly every gradient and activation lives in the
heap, and freed heap memory stays resident: measured on SmolLM2-135M, 1.4-3 GB of RSS held nothing
between the erasure's phases (docs/perf/memory.md). Fixing the threshold (``M_MMAP_THRESHOLD``, which
also disables the dynamic rule) hands every tensor of a megabyte or more straight back to the kernel
when it is freed, and ``malloc_trim`` returns what smaller frees left. Elsewhere than glibc both are no-ops.

Activation memory grows with the tokens of a forward pass, so the erasure's passes are bounded in
tokens x vocabulary (:func:`rows_per_pass`), not only in sequences.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

MICRO_BATCH_LOGITS = 1 << 24
"""Most logits (tokens x vocabulary) one forward pass of the erasure may hold: 64 MB of float32, ~340
tokens of a 49k vocabulary (whose logits and log-softmax copies cost ~1 MB per token)."""

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20
"""Allocations at least this large are mmapped (returned to the kernel on free): gradients, activations, logits."""


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def bound_heap_retention() -> bool:
    """Fix glibc's mmap threshold at 1 MB for this process (once); True when it took effect."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def release_freed_memory() -> None:
    """Return freed heap pages to the kernel (``malloc_trim(0)``), after a phase freed large buffers."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def rows_per_pass(longest: int, vocab: int, batch_size: int) -> int:
    """Sequences per forward pass: ``batch_size``, fewer when their logits would exceed ``MICRO_BATCH_LOGITS``.

    Depends only on data every rank holds (the longest sequence, the vocabulary), so under FSDP/ZeRO-3
    every rank runs equally many passes.
    """
    return max(1, min(batch_size, MICRO_BATCH_LOGITS // max(1, longest * vocab)))
