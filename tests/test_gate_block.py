"""``UtilityGate.run_block``: the gate runs a block of steps, rolls back bit for bit and backs off the lr.

    python -m pytest -q tests/test_gate_block.py

The gated score is a benchmark reading the model's weights directly (the sum of a linear layer's
weight, lower is better), and each step is SGD with momentum ascending that sum: every step raises
the score by a known amount, so which attempt the gate accepts is computed by hand below.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from obliviate.benchmarks import Tolerance, UtilityGate, UtilitySuite
from obliviate.benchmarks.base import UtilityBenchmark
from obliviate.benchmarks.block import ungated_block


class WeightSum(UtilityBenchmark):
    """Score ``weight_sum``: the sum of ``model.weight`` (lower is better)."""

    name = "weight_sum"
    directions = {"weight_sum": "lower"}
    primary = "weight_sum"

    def compute(self, model, tokenizer):
        return {"weight_sum": float(model.weight.detach().sum())}


MOMENTUM = 0.9


def _setup(tolerance: float, max_retries: int = 3, lr: float = 0.1):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    bench = WeightSum(tokenizer=object(), label="w")
    gate = UtilityGate(
        UtilitySuite([bench]),
        [Tolerance("w", "max_absolute_increase", tolerance)],
        every=2,
        backoff=0.5,
        max_retries=max_retries,
    )
    gate.measure_baseline(model)
    return model, optimizer, gate


def _stepper(model, optimizer):
    def step(lr: float) -> dict:
        (-model.weight.sum()).backward()  # gradient -1 on each of the 4 entries: the sum rises
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"lr": lr, "sum": float(model.weight.detach().sum())}

    return step


def _never_done(record) -> bool:
    return False


def _warm(model, optimizer):
    """One step first, so the momentum buffers exist and the snapshot must restore them too."""
    _stepper(model, optimizer)(optimizer.param_groups[0]["lr"])


def test_a_block_that_breaks_the_score_is_rolled_back_bitwise_until_the_lr_is_small_enough():
    model, optimizer, gate = _setup(tolerance=0.35)
    _warm(model, optimizer)
    gate.measure_baseline(model)
    reference_model = copy.deepcopy(model)
    reference_opt = torch.optim.SGD(reference_model.parameters(), lr=0.1, momentum=MOMENTUM)
    reference_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    restores = []
    block = gate.run_block(
        model,
        2,
        _stepper(model, optimizer),
        _never_done,
        0.1,
        list(model.parameters()),
        optimizer,
        after_restore=lambda: restores.append(float(model.weight.detach().sum())),
    )
    # With a momentum buffer of 1 per entry, two steps move each entry by lr * (1.9 + 2.71): 4 entries give
    # 18.44 * lr: 1.844 and 0.922 exceed 0.35, 0.461 too, 0.2305 (lr 0.0125) does not.
    assert [a.lr for a in block.attempts] == [0.1, 0.05, 0.025, 0.0125]
    assert [d.decision for d in block.decisions] == ["rejected", "rejected", "rejected", "accepted"]
    assert block.accepted and not block.exhausted and block.rejections == 3 and block.attempted_steps == 8
    assert block.lr == 0.0125 and optimizer.param_groups[0]["lr"] == 0.0125
    assert [r["lr"] for r in block.kept] == [0.0125, 0.0125]
    # Each restore put the weights back exactly where the block began (before after_restore ran).
    start = float(reference_model.weight.detach().sum())
    assert restores == [start] * 3
    # The kept weights are exactly those of two steps at lr 0.0125 from the snapshot, momentum included: a
    # momentum buffer left over from a rejected try would change them.
    for group in reference_opt.param_groups:
        group["lr"] = 0.0125
    ref_step = _stepper(reference_model, reference_opt)
    ref_step(0.0125), ref_step(0.0125)
    assert torch.equal(model.weight, reference_model.weight)
    assert torch.equal(
        optimizer.state[model.weight]["momentum_buffer"], reference_opt.state[reference_model.weight]["momentum_buffer"]
    )
    assert gate.snapshot_params == 0  # the snapshot is freed once the block is decided
    assert [d["decision"] for d in gate.decisions] == ["rejected"] * 3 + ["accepted"]


def test_an_exhausted_block_leaves_weights_and_optimizer_state_as_they_were():
    model, optimizer, gate = _setup(tolerance=0.0, max_retries=2)
    _warm(model, optimizer)
    gate.measure_baseline(model)
    weight = model.weight.detach().clone()
    buffer = optimizer.state[model.weight]["momentum_buffer"].clone()
    calls = []
    block = gate.run_block(
        model,
        2,
        _stepper(model, optimizer),
        _never_done,
        0.1,
        list(model.parameters()),
        optimizer,
        after_restore=lambda: calls.append(1),
    )
    assert block.exhausted and not block.accepted and block.kept == []
    assert [a.lr for a in block.attempts] == [0.1, 0.05, 0.025] and len(calls) == 3
    assert torch.equal(model.weight, weight)
    assert torch.equal(optimizer.state[model.weight]["momentum_buffer"], buffer)
    assert all("w/weight_sum" in d.violations[0] for d in block.decisions)


def test_good_steps_are_accepted_at_once_and_a_backed_off_lr_recovers():
    model, optimizer, gate = _setup(tolerance=10.0, lr=0.025)
    block = gate.run_block(
        model,
        2,
        _stepper(model, optimizer),
        _never_done,
        0.025,
        list(model.parameters()),
        optimizer,
        lr_ceiling=0.1,
        lr_recovery=2.0,
        position=lambda: 7,
        chunk=3,
    )
    assert block.accepted and len(block.attempts) == 1 and len(block.kept) == 2
    assert block.lr == 0.05 and optimizer.param_groups[0]["lr"] == 0.05  # x2, capped at the ceiling next time
    assert block.decisions[0].step == 7 and block.decisions[0].chunk == 3
    block = gate.run_block(
        model,
        2,
        _stepper(model, optimizer),
        _never_done,
        0.05,
        list(model.parameters()),
        optimizer,
        lr_ceiling=0.08,
        lr_recovery=2.0,
    )
    assert block.lr == 0.08


def test_the_judge_runs_every_judge_every_steps_and_the_last_and_can_end_the_attempt():
    model, optimizer, gate = _setup(tolerance=100.0)
    judged = []

    def judge(record) -> bool:
        judged.append(record["sum"])
        return len(judged) == 2  # "everything forgotten" at the second judgement

    block = gate.run_block(
        model, 7, _stepper(model, optimizer), judge, 0.01, list(model.parameters()), optimizer, judge_every=3
    )
    assert len(block.kept) == 6 and judged == [block.kept[2]["sum"], block.kept[5]["sum"]]
    judged.clear()
    plain = ungated_block(4, _stepper(model, optimizer), lambda r: judged.append(r) and False, 0.01, judge_every=3)
    assert len(plain.kept) == 4 and len(judged) == 2 and plain.decisions == [] and plain.accepted  # steps 3 and 4


def test_tolerances_are_resolved_into_copies_and_recorded_with_directions():
    given = Tolerance("w")  # no kind: the gate fills in the default for a lower-is-better score
    section = {
        "every": 1,
        "benchmarks": [
            {"name": "perplexity", "data": [{"text": "a b c d"}], "label": "ppl", "max_relative_increase": 0.05}
        ],
    }
    snapshot = copy.deepcopy(section)
    model, optimizer, _ = _setup(tolerance=1.0)
    gate = UtilityGate(UtilitySuite([WeightSum(tokenizer=object(), label="w")]), [given])
    gate.measure_baseline(model)
    assert given.kind is None and given.score is None
    assert (gate.tolerances[0].kind, gate.tolerances[0].value, gate.tolerances[0].score) == (
        "max_relative_increase",
        0.02,
        "weight_sum",
    )
    summary = gate.summary()
    assert summary["tolerances"] == [
        {"benchmark": "w", "kind": "max_relative_increase", "value": 0.02, "score": "weight_sum", "direction": "lower"}
    ]
    assert summary["directions"] == {"w": {"weight_sum": "lower"}}
    with pytest.raises(dataclasses.FrozenInstanceError):
        given.kind = "max_absolute_drop"  # frozen: nobody resolves a caller's tolerance in place
    from tests.helpers import corpus_tokenizer

    UtilityGate.from_config(section, corpus_tokenizer()[1])
    assert section == snapshot
