"""The gate's recipe section and its verdicts: ``GateConfig`` (``gate:``) and ``GateDecision`` (one check).

:class:`~obliviate.benchmarks.gate.UtilityGate` is built from a ``GateConfig`` and returns a ``GateDecision``
from every ``check``; both are re-exported by ``obliviate.benchmarks.gate`` and ``obliviate.benchmarks``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from obliviate.benchmarks.suite import check_entries
from obliviate.benchmarks.tolerances import GateError, check_schedule

DEFAULT_ENTRY = "default"
"""In a gate section's ``benchmarks:``, the default gate's entries (see :func:`default_gate_entries`)."""


@dataclass
class GateDecision:
    """The outcome of one :meth:`UtilityGate.check`."""

    accepted: bool
    step: int
    chunk: int | None
    scores: dict[str, dict[str, float]]
    violations: list[str]
    wall_s: float
    anchor: str | None = None
    outside_original: list[str] = field(default_factory=list)

    @property
    def decision(self) -> str:
        return "accepted" if self.accepted else "rejected"

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "step": self.step,
            "chunk": self.chunk,
            "scores": self.scores,
            "violations": list(self.violations),
            "wall_s": self.wall_s,
            "anchor": self.anchor,
            "outside_original": list(self.outside_original),
        }


@dataclass
class GateConfig:
    """The recipe's ``gate:`` section (``gate: null`` means no gate)."""

    every: int = field(default=1, metadata={"help": "optimizer steps between checks (one snapshot covers them)."})
    backoff: float = field(default=0.5, metadata={"help": "learning-rate factor after a rejected step, in (0, 1)."})
    max_retries: int = field(default=3, metadata={"help": "retries of a rejected step before giving up on the chunk."})
    benchmarks: list = field(
        default_factory=list,
        metadata={
            "help": "entries {name, data, score?, max_relative_increase | max_absolute_increase | max_absolute_drop | "
            "max_relative_drop, ...benchmark options}."
        },
    )

    default_kl: float | None = field(
        default=None,
        metadata={
            "help": "the `default` entry's bound on KL(original || current), nats/token (None: 0.05). Raise it "
            "where the gate-only text is kept records of the erased formats: erasing a PIN moves the model on "
            "every kept PIN note (docs/perf/erasure.md, 'the gate's KL budget on same-format text')."
        },
    )
    reference: bool = field(
        default=False,
        metadata={
            "help": "also accept a model between the original and the erasure's reference_model (the model the "
            "fine-tuning started from): scores inside the band the two span, no farther from the reference than "
            "the original (benchmarks/gate_reference.py)."
        },
    )

    def __post_init__(self):
        if not isinstance(self.reference, bool):
            raise GateError(f"gate.reference must be true or false, got {self.reference!r}")
        check_schedule(self.every, self.backoff, self.max_retries)
        if self.default_kl is not None and not (isinstance(self.default_kl, (int, float)) and self.default_kl > 0):
            raise GateError(f"gate.default_kl must be a number > 0 (nats/token), got {self.default_kl!r}")
        # "default" stands for the default gate's entries on the gate-only retain split (erasure/inputs.py).
        entries = (
            [e for e in self.benchmarks if e != DEFAULT_ENTRY] if isinstance(self.benchmarks, list) else self.benchmarks
        )
        if isinstance(self.benchmarks, list) and DEFAULT_ENTRY in self.benchmarks and not entries:
            return
        checked = check_entries(entries, "the gate section (use `gate: null` for no gate)")
        if isinstance(self.benchmarks, list) and DEFAULT_ENTRY in self.benchmarks:
            checked = [DEFAULT_ENTRY, *checked]
        self.benchmarks = checked
