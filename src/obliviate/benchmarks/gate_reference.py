"""The gate's second anchor: accept a model that lies between the original and the model it was fine-tuned from.

    python -c "from obliviate.benchmarks.gate_reference import ReferenceBand; help(ReferenceBand)"

The default gate bounds every score relative to the model being erased (the *original*). That cannot
tell repair from drift when the fine-tuning itself moved general text: on SmolLM2-135M the secret-bearing
SFT took held-out perplexity from 80 to 134 and KL(tracked || base) on it to 0.76 nats/token, so erasing
what that fine-tuning added moves the model back toward its base, and a gate that allows 0.05 nats from
the original rejects the erasure long before the secrets are gone (docs/real-model.md). Yet the base is
a model the user already trusts on that text.

With ``gate.reference: true`` (and the erasure's ``reference_model``) a check that breaks a bound of the
original is still accepted when the model is *between the two*:

- every gated score other than a KL lies inside the band the two models span, with the same tolerances
  (perplexity at most ``max(original, reference) x (1 + 2%)`` and at least ``min(...) x (1 - 10%)``);
- on each ``kl_to_original`` benchmark's text, KL(reference || current) is at most KL(reference ||
  original) + the same KL tolerance: the model is no farther from the reference than the original is.

A drift away from both models breaks the second condition (or the band); reverting the fine-tuning
meets both. The decision records which anchor accepted it, and the original's violations beside.
"""

from __future__ import annotations

import copy
import logging

from obliviate.benchmarks.kl import KLToOriginal
from obliviate.benchmarks.tolerances import UPPER_BOUNDS, GateError, Tolerance

logger = logging.getLogger(__name__)

REFERENCE_SUFFIX = "_from_reference"
"""Label suffix of the KL(reference || current) copy of a gated ``kl_to_original`` benchmark."""


class ReferenceBand:
    """The reference model's scores and KL(reference || .) copies of the gate's KL benchmarks.

    Order of use (the gate calls these): :meth:`measure_reference` on the reference model before the gate's
    baseline, :meth:`measure_original` on the original with the baseline, then :meth:`violations` when a
    check breaks a bound of the original.

    Args:
        suite: the gate's suite.
        tolerances_of: returns the gate's tolerances (resolved at the baseline, so read at each call).
    """

    def __init__(self, suite, tolerances_of):
        self.suite, self._tolerances_of = suite, tolerances_of
        self.kl_copies: dict[str, KLToOriginal] = {}
        self.reference_scores: dict[str, dict[str, float]] | None = None
        self.original_kl: dict[str, float] = {}

    def measure_reference(self, reference) -> None:
        """Score the gated benchmarks on ``reference``; cache its distributions for KL(reference || .)."""
        if self.reference_scores is not None:
            raise GateError("the gate's reference model was measured already; measure it once, before the baseline.")
        labels = [b.label for b in self.suite if b.gated]
        plain = [label for label in labels if not isinstance(self.suite[label], KLToOriginal)]
        self.reference_scores = self.suite.run(reference, labels=plain) if plain else {}
        for label in labels:
            bench = self.suite[label]
            if isinstance(bench, KLToOriginal):
                mirror = copy.copy(bench)  # shares the tokenized rows; its own cache
                mirror.reset()
                mirror.run(reference)  # the first model a KL benchmark scores is its anchor
                self.kl_copies[label] = mirror
        logger.info("gate reference: %s", self.reference_scores)

    def measure_original(self, original) -> dict[str, float]:
        """KL(reference || original) on each KL benchmark's text: how far the original is from the reference."""
        if self.reference_scores is None:
            raise GateError(
                "gate.reference is on but the reference model was not measured: call "
                "gate.measure_reference(reference_model) before gate.measure_baseline(model)."
            )
        self.original_kl = {label: bench.run(original)["kl"] for label, bench in self.kl_copies.items()}
        logger.info("gate: KL(reference || original) %s", self.original_kl)
        return dict(self.original_kl)

    def violations(self, model, scores: dict[str, dict[str, float]], baseline) -> tuple[list[str], dict]:
        """Why ``model`` (with the gate's ``scores`` of it) is not between the two models; [] when it is.

        Returns:
            ``(violations, extra_scores)``: ``extra_scores`` holds the KL(reference || current) measured.
        """
        found, extra = [], {}
        for t in self._tolerances_of():
            if t.benchmark in self.kl_copies:
                continue  # a KL to the original is replaced by the distance to the reference below
            ends = (baseline[t.benchmark][t.score], self.reference_scores[t.benchmark][t.score])
            if v := t.violation(max(ends) if t.kind in UPPER_BOUNDS else min(ends), scores[t.benchmark][t.score]):
                found.append(f"{v} [band to the reference {ends[1]:.6g}]")
        for label, mirror in self.kl_copies.items():
            kl, name = mirror.run(model)["kl"], f"{label}{REFERENCE_SUFFIX}"
            extra[name] = {"kl": kl}
            value = next(t.value for t in self._tolerances_of() if t.benchmark == label)
            bound = Tolerance(name, "max_absolute_increase", value, "kl")
            if v := bound.violation(self.original_kl[label], kl):
                found.append(f"{v} [KL(reference || current): farther from the reference than the original]")
        return found, extra

    def summary(self) -> dict:
        return {"reference_scores": self.reference_scores, "kl_reference_to_original": dict(self.original_kl)}
