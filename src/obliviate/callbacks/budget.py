"""A memorization budget: limits that stop fine-tuning when crossed (DESIGN §4).

    python -c "from obliviate.callbacks import MemorizationBudget as B; print(B(max_flagged=3).check({}, 5))"

Each limit is checked after every scoring of the probes; the first one crossed stops training
(``control.should_training_stop``) and its message goes to the trainer's log and the logger.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MemorizationBudget:
    """Optional limits on memorization during fine-tuning; ``None`` means no limit."""

    max_extraction_rate: float | None = field(
        default=None,
        metadata={
            "help": "Stop when the exact-extraction rate of trained probes (members and "
            "canaries) exceeds this fraction."
        },
    )
    max_flagged: int | None = field(
        default=None, metadata={"help": "Stop when more than this many probes have been flagged."}
    )
    max_tail_p99: float | None = field(
        default=None,
        metadata={
            "help": "Stop when the 99th percentile of prefix_match_length over trained "
            "probes exceeds this many tokens (the tail is where the risk is)."
        },
    )

    def __post_init__(self):
        if self.max_extraction_rate is not None and not 0 <= self.max_extraction_rate <= 1:
            raise ValueError(f"max_extraction_rate must be in [0, 1], got {self.max_extraction_rate}")
        if self.max_flagged is not None and self.max_flagged < 0:
            raise ValueError(f"max_flagged must be >= 0, got {self.max_flagged}")
        if self.max_tail_p99 is not None and self.max_tail_p99 < 0:
            raise ValueError(f"max_tail_p99 must be >= 0, got {self.max_tail_p99}")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.max_extraction_rate, self.max_flagged, self.max_tail_p99))

    def check(self, summary: dict, n_flagged: int) -> str | None:
        """The first limit crossed, as a message, or None.

        Args:
            summary: :func:`~obliviate.metrics.sets.summarize_scores` of the current scores.
            n_flagged: probes flagged so far (this run and, after a resume, before it).
        """
        rate = summary.get("extraction_rate")
        if self.max_extraction_rate is not None and rate is not None and rate > self.max_extraction_rate:
            return f"extraction rate {rate:.3f} exceeds the budget's max_extraction_rate {self.max_extraction_rate}"
        if self.max_flagged is not None and n_flagged > self.max_flagged:
            return f"{n_flagged} probes flagged, more than the budget's max_flagged {self.max_flagged}"
        p99 = summary.get("tail/prefix_match_length/p99")
        if self.max_tail_p99 is not None and p99 is not None and p99 > self.max_tail_p99:
            return f"p99 of prefix_match_length {p99:.2f} exceeds the budget's max_tail_p99 {self.max_tail_p99}"
        return None

    def describe(self) -> dict:
        return {
            "max_extraction_rate": self.max_extraction_rate,
            "max_flagged": self.max_flagged,
            "max_tail_p99": self.max_tail_p99,
        }
