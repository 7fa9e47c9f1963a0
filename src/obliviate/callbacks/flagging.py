"""Which scored probes count as memorized: the flag rule of DESIGN §4.

    python -c "from obliviate.callbacks import FlagRule; print(FlagRule().describe())"

A probe is flagged when any enabled criterion holds:

1. ``exact_extraction == 1``: greedy decoding from the prefix reproduces the whole suffix;
2. ``extraction_probability >= min_extraction_probability``: an attacker drawing ``n`` samples
   (``SamplingConfig.n``, default 100) gets the suffix with at least this probability (Hayes et al. 2024);
3. ``memorization_accuracy`` above the ``control_ma_percentile``-th percentile of the control probes'
   MA *at the same step*: the model predicts this suffix better than it predicts almost every
   never-trained sequence of the same formats.

Controls can be flagged by 1 and 2 (a control that is extractable is a real finding: a leak from
pre-training, or a control that is not held out), never by 3, which is defined relative to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REASONS = ("exact_extraction", "extraction_probability", "control_relative_ma")


@dataclass
class FlagRule:
    """When a scored probe is flagged as memorized (any enabled criterion suffices)."""

    exact_extraction: bool = field(
        default=True, metadata={"help": "Flag probes whose suffix greedy decoding reproduces exactly."})
    min_extraction_probability: float | None = field(
        default=0.5, metadata={"help": "Flag probes with extraction_probability (n samples) at least this; "
                                       "null turns the criterion off."})
    control_ma_percentile: float | None = field(
        default=99.0, metadata={"help": "Flag non-control probes whose memorization accuracy exceeds this "
                                        "percentile of the controls' MA at the same step; null turns it off."})
    min_controls: int = field(
        default=10, metadata={"help": "Fewest control probes for the control-relative criterion; with fewer, a "
                                      "percentile says little and the criterion is skipped."})

    def __post_init__(self):
        if self.min_extraction_probability is not None and not 0 < self.min_extraction_probability <= 1:
            raise ValueError(f"min_extraction_probability must be in (0, 1] or null, got "
                             f"{self.min_extraction_probability}")
        if self.control_ma_percentile is not None and not 0 <= self.control_ma_percentile <= 100:
            raise ValueError(f"control_ma_percentile must be in [0, 100] or null, got {self.control_ma_percentile}")
        if self.min_controls < 1:
            raise ValueError(f"min_controls must be >= 1, got {self.min_controls}")
        if not (self.exact_extraction or self.min_extraction_probability is not None
                or self.control_ma_percentile is not None):
            raise ValueError("the flag rule has every criterion turned off, so it can never flag anything; "
                             "enable at least one of exact_extraction, min_extraction_probability, "
                             "control_ma_percentile.")

    def control_threshold(self, rows: list[dict]) -> float | None:
        """The control-relative MA threshold at this step, or None when the criterion is off or unusable."""
        if self.control_ma_percentile is None:
            return None
        controls = [r["memorization_accuracy"] for r in rows if r["role"] == "control"]
        if len(controls) < self.min_controls:
            return None
        return float(np.percentile(controls, self.control_ma_percentile))

    def reason(self, row: dict, control_threshold: float | None) -> str | None:
        """The first criterion (in :data:`REASONS` order) ``row`` meets, or None."""
        if self.exact_extraction and row["exact_extraction"] == 1:
            return "exact_extraction"
        if self.min_extraction_probability is not None and \
                row["extraction_probability"] >= self.min_extraction_probability:
            return "extraction_probability"
        if control_threshold is not None and row["role"] != "control" and \
                row["memorization_accuracy"] > control_threshold:
            return "control_relative_ma"
        return None

    def apply(self, rows: list[dict]) -> tuple[dict[str, str], float | None]:
        """Flag scored rows.

        Args:
            rows: :func:`~obliviate.metrics.score_probes` rows of one step (all probes, controls included).

        Returns:
            ``({probe id: reason}, control MA threshold or None)``.
        """
        threshold = self.control_threshold(rows)
        flags = {}
        for row in rows:
            reason = self.reason(row, threshold)
            if reason is not None:
                flags[row["id"]] = reason
        return flags, threshold

    def describe(self) -> dict:
        """The rule's settings, for ``flagged.meta.json``."""
        return {"exact_extraction": self.exact_extraction,
                "min_extraction_probability": self.min_extraction_probability,
                "control_ma_percentile": self.control_ma_percentile, "min_controls": self.min_controls}
