"""How many intra-op threads torch uses on CPU, chosen once per command (``--threads N``).

    python -c "from obliviate.threads import configure_threads; print(configure_threads(None))"

Measured on the 2-core development box (``perf/threads.py``, docs/guide.md "Threads"): one thread is
faster than two for every obliviate command on the toy model, idle or loaded. Its matrices are too
small for a second thread to pay for its synchronisation, and on a loaded machine spinning OpenMP
workers fight the other processes for the cores (issue 10 measured 116.7 s against 37.9 s for one
SmolLM2-135M step with 2 vs 1 threads). So the default is one thread, unless the user's environment
already asks for a count with ``OMP_NUM_THREADS`` (then that is respected). ``--threads 0`` leaves
torch's own default (one per physical core), the right choice on an idle many-core machine with a big model.
"""

from __future__ import annotations

import os
import sys

DEFAULT_THREADS = 1
"""The measured faster setting on a small, shared CPU (see the module docstring)."""


def resolve_threads(requested: int | None) -> int | None:
    """The thread count to set: ``requested``, else ``OMP_NUM_THREADS``, else :data:`DEFAULT_THREADS`.

    Returns None for ``requested == 0`` (torch's default is kept).

    Raises:
        ValueError: a negative ``requested`` or a non-integer ``OMP_NUM_THREADS``.
    """
    if requested is not None:
        if requested < 0:
            raise ValueError(f"--threads must be >= 0 (0: torch's default), got {requested}.")
        return requested or None
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS={env!r} is not an integer; unset it or give a count.") from None
        if value >= 1:
            return value
    return DEFAULT_THREADS


def configure_threads(requested: int | None) -> int:
    """Set torch's intra-op thread count for this process and return the count in effect.

    Before torch is imported (the CLI's case: a recipe typo must fail before that slow import) the count
    goes into ``OMP_NUM_THREADS``, which torch reads when it starts; after, ``torch.set_num_threads``.

    Args:
        requested: ``--threads``: a count, 0 for torch's default, None for the measured default.

    Returns:
        int: the count in effect, or 0 for torch's default when torch is not imported yet.
    """
    count = resolve_threads(requested)
    if "torch" not in sys.modules:
        if count is None:
            return 0
        os.environ["OMP_NUM_THREADS"] = str(count)
        return count
    import torch

    if count is not None:
        torch.set_num_threads(count)
    return torch.get_num_threads()
