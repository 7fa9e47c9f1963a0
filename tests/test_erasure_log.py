"""The erasure report is a function of the run's ``ErasureLog``; report plots read the gate the run recorded.

python -m pytest -q tests/test_erasure_log.py
"""

from __future__ import annotations

import json
import math

import pytest

from obliviate.erasure import EraseConfig, Eraser
from obliviate.erasure.log import ErasureLog, ScoredSets
from obliviate.erasure.result import build_report, last_line
from obliviate.metrics.sets import set_mean, set_statistics
from obliviate.report.build import utility_rows
from obliviate.report.collect import score_directions
from obliviate.report.plots import _gate_tolerances
from tests.helpers import corpus_tokenizer, trained_retain_rows


def _row(i: str, role: str, ma: float, extracted: bool, loss: float = 1.0) -> dict:
    return {
        "id": i,
        "role": role,
        "memorization_accuracy": ma,
        "exact_extraction": extracted,
        "extraction_probability": 0.5 if extracted else 0.0,
        "loss": loss,
    }


def _log() -> ErasureLog:
    """Two chunks, one erased and one the gate gave up on; controls that lost half their MA."""
    config = EraseConfig(gate=None).to_dict()
    gate = {
        "every": 1,
        "backoff": 0.5,
        "max_retries": 0,
        "baseline": {"ppl": {"perplexity": 10.0}},
        "tolerances": [
            {
                "benchmark": "ppl",
                "kind": "max_relative_increase",
                "value": 0.02,
                "score": "perplexity",
                "direction": "lower",
            }
        ],
        "directions": {"ppl": {"perplexity": "lower"}},
        "decisions": [
            {"decision": "accepted", "step": 1, "chunk": 0, "scores": {}, "violations": [], "wall_s": 0},
            {"decision": "rejected", "step": 2, "chunk": 1, "scores": {}, "violations": ["x"], "wall_s": 0},
        ],
        "total_seconds": 1.0,
        "rollback_seconds": 0.5,
        "accepted": 1,
        "rejected": 1,
    }
    chunks = [
        {
            "index": 0,
            "ids": ["a"],
            "status": "erased",
            "steps": 1,
            "attempted_steps": 1,
            "rejections": 0,
            "optimizer_state_bytes": 64,
            "selected": 5,
            "candidates": 100,
        },
        {
            "index": 1,
            "ids": ["b"],
            "status": "gate_exhausted",
            "steps": 0,
            "attempted_steps": 1,
            "rejections": 1,
            "optimizer_state_bytes": 32,
            "selected": 7,
            "candidates": 100,
        },
    ]
    scores = ScoredSets(
        forget_before=[_row("a", "canary", 1.0, True), _row("b", "canary", 0.8, True)],
        forget_after=[_row("a", "canary", 0.1, False), _row("b", "canary", 0.7, True)],
        controls_before=[_row("c1", "control", 0.4, False), _row("c2", "control", 0.2, False)],
        controls_after=[_row("c1", "control", 0.2, False), _row("c2", "control", 0.1, False)],
    )
    return ErasureLog(
        config=config,
        steps=[{"step": 1}, {"step": 2}],
        chunks=chunks,
        forgotten_steps={"a": 1, "b": None},
        global_step=2,
        touched={"h.0", "h.1", "h.2"},
        groups={"a": None, "b": None, "c1": "pin", "c2": "pin"},
        scores=scores,
        final_forgotten={"a": True, "b": False},
        gate=gate,
        utility={
            "before": {"ppl": {"perplexity": 10.0}},
            "after": {"ppl": {"perplexity": 10.1}},
            "directions": {"ppl": {"perplexity": "lower"}},
        },
        thresholds={"source": "controls"},
        retain_contrast=0.5,
        timings={"scoring_s": 1.0, "update_s": 2.0, "selection_s": 0.5, "total_s": 5.0, "gate_s": 1.5},
    )


def test_report_is_built_from_the_log_alone():
    log = _log()
    report = build_report(log)
    s = report["summary"]
    assert (s["sequences"], s["forgotten"], s["forgotten_rate"]) == (2, 1, 0.5)
    assert (s["extraction_rate_before"], s["extraction_rate_after"]) == (1.0, 0.5)
    assert (s["chunks_erased"], s["chunks_gate_exhausted"], s["steps"], s["attempted_steps"]) == (1, 1, 1, 2)
    assert (s["gate_rejections"], s["optimizer_state_bytes"], s["selected_weights"]) == (1, 64, 7)
    assert s["touched_tensors"] == 3 and s["retain_contrast"] == 0.5 and "chunk(s) 1" in s["not_erased"]
    # The controls kept 50% of their MA, under min_controls_ma_kept (75%): format damage, said in the last line.
    assert len(s["format_damage"]) == 1 and "kept 50%" in s["format_damage"][0]
    assert last_line(report).startswith("NOT ERASED: 1 of 2")
    assert [q["forgotten_step"] for q in report["sequences"]] == [1, None]
    # The gate record is split: decisions in gate_decisions, the rest (tolerances, directions) under gate.
    assert [d["decision"] for d in report["gate_decisions"]] == ["accepted", "rejected"]
    assert "decisions" not in report["gate"] and report["gate"]["tolerances"][0]["direction"] == "lower"
    assert "decisions" in log.gate  # building the report does not change the log
    assert report["collateral"]["controls"]["pin"]["memorization_accuracy_kept"] == pytest.approx(0.5)
    assert json.loads(json.dumps(report)) == report


@pytest.mark.parametrize(
    ("reference_ma", "damaged", "reverted"),
    [
        (None, True, False),  # no reference model: 50% of before is damage
        (0.05, False, True),  # 0.15 after, the reference at 0.05: the fine-tuning's lesson reverted, said beside
        (0.25, True, False),  # the reference at 0.25 > 0.15 / 0.75: below the floor of both, damage
    ],
)
def test_controls_floor_is_the_lower_of_before_and_the_reference_model(reference_ma, damaged, reverted):
    log = _log()
    log.final_forgotten = {"a": True, "b": True}
    if reference_ma is not None:
        log.scores.controls_reference = [
            _row("c1", "control", reference_ma, False),
            _row("c2", "control", reference_ma, False),
        ]
    s = build_report(log)["summary"]
    assert bool(s["format_damage"]) is damaged and bool(s["format_reverted"]) is reverted
    line = last_line(build_report(log))
    if damaged:
        assert line.startswith("FORMAT DAMAGED")
        assert f"of {min(0.3, reference_ma or 1):.3f} required" in s["format_damage"][0]
    else:
        assert line.startswith("erased all 2 sequences within the utility gate; controls of group 'pin' fell back")
        assert "(0.300 -> 0.150, it gives them 0.050)" in line


def test_set_statistics_is_the_plain_mean_of_rows_or_columns():
    rows = [_row("a", "member", 1.0, True), _row("b", "member", 0.5, False), _row("c", "member", 0.0, False)]
    assert set_statistics(rows) == {"extraction_rate": pytest.approx(1 / 3), "mean_memorization_accuracy": 0.5}
    import torch

    columns = {
        "exact_extraction": torch.tensor([True, False, False]),
        "memorization_accuracy": torch.tensor([1.0, 0.5, 0.0]),
    }
    assert set_statistics(columns) == set_statistics(rows)
    assert math.isnan(set_mean([], "loss"))


def test_a_real_erasure_report_is_its_log_rebuilt_and_records_the_gate(memorized_gpt2):
    from obliviate.benchmarks import UtilityGate

    mem = memorized_gpt2
    rows = corpus_tokenizer()[0].retain
    gate = UtilityGate.from_config(
        {
            "every": 1,
            "max_retries": 1,
            "benchmarks": [
                {"name": "perplexity", "data": rows, "label": "retain", "max_relative_increase": 0.5},
                {"name": "kl_to_original", "data": rows[:8], "label": "kl", "max_absolute_increase": 1.0},
            ],
        },
        mem.tokenizer,
    )
    config = EraseConfig(method="ga", selector="all", learning_rate=1e-3, max_steps=2, gate=None)
    eraser = Eraser(
        mem.fresh(),
        mem.tokenizer,
        mem.probes.subset(["canary-x8-0"]),
        config,
        gate=gate,
        controls=mem.probes.by_role("control"),
    )
    report = eraser.erase().report
    assert report == build_report(eraser.log)
    assert report["gate"]["tolerances"] == [
        {
            "benchmark": "retain",
            "kind": "max_relative_increase",
            "value": 0.5,
            "score": "perplexity",
            "direction": "lower",
        },
        {"benchmark": "kl", "kind": "max_absolute_increase", "value": 1.0, "score": "kl", "direction": "lower"},
    ]
    assert report["gate"]["directions"]["retain"] == {"perplexity": "lower", "loss": "lower"}
    assert report["utility"]["directions"]["kl"] == {"kl": "lower"}
    assert report["gate_decisions"] and all(s["step"] for s in report["steps"])
    # The plot's lines come from the recorded tolerances: +50% relative; KL's baseline is 0 (no relative line).
    assert _gate_tolerances(report) == [(pytest.approx(50.0), "retain: max +50%")]


def test_units_follow_the_recorded_direction_not_the_score_name():
    """A score named like a perplexity but recorded higher-is-better is shown in points, its bound a drop."""
    report = {
        "gate": {
            "tolerances": [
                {
                    "benchmark": "odd",
                    "score": "ppl_like",
                    "kind": "max_absolute_drop",
                    "value": 0.05,
                    "direction": "higher",
                }
            ],
            "directions": {"odd": {"ppl_like": "higher"}},
        },
        "utility": {"before": {"odd": {"ppl_like": 0.5}}, "after": {"odd": {"ppl_like": 0.45}}},
    }
    assert score_directions(report) == {"odd/ppl_like": "higher"}
    assert _gate_tolerances(report) == [(pytest.approx(-5.0), "odd: max −5 points")]
    rows = utility_rows(report["utility"]["before"], report["utility"]["after"], score_directions(report))
    assert rows == [["odd/ppl_like", "0.5", "0.45", "-5.00 points"]]
    # Recorded lower-is-better instead: a relative change.
    flipped = utility_rows(report["utility"]["before"], report["utility"]["after"], {"odd/ppl_like": "lower"})
    assert flipped[0][3] == "-10.00% rel."


def test_rejected_blocks_of_selected_entries_are_scattered_back_bitwise(memorized_gpt2):
    """Element selection keeps trainable copies: the gate's restore puts them back and the eraser's after_restore
    must scatter them into the weights again, or the rejected steps would stay in the model."""
    import torch

    from obliviate.benchmarks import UtilityGate

    mem = memorized_gpt2
    model = mem.fresh()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gate = UtilityGate.from_config(
        {
            "every": 2,
            "max_retries": 1,
            "benchmarks": [
                {"name": "perplexity", "data": trained_retain_rows(), "label": "retain", "max_relative_increase": 0.0}
            ],
        },
        mem.tokenizer,
    )
    config = EraseConfig(
        method="ga", selector="contrastive", select_fraction=0.05, learning_rate=1e-2, max_steps=4, gate=None
    )
    eraser = Eraser(model, mem.tokenizer, mem.probes.subset(["canary-x8-0"]), config, gate=gate)
    report = eraser.erase().report
    assert eraser.last_selection.indices and any(i is not None for i in eraser.last_selection.indices.values())
    assert report["chunks"][0]["status"] == "gate_exhausted" and report["chunks"][0]["steps"] == 0
    # Two attempts (the second backed off), every step of both rolled back.
    assert [d["decision"] for d in report["gate_decisions"]] == ["rejected", "rejected"]
    assert (report["steps"][0]["learning_rate"], report["steps"][-1]["learning_rate"]) == (1e-2, 5e-3)
    assert all(s["rolled_back"] for s in report["steps"])
    for name, p in eraser.model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name
