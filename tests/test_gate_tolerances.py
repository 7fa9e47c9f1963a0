"""Each of the gate's four tolerance kinds accepts inside its limit and rejects past it, through UtilityGate.check.

A stub benchmark returns scores the test sets, so every case sits a hair inside or outside the
limit its kind defines (docs/benchmarks.md "The gate"):

    max_relative_increase  lower-is-better   worst accepted = baseline + |baseline| * value
    max_absolute_increase  lower-is-better   worst accepted = baseline + value
    max_absolute_drop      higher-is-better  worst accepted = baseline - value
    max_relative_drop      higher-is-better  worst accepted = baseline - |baseline| * value

The values are chosen so each accepted case would be rejected, or each rejected case accepted,
under the formula of the other kind of the same direction: swapping two kinds fails a case.
"""

from __future__ import annotations

import pytest
import torch

from obliviate.benchmarks import GateError, UtilityBenchmark, UtilityGate, UtilitySuite

BASELINE = {"ppl": 100.0, "acc": 0.8}


class StubBenchmark(UtilityBenchmark):
    """Scores are whatever the model carries: the test moves them, no forward pass."""

    name = "stub"
    directions = {"ppl": "lower", "acc": "higher"}
    primary = "ppl"

    def compute(self, model, tokenizer):
        return dict(model.scores)


class ScoredModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scores = dict(BASELINE)


def gate_with(kind: str, value: float, score: str) -> tuple[UtilityGate, ScoredModel]:
    suite = UtilitySuite([StubBenchmark(tokenizer=object())])
    gate = UtilityGate(suite, [{"benchmark": "stub", "kind": kind, "value": value, "score": score}])
    model = ScoredModel()
    gate.measure_baseline(model)
    return gate, model


# kind, tolerance, score, a value just inside the limit, a value just outside it
CASES = [
    # limit 102; under max_absolute_increase 0.02 (limit 100.02) 101.9 would be rejected
    ("max_relative_increase", 0.02, "ppl", 101.9, 102.1),
    # limit 100.5; under max_relative_increase 0.5 (limit 150) 100.6 would be accepted
    ("max_absolute_increase", 0.5, "ppl", 100.4, 100.6),
    # limit 0.75; under max_relative_drop 0.05 (limit 0.76) 0.755 would be rejected
    ("max_absolute_drop", 0.05, "acc", 0.755, 0.745),
    # limit 0.6; under max_absolute_drop 0.25 (limit 0.55) 0.59 would be accepted
    ("max_relative_drop", 0.25, "acc", 0.61, 0.59),
]


@pytest.mark.parametrize("accepted", [True, False], ids=["inside", "outside"])
@pytest.mark.parametrize(("kind", "value", "score", "inside", "outside"), CASES, ids=[c[0] for c in CASES])
def test_each_tolerance_kind_accepts_inside_and_rejects_outside_its_limit(kind, value, score, inside, outside,
                                                                          accepted):
    gate, model = gate_with(kind, value, score)
    model.scores[score] = inside if accepted else outside
    decision = gate.check(model, step=1, chunk=0)
    assert decision.accepted is accepted
    assert decision.scores["stub"][score] == pytest.approx(model.scores[score])
    if accepted:
        assert decision.violations == []
    else:
        (violation,) = decision.violations
        assert violation.startswith(f"stub/{score}") and kind in violation
    assert gate.decisions[-1]["decision"] == ("accepted" if accepted else "rejected")


@pytest.mark.parametrize(("kind", "value", "score", "inside", "outside"), CASES, ids=[c[0] for c in CASES])
def test_the_limit_itself_and_any_improvement_are_accepted(kind, value, score, inside, outside):
    gate, model = gate_with(kind, value, score)
    base = BASELINE[score]
    slack = value * abs(base) if "relative" in kind else value
    lower_is_better = kind.endswith("increase")
    for moved in (base + slack if lower_is_better else base - slack,  # the worst value still accepted
                  base,  # unchanged
                  base / 2 if lower_is_better else min(1.0, base * 1.2)):  # better than the baseline
        model.scores[score] = moved
        assert gate.check(model, step=1).accepted, (kind, moved)


@pytest.mark.parametrize(("kind", "score"), [("max_relative_increase", "acc"), ("max_absolute_increase", "acc"),
                                             ("max_absolute_drop", "ppl"), ("max_relative_drop", "ppl")])
def test_a_kind_does_not_apply_to_a_score_of_the_other_direction(kind, score):
    suite = UtilitySuite([StubBenchmark(tokenizer=object())])
    with pytest.raises(GateError, match=f"stub/{score} is .*-is-better, so {kind} does not apply"):
        UtilityGate(suite, [{"benchmark": "stub", "kind": kind, "value": 0.1, "score": score}])


def test_a_nan_score_is_rejected_whatever_the_kind():
    for kind, value, score, _, _ in CASES:
        gate, model = gate_with(kind, value, score)
        model.scores[score] = float("nan")
        decision = gate.check(model, step=1)
        assert not decision.accepted and "NaN" in decision.violations[0], kind
