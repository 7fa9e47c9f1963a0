"""What a gated block of erasure steps returns (:class:`GateBlock`), and the steps loop it runs.

    python -c "from obliviate.benchmarks.block import GateBlock; help(GateBlock)"

:meth:`~obliviate.benchmarks.UtilityGate.run_block` runs :func:`run_steps` once per attempt;
:func:`ungated_block` is the same block when there is no gate, so a caller reads one shape either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from obliviate.benchmarks.gate import GateDecision


@dataclass
class BlockAttempt:
    """One try of a gated block: what each step returned, the gate's verdict (None: ungated), the lr it ran at."""

    records: list[Any]
    decision: GateDecision | None
    lr: float

    @property
    def accepted(self) -> bool:
        return self.decision is None or self.decision.accepted


@dataclass
class GateBlock:
    """What :meth:`UtilityGate.run_block` did: every attempt, the lr to continue with, whether it gave up."""

    attempts: list[BlockAttempt]
    lr: float
    exhausted: bool

    @property
    def accepted(self) -> bool:
        return not self.exhausted

    @property
    def kept(self) -> list[Any]:
        """The records of the accepted attempt's steps (none when every retry was rejected)."""
        return self.attempts[-1].records if self.accepted else []

    @property
    def decisions(self) -> list[GateDecision]:
        return [a.decision for a in self.attempts if a.decision is not None]

    @property
    def attempted_steps(self) -> int:
        return sum(len(a.records) for a in self.attempts)

    @property
    def rejections(self) -> int:
        return sum(not a.accepted for a in self.attempts)


def run_steps(
    n_steps: int, step: Callable[[float], Any], judge: Callable[[Any], bool], lr: float, judge_every: int = 1
) -> list[Any]:
    """Up to ``n_steps`` calls of ``step(lr)``; ``judge(record)`` after every ``judge_every``-th and the last.

    Returns the records ``step`` returned; stops early once ``judge`` returns True (nothing left to do).
    """
    records = []
    for k in range(n_steps):
        records.append(step(lr))
        if ((k + 1) % judge_every == 0 or k == n_steps - 1) and judge(records[-1]):
            break
    return records


def ungated_block(
    n_steps: int, step: Callable[[float], Any], judge: Callable[[Any], bool], lr: float, judge_every: int = 1
) -> GateBlock:
    """The same block with no gate: one attempt, always kept (the shape :meth:`UtilityGate.run_block` returns)."""
    return GateBlock([BlockAttempt(run_steps(n_steps, step, judge, lr, judge_every), None, lr)], lr, False)


def set_lr(optimizer: torch.optim.Optimizer | None, lr: float) -> None:
    """Every param group of ``optimizer`` (if any) to ``lr``."""
    for group in optimizer.param_groups if optimizer is not None else ():
        group["lr"] = lr
