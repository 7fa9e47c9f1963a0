"""The state of one chunk of the erasure loop: which sequences are forgotten, and since which step.

    python -c "from obliviate.erasure.chunk import ChunkState; help(ChunkState)"

A gate rollback puts it back to where the block began (:meth:`ChunkState.save` / :meth:`ChunkState.load`),
as it puts back the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from obliviate.benchmarks.block import GateBlock


class ChunkState:
    """One chunk's forgotten flags and, per id, the step from which the criterion has held (None: not yet)."""

    def __init__(self, ids: list[str], forgotten: torch.Tensor, step: int):
        self.ids, self.forgotten = ids, forgotten
        self.first = {i: (step if f else None) for i, f in zip(ids, forgotten.tolist())}
        self.state_bytes = 0  # the most optimizer-state bytes seen in this chunk

    @property
    def all_forgotten(self) -> bool:
        return bool(self.forgotten.all())

    @property
    def active(self) -> list[int]:
        """Positions of the sequences still to erase (the only ones in the loss)."""
        return [i for i, f in enumerate(self.forgotten.tolist()) if not f]

    def update(self, forgotten: torch.Tensor, step: int) -> None:
        self.forgotten = forgotten
        for i, f in zip(self.ids, forgotten.tolist()):
            self.first[i] = (self.first[i] if self.first[i] is not None else step) if f else None

    def save(self) -> tuple[torch.Tensor, dict]:
        return self.forgotten.clone(), dict(self.first)

    def load(self, saved: tuple[torch.Tensor, dict]) -> None:
        """Back to ``saved`` (after a gate rollback), keeping ``saved`` intact for another retry."""
        self.forgotten, self.first = saved[0].clone(), dict(saved[1])


def attempt_records(block: GateBlock) -> list[dict]:
    """Every step record of ``block``, in order: those of rejected attempts marked ``rolled_back``, the last
    of each gated attempt carrying the gate's decision (``{"decision", "scores", "violations"}``)."""
    out = []
    for attempt in block.attempts:
        decision = attempt.decision
        if decision is not None:
            attempt.records[-1]["gate"] = {
                "decision": decision.decision,
                "scores": decision.scores,
                "violations": list(decision.violations),
            }
        for record in attempt.records:
            record["rolled_back"] = not attempt.accepted
        out += attempt.records
    return out
