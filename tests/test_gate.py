"""UtilityGate: destructive steps are rejected and rolled back bitwise; benign steps pass; config errors."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from obliviate.benchmarks import GateConfig, GateError, UtilityGate, default_retain_gate
from obliviate.config import RecipeError, from_dict
from tests.helpers import corpus_tokenizer, tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    corpus, tok = corpus_tokenizer()
    root = tmp_path_factory.mktemp("gate")
    retain = root / "retain.jsonl"
    retain.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in corpus.retain[:24]))
    mc = root / "mc.jsonl"
    mc.write_text("".join(json.dumps(r) + "\n" for r in corpus.multiple_choice))
    batch = tok([r["text"] for r in corpus.retain[:8]], padding=True, return_tensors="pt")
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return tok, str(retain), str(mc), dict(batch)


def make_gate(setup, ppl_tolerance=0.01):
    tok, retain, mc, _ = setup
    section = {
        "every": 1,
        "backoff": 0.5,
        "max_retries": 3,
        "benchmarks": [
            {"name": "perplexity", "data": retain, "label": "retain", "max_relative_increase": ppl_tolerance},
            {"name": "multiple_choice", "data": mc, "max_absolute_drop": 0.01},
        ],
    }
    return UtilityGate.from_config(section, tok)


def adamw_step(model, optimizer, batch, lr: float) -> None:
    """One real training step at learning rate ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def assert_bitwise_equal_state(model, optimizer, weights, optim_state):
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    now = optimizer.state_dict()
    assert now["param_groups"] == optim_state["param_groups"]
    assert now["state"].keys() == optim_state["state"].keys()
    for index, state in optim_state["state"].items():
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        for key, value in state.items():
            assert torch.equal(now["state"][index][key], value), (index, key)


def test_destructive_step_is_rejected_and_rolled_back_bitwise(setup):
    tok, _, _, batch = setup
    model = tiny_model("gpt2", tok, seed=1).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gate = make_gate(setup)
    gate.measure_baseline(model)
    adamw_step(model, optimizer, batch, 1e-7)  # the optimizer now has moments and a step count to protect
    assert gate.check(model, step=1).accepted

    gate.snapshot(model.parameters(), optimizer)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    optim_state = copy.deepcopy(optimizer.state_dict())
    lr = 50.0
    for _retry in range(2):  # reject, restore, back off, reject again, restore again: the snapshot must survive
        adamw_step(model, optimizer, batch, lr)
        decision = gate.check(model, step=2, chunk=0)
        assert not decision.accepted
        assert any(v.startswith("retain/perplexity") for v in decision.violations)
        assert decision.scores["retain"]["perplexity"] > 1.01 * gate.baseline["retain"]["perplexity"]
        gate.restore()
        assert_bitwise_equal_state(model, optimizer, weights, optim_state)
        lr *= gate.backoff
    # Restoring is exact, so the restored model scores exactly the pre-step scores.
    assert gate.check(model, step=2, chunk=0).scores["retain"] == gate.decisions[0]["scores"]["retain"]
    assert [d["decision"] for d in gate.decisions] == ["accepted", "rejected", "rejected", "accepted"]
    assert set(gate.decisions[1]) == {
        "decision",
        "scores",
        "violations",
        "step",
        "chunk",
        "wall_s",
        "anchor",
        "outside_original",
    }
    assert gate.total_seconds >= sum(d["wall_s"] for d in gate.decisions)


def test_benign_step_is_accepted_and_logged(setup, caplog):
    tok, _, _, batch = setup
    model = tiny_model("gpt2", tok, seed=2).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)
    gate = make_gate(setup)
    with caplog.at_level(logging.INFO, logger="obliviate.benchmarks.gate"):
        gate.measure_baseline(model)
        gate.snapshot(model.parameters(), optimizer)
        adamw_step(model, optimizer, batch, 1e-7)
        decision = gate.check(model, step=7, chunk=3)
    assert decision.accepted and decision.violations == [] and (decision.step, decision.chunk) == (7, 3)
    assert decision.scores["retain"]["perplexity"] != gate.baseline["retain"]["perplexity"]  # it did change
    messages = [r.getMessage() for r in caplog.records]
    assert any("baseline" in m and "retain/perplexity=" in m for m in messages)
    assert any("step 7 chunk 3: accepted" in m and "multiple_choice/acc=" in m for m in messages)


def test_snapshot_copies_exactly_the_given_params_and_an_empty_optimizer_state(setup):
    tok, _, _, batch = setup
    model = tiny_model("gpt2", tok, seed=3).eval()
    chosen = [model.transformer.h[0].mlp.c_fc.weight, model.transformer.h[0].mlp.c_fc.weight]  # duplicates copied once
    optimizer = torch.optim.AdamW(chosen[:1], lr=1.0)
    gate = make_gate(setup)
    gate.snapshot(chosen, optimizer)  # before the first step: no optimizer state yet
    assert gate.snapshot_params == chosen[0].numel()
    before = chosen[0].detach().clone()
    other = model.transformer.h[1].mlp.c_fc.weight
    adamw_step(model, optimizer, batch, 1.0)
    with torch.no_grad():
        other.add_(1.0)  # not in the snapshot: restore must leave it alone
    changed_other = other.detach().clone()
    gate.restore()
    assert torch.equal(chosen[0], before)
    assert torch.equal(other, changed_other)
    assert len(optimizer.state) == 0 and optimizer.param_groups[0]["lr"] == 1.0


def test_default_retain_gate_and_null_section(setup):
    tok, retain, _, _ = setup
    gate = default_retain_gate(retain, tok)
    # Two-sided perplexity and KL to the original (drift both ways) on the text given.
    assert sorted((t.benchmark, t.score, t.kind, t.value) for t in gate.tolerances) == [
        ("gate_kl", "kl", "max_absolute_increase", 0.05),
        ("gate_ppl", "perplexity", "max_relative_decrease", 0.1),
        ("gate_ppl", "perplexity", "max_relative_increase", 0.02),
    ]
    assert (gate.every, gate.backoff, gate.max_retries) == (1, 0.5, 3)
    assert UtilityGate.from_config(None, tok) is None


def test_default_tolerances_by_direction(setup):
    tok, retain, mc, _ = setup
    gate = UtilityGate.from_config(
        {
            "benchmarks": [
                {"name": "perplexity", "data": retain},
                {"name": "multiple_choice", "data": mc, "score": "acc_norm"},
            ]
        },
        tok,
    )
    kinds = {(t.benchmark, t.score): (t.kind, t.value) for t in gate.tolerances}
    assert kinds == {
        ("perplexity", "perplexity"): ("max_relative_increase", 0.02),
        ("multiple_choice", "acc_norm"): ("max_absolute_drop", 0.01),
    }


@pytest.mark.parametrize(
    "entry, error, message",
    [
        (
            {"name": "perplexity", "max_absolute_drop": 0.1},
            GateError,
            "lower-is-better, so max_absolute_drop does not apply",
        ),
        (
            {"name": "multiple_choice", "max_relative_increase": 0.1},
            GateError,
            "use max_absolute_drop or max_relative_drop",
        ),
        ({"name": "perplexity", "max_relative_increse": 0.1}, RecipeError, "Did you mean 'max_relative_increase'"),
        (
            {"name": "perplexity", "max_relative_increase": 0.1, "max_absolute_increase": 1},
            GateError,
            "one tolerance per side",
        ),
        ({"name": "memorization", "max_absolute_drop": 0.1}, GateError, "reported, not gated"),
        ({"name": "perplexity", "max_relative_increase": -1}, GateError, "must be a number >= 0"),
    ],
)
def test_bad_gate_entries(setup, entry, error, message):
    tok, retain, mc, _ = setup
    entry = {**entry, "data": mc if entry["name"] == "multiple_choice" else retain}
    with pytest.raises(error, match=message):
        UtilityGate.from_config({"benchmarks": [entry]}, tok)


def test_bad_gate_sections_and_order(setup):
    tok, retain, _, _ = setup
    with pytest.raises(RecipeError, match="Did you mean 'every'"):
        from_dict(GateConfig, {"evry": 2, "benchmarks": [{"name": "perplexity"}]}, "the gate section")
    with pytest.raises(RecipeError, match="backoff must be in"):
        UtilityGate.from_config({"backoff": 1.5, "benchmarks": [{"name": "perplexity", "data": retain}]}, tok)
    with pytest.raises(RecipeError, match="gate: null"):
        UtilityGate.from_config({"benchmarks": []}, tok)
    probes = corpus_tokenizer()[0].probes[:4]
    with pytest.raises(GateError, match="no gated benchmark"):
        UtilityGate.from_config({"benchmarks": [{"name": "memorization", "data": probes}]}, tok)
    gate = default_retain_gate(retain, tok)
    model = tiny_model("gpt2", tok)
    with pytest.raises(GateError, match="before gate.measure_baseline"):
        gate.check(model, step=0)
    with pytest.raises(GateError, match="nothing to restore"):
        gate.restore()
