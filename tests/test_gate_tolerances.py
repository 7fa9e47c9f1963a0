"""Each of the gate's eight tolerance kinds accepts inside its limit and rejects past it, through UtilityGate.check.

A stub benchmark returns scores the test sets, so every case sits a hair inside or outside the
limit its kind defines (benchmarks/tolerances.py, docs/benchmarks.md "The gate"); baseline ppl 100, acc 0.8:

    kind                   direction         bounds   worst accepted
    max_relative_increase  lower-is-better   above    baseline + |baseline| * value
    max_absolute_increase  lower-is-better   above    baseline + value
    max_absolute_drop      higher-is-better  below    baseline - value
    max_relative_drop      higher-is-better  below    baseline - |baseline| * value
    max_relative_decrease  lower-is-better   below    baseline - |baseline| * value   (drift: "too good")
    max_absolute_decrease  lower-is-better   below    baseline - value
    max_relative_rise      higher-is-better  above    baseline + |baseline| * value
    max_absolute_rise      higher-is-better  above    baseline + value

The values are chosen so each accepted case would be rejected, or each rejected case accepted,
under the formula of the other kind of the same direction and side: swapping two kinds fails a case.
"""

from __future__ import annotations

import pytest
import torch

from obliviate.benchmarks import GateError, UtilityBenchmark, UtilityGate, UtilitySuite
from obliviate.benchmarks.tolerances import TOLERANCE_KEYS, UPPER_BOUNDS, Tolerance

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


# kind, tolerance, score, a value just inside the limit, a value just outside it (limits by hand)
CASES = [
    # limit 102; under max_absolute_increase 0.02 (limit 100.02) 101.9 would be rejected
    ("max_relative_increase", 0.02, "ppl", 101.9, 102.1),
    # limit 100.5; under max_relative_increase 0.5 (limit 150) 100.6 would be accepted
    ("max_absolute_increase", 0.5, "ppl", 100.4, 100.6),
    # limit 0.75; under max_relative_drop 0.05 (limit 0.76) 0.755 would be rejected
    ("max_absolute_drop", 0.05, "acc", 0.755, 0.745),
    # limit 0.6; under max_absolute_drop 0.25 (limit 0.55) 0.59 would be accepted
    ("max_relative_drop", 0.25, "acc", 0.61, 0.59),
    # limit 90; under max_absolute_decrease 0.1 (limit 99.9) 90.5 would be rejected
    ("max_relative_decrease", 0.1, "ppl", 90.5, 89.5),
    # limit 99.5; under max_relative_decrease 0.5 (limit 50) 99.4 would be accepted
    ("max_absolute_decrease", 0.5, "ppl", 99.6, 99.4),
    # limit 0.88; under max_absolute_rise 0.1 (limit 0.9) 0.885 would be accepted
    ("max_relative_rise", 0.1, "acc", 0.875, 0.885),
    # limit 0.85; under max_relative_rise 0.05 (limit 0.84) 0.845 would be rejected
    ("max_absolute_rise", 0.05, "acc", 0.845, 0.855),
]
HAND_LIMITS = {
    "max_relative_increase": 102.0,
    "max_absolute_increase": 100.5,
    "max_absolute_drop": 0.75,
    "max_relative_drop": 0.6,
    "max_relative_decrease": 90.0,
    "max_absolute_decrease": 99.5,
    "max_relative_rise": 0.88,
    "max_absolute_rise": 0.85,
}


def test_the_cases_cover_every_kind_and_the_hand_limits_are_the_gates():
    assert sorted(c[0] for c in CASES) == sorted(TOLERANCE_KEYS)
    for kind, value, score, _, _ in CASES:
        assert Tolerance("stub", kind, value, score).limit(BASELINE[score]) == pytest.approx(HAND_LIMITS[kind]), kind


@pytest.mark.parametrize("accepted", [True, False], ids=["inside", "outside"])
@pytest.mark.parametrize(("kind", "value", "score", "inside", "outside"), CASES, ids=[c[0] for c in CASES])
def test_each_tolerance_kind_accepts_inside_and_rejects_outside_its_limit(
    kind, value, score, inside, outside, accepted
):
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
def test_the_limit_itself_and_any_move_to_the_other_side_are_accepted(kind, value, score, inside, outside):
    """A bound holds one side only: past the limit's side is checked, the other side is free (a second entry
    bounds it)."""
    gate, model = gate_with(kind, value, score)
    base = BASELINE[score]
    other_side = base / 2 if kind in UPPER_BOUNDS else min(1.0, base * 1.2) if score == "acc" else base * 2
    for moved in (HAND_LIMITS[kind], base, other_side):  # the worst value still accepted, unchanged, other side
        model.scores[score] = moved
        assert gate.check(model, step=1).accepted, (kind, moved)


@pytest.mark.parametrize(("kind", "score"), [(k, "acc" if d == "lower" else "ppl") for k, d in TOLERANCE_KEYS.items()])
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


@pytest.mark.parametrize("kind", list(TOLERANCE_KEYS))
def test_a_recipe_entry_of_each_kind_becomes_that_tolerance(kind):
    """The recipe path (``gate.benchmarks`` entries) keeps the kind and value it is given, on the primary score."""
    from tests.helpers import corpus_tokenizer

    corpus, tok = corpus_tokenizer()
    if TOLERANCE_KEYS[kind] == "lower":
        entry = {"name": "perplexity", "data": [{"text": r["text"]} for r in corpus.retain[:4]]}
    else:
        entry = {"name": "multiple_choice", "data": corpus.multiple_choice[:4]}
    gate = UtilityGate.from_config({"benchmarks": [{**entry, "label": "b", kind: 0.125}]}, tok)
    (tolerance,) = gate.tolerances
    assert (tolerance.benchmark, tolerance.kind, tolerance.value, tolerance.direction) == (
        "b",
        kind,
        0.125,
        TOLERANCE_KEYS[kind],
    )
