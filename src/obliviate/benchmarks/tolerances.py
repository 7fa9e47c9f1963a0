"""How far a gated score may move from its baseline: the tolerance kinds and :class:`Tolerance`.

    python -c "from obliviate.benchmarks.tolerances import Tolerance; print(Tolerance('retain', 'max_relative_increase', 0.02).limit(10.0))"

A tolerance is relative to the baseline: ``max_relative_increase`` / ``max_absolute_increase`` for
lower-is-better scores (perplexity), ``max_absolute_drop`` / ``max_relative_drop`` for
higher-is-better ones (accuracy in [0, 1], so one point is 0.01). A gated benchmark with no
tolerance gets perplexity-style +2% relative or accuracy-style -0.01 absolute on its primary score.

Bounds can be two-sided: a model that moves far from where it was is not "still working" because
one score improved (an erasure that lowers the gate's perplexity by 60% has changed the model as
surely as one that raises it). ``max_relative_decrease`` / ``max_absolute_decrease`` bound how far
a lower-is-better score may *fall*, ``max_relative_rise`` / ``max_absolute_rise`` how far a
higher-is-better one may rise. An entry may give one bound per side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from obliviate.benchmarks.base import BenchmarkError, UtilityBenchmark

TOLERANCE_KEYS = {
    "max_relative_increase": "lower",
    "max_absolute_increase": "lower",
    "max_absolute_drop": "higher",
    "max_relative_drop": "higher",
    "max_relative_decrease": "lower",
    "max_absolute_decrease": "lower",
    "max_relative_rise": "higher",
    "max_absolute_rise": "higher",
}
"""Tolerance kind -> the direction of the score it applies to."""
UPPER_BOUNDS = {"max_relative_increase", "max_absolute_increase", "max_relative_rise", "max_absolute_rise"}
"""Kinds that bound a score from above (the rest bound it from below)."""
WORSENING = {"max_relative_increase", "max_absolute_increase", "max_absolute_drop", "max_relative_drop"}
"""Kinds that bound the bad direction (the others bound the improving direction: drift)."""
DEFAULT_TOLERANCE = {"lower": ("max_relative_increase", 0.02), "higher": ("max_absolute_drop", 0.01)}


class GateError(BenchmarkError):
    """A gate used out of order (check before baseline, restore before snapshot) or misconfigured."""


def check_schedule(every: int, backoff: float, max_retries: int) -> None:
    if not isinstance(every, int) or every < 1:
        raise GateError(f"gate.every must be an integer >= 1, got {every!r}")
    if not 0 < backoff < 1:
        raise GateError(f"gate.backoff must be in (0, 1), got {backoff!r}")
    if not isinstance(max_retries, int) or max_retries < 0:
        raise GateError(f"gate.max_retries must be an integer >= 0, got {max_retries!r}")


@dataclass(frozen=True)
class Tolerance:
    """How far one score of one benchmark may move from its baseline.

    Frozen: the gate resolves a tolerance (default score and kind) into a new one, so the caller's
    objects never change under it.
    """

    benchmark: str
    kind: str | None = None
    value: float | None = None
    score: str | None = None

    def __post_init__(self):
        if self.kind is not None and self.kind not in TOLERANCE_KEYS:
            raise GateError(f"unknown tolerance {self.kind!r}; use one of {', '.join(TOLERANCE_KEYS)}.")
        if (self.kind is None) != (self.value is None):
            raise GateError(
                f"tolerance of {self.benchmark!r} needs both a kind and a value, e.g. "
                "Tolerance('retain', 'max_relative_increase', 0.02)."
            )
        if self.value is not None and not (isinstance(self.value, (int, float)) and self.value >= 0):
            raise GateError(f"tolerance {self.kind} of {self.benchmark!r} must be a number >= 0, got {self.value!r}.")

    @property
    def direction(self) -> str | None:
        """``"lower"`` or ``"higher"`` (is better): the direction of the score this kind bounds."""
        return TOLERANCE_KEYS[self.kind] if self.kind is not None else None

    def to_dict(self) -> dict:
        """JSON-ready, with the direction: what a report needs to draw the bound without guessing."""
        return {
            "benchmark": self.benchmark,
            "kind": self.kind,
            "value": self.value,
            "score": self.score,
            "direction": self.direction,
        }

    def resolved(self, bench: UtilityBenchmark, strict: bool, scores=()) -> Tolerance:
        """This tolerance with the default score and kind filled in, checked against the score's direction.

        Args:
            bench: the benchmark it gates.
            strict: raise when the score or its direction is still unknown (after the baseline run);
                otherwise return what is known so far (some benchmarks name their scores only after a run).
            scores: the benchmark's score names, for the error message.
        """
        score = self.score or bench.primary_score
        direction = bench.direction(score) if score else None
        if score is None or direction is None:
            if strict:
                raise GateError(
                    f"cannot tell which score of {self.benchmark!r} to gate or its direction; name it "
                    f"with `score:` (its scores: {', '.join(scores)})."
                )
            return replace(self, score=score)
        kind, value = (self.kind, self.value) if self.kind is not None else DEFAULT_TOLERANCE[direction]
        if TOLERANCE_KEYS[kind] != direction:
            fits = [k for k, d in TOLERANCE_KEYS.items() if d == direction]
            raise GateError(
                f"{self.benchmark}/{score} is {direction}-is-better, so {kind} does not apply; use {' or '.join(fits)}."
            )
        return replace(self, score=score, kind=kind, value=value)

    def limit(self, baseline: float) -> float:
        """The worst value still accepted."""
        relative = self.kind.startswith("max_relative")
        slack = abs(baseline) * self.value if relative else self.value
        return baseline + (slack if self.kind in UPPER_BOUNDS else -slack)

    def violation(self, baseline: float, value: float) -> str | None:
        """None when ``value`` is within tolerance of ``baseline``, else a message saying by how much not."""
        name = f"{self.benchmark}/{self.score}"
        limit = self.limit(baseline)
        if math.isnan(value):
            return f"{name} is NaN (baseline {baseline:.6g})"
        # A hair of slack so that an unchanged score is never rejected by rounding.
        eps = 1e-9 * max(1.0, abs(baseline))
        if self.kind in UPPER_BOUNDS and value > limit + eps:
            return f"{name} {value:.6g} > {limit:.6g} (baseline {baseline:.6g}, {self.kind} {self.value})"
        if self.kind not in UPPER_BOUNDS and value < limit - eps:
            return f"{name} {value:.6g} < {limit:.6g} (baseline {baseline:.6g}, {self.kind} {self.value})"
        return None


DEFAULT_PERPLEXITY_INCREASE = 0.02
DEFAULT_PERPLEXITY_DECREASE = 0.10
DEFAULT_KL_TOLERANCE = 0.05
"""The default gate's bounds (chosen by measurement: docs/erasure.md, docs/perf/erasure.md)."""


def default_gate_entries(data, label: str = "gate", kl_tolerance: float | None = None) -> list[dict]:
    """The default gate's benchmark entries on ``data`` (text no loss optimizes):

    - ``perplexity`` (label ``<label>_ppl``), two-sided: at most +2%, at most -10%;
    - ``kl_to_original`` (label ``<label>_kl``): mean per-token KL(original || current) at most 0.05 nats/token.

    Args:
        data: ``{"text"}`` JSONL path or a list of ``{"text"}`` rows.
        label: prefix of the entries' labels.
        kl_tolerance: the KL bound, nats/token (None: ``DEFAULT_KL_TOLERANCE``).
    """
    kl_tolerance = DEFAULT_KL_TOLERANCE if kl_tolerance is None else kl_tolerance
    return [
        {
            "name": "perplexity",
            "data": data,
            "label": f"{label}_ppl",
            "max_relative_increase": DEFAULT_PERPLEXITY_INCREASE,
            "max_relative_decrease": DEFAULT_PERPLEXITY_DECREASE,
        },
        {"name": "kl_to_original", "data": data, "label": f"{label}_kl", "max_absolute_increase": kl_tolerance},
    ]
