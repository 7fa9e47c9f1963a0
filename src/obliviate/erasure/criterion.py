"""When is a sequence forgotten? (Jang et al. 2022, as in DESIGN §5)

    python -c "from obliviate.erasure.criterion import ForgettingCriterion; help(ForgettingCriterion)"

A sequence is forgotten when it is not exactly extractable (greedy decoding from the prefix does
not reproduce the suffix) and both its memorization accuracy and its extraction probability are
below thresholds. With control probes (never trained on) the thresholds are their means on the
model before erasure: "no more memorized than text the model never saw". Without controls they
are the absolute ``max_memorization_accuracy`` / ``max_extraction_probability`` of the config.
All scores come from :func:`obliviate.metrics.score_sequences` / :func:`~obliviate.metrics.score_probes`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass
class ForgettingCriterion:
    """Thresholds of the criterion; strict inequalities (a score equal to the control mean is not below it)."""

    memorization_accuracy: float
    extraction_probability: float
    source: str
    controls: int = 0

    def forgotten(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """Boolean ``(N,)`` from :func:`~obliviate.metrics.score_sequences` output."""
        return ((scores["exact_extraction"] == 0)
                & (scores["memorization_accuracy"] < self.memorization_accuracy)
                & (scores["extraction_probability"] < self.extraction_probability))

    def row_forgotten(self, row: dict) -> bool:
        """The same test on one :func:`~obliviate.metrics.score_probes` row."""
        return (row["exact_extraction"] == 0 and row["memorization_accuracy"] < self.memorization_accuracy
                and row["extraction_probability"] < self.extraction_probability)

    def to_dict(self) -> dict:
        return asdict(self)


def build_criterion(config, control_rows: list[dict] | None) -> ForgettingCriterion:
    """Thresholds per ``config.thresholds``: from control rows (scored before erasure) or absolute.

    Raises:
        ValueError: ``thresholds: controls`` without control probes.
    """
    use_controls = config.thresholds == "controls" or (config.thresholds == "auto" and control_rows)
    if use_controls:
        if not control_rows:
            raise ValueError("thresholds: controls needs control probes: pass --controls FILE (rows with role "
                             "'control'), or set thresholds: absolute.")
        return ForgettingCriterion(
            float(np.mean([r["memorization_accuracy"] for r in control_rows])),
            float(np.mean([r["extraction_probability"] for r in control_rows])),
            "controls", len(control_rows))
    return ForgettingCriterion(config.max_memorization_accuracy, config.max_extraction_probability, "absolute")
