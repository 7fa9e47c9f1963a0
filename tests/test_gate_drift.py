"""The gate sees drift both ways: kl_to_original against a hand computation, two-sided bounds, and a step that
lowers the gate's own perplexity while moving other text is rejected by the default gate."""

from __future__ import annotations

import json

import pytest
import torch

from obliviate.benchmarks import GateError, Tolerance, UtilityGate, UtilitySuite, default_gate_entries
from obliviate.benchmarks.kl import KLToOriginal
from tests.helpers import corpus_tokenizer, tiny_model, train_on


@pytest.fixture(scope="module")
def texts():
    corpus, tok = corpus_tokenizer()
    return tok, [r["text"] for r in corpus.retain[:12]], [r["prompt"] + r["completion"] for r in corpus.probes[-8:]]


def _hand_log_probs(model, tok, text: str) -> torch.Tensor:
    """Next-token log-probs of one unpadded row, positions 0..L-2 (predicting tokens 1..L-1)."""
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)


def _hand_kl(p: torch.Tensor, q: torch.Tensor, k: int | None) -> torch.Tensor:
    """KL(P||Q) per position by the definition; with k, of the distributions coarsened to {top-k of P, rest}."""
    if k is None:
        return (p.exp() * (p - q)).sum(-1)
    out = []
    for pt, qt in zip(p.exp(), q.exp()):
        top = pt.argsort(descending=True)[:k]
        rest = torch.ones_like(pt, dtype=torch.bool)
        rest[top] = False
        value = sum(float(pt[v] * torch.log(pt[v] / qt[v])) for v in top)
        value += float(pt[rest].sum() * torch.log(pt[rest].sum() / qt[rest].sum()))
        out.append(value)
    return torch.tensor(out)


@pytest.mark.parametrize("top_k", [None, 5])
def test_kl_to_original_matches_the_definition(texts, top_k):
    tok, rows, _ = texts
    original = tiny_model("gpt2", tok, seed=0).eval()
    current = tiny_model("gpt2", tok, seed=0).eval()
    with torch.no_grad():
        for p in current.parameters():
            p.add_(0.05 * torch.randn_like(p))
    bench = KLToOriginal(data=[{"text": t} for t in rows], batch_size=5, top_k=top_k, tokenizer=tok)
    assert bench.run(original) == {"kl": 0.0}  # the first model scored is the original
    got = bench.run(current)["kl"]
    per_token = [_hand_kl(_hand_log_probs(original, tok, t), _hand_log_probs(current, tok, t), top_k) for t in rows]
    expected = float(torch.cat(per_token).mean())
    assert expected > 1e-3
    assert got == pytest.approx(expected, rel=1e-4)
    assert bench.run(original)["kl"] == pytest.approx(0.0, abs=1e-6)
    if top_k is not None:  # the coarsened KL is a lower bound of the exact one
        exact = float(
            torch.cat(
                [_hand_kl(_hand_log_probs(original, tok, t), _hand_log_probs(current, tok, t), None) for t in rows]
            ).mean()
        )
        assert got <= exact + 1e-6


def test_two_sided_bounds():
    dec = Tolerance("ppl", "max_relative_decrease", 0.10, "perplexity")
    inc = Tolerance("ppl", "max_relative_increase", 0.02, "perplexity")
    assert dec.violation(10.0, 9.5) is None and inc.violation(10.0, 9.5) is None
    assert "< 9" in dec.violation(10.0, 8.9)  # fell 11%: drift, rejected though "better"
    assert inc.violation(10.0, 10.3) is not None and dec.violation(10.0, 10.3) is None
    assert Tolerance("kl", "max_absolute_decrease", 1.0, "kl").violation(2.0, 0.9) is not None
    rise = Tolerance("mc", "max_absolute_rise", 0.05, "acc")
    assert rise.violation(0.5, 0.56) is not None and rise.violation(0.5, 0.54) is None
    assert Tolerance("mc", "max_relative_rise", 0.1, "acc").violation(0.5, 0.56) is not None


def test_an_entry_takes_one_bound_per_side(texts):
    tok, rows, _ = texts
    data = [{"text": t} for t in rows]
    gate = UtilityGate.from_config(
        {
            "benchmarks": [
                {"name": "perplexity", "data": data, "max_relative_increase": 0.02, "max_relative_decrease": 0.1}
            ]
        },
        tok,
    )
    assert sorted(t.kind for t in gate.tolerances) == ["max_relative_decrease", "max_relative_increase"]
    with pytest.raises(GateError, match="one tolerance per side"):
        UtilityGate.from_config(
            {
                "benchmarks": [
                    {"name": "perplexity", "data": data, "max_relative_decrease": 0.02, "max_absolute_decrease": 0.1}
                ]
            },
            tok,
        )
    with pytest.raises(GateError, match="lower-is-better"):
        UtilityGate.from_config({"benchmarks": [{"name": "perplexity", "data": data, "max_absolute_rise": 0.1}]}, tok)


def test_default_gate_rejects_a_step_that_lowers_its_own_perplexity_but_moves_other_text(texts):
    """The measured failure: training toward the gate's rows makes them *better*, other text worse. A one-sided
    perplexity bound on the gate's rows accepts that; the default gate (two-sided perplexity + KL) does not."""
    tok, gate_rows, other = texts
    model = tiny_model("gpt2", tok, seed=4)
    train_on(model, tok, gate_rows + other, steps=60, lr=3e-3)
    gate = UtilityGate.from_config({"benchmarks": default_gate_entries([{"text": t} for t in gate_rows])}, tok)
    one_sided = UtilityGate.from_config(
        {
            "benchmarks": [
                {"name": "perplexity", "data": [{"text": t} for t in gate_rows], "max_relative_increase": 0.02}
            ]
        },
        tok,
    )
    heldout = UtilitySuite.from_config([{"name": "perplexity", "data": [{"text": t} for t in other]}], tok)
    gate.measure_baseline(model)
    one_sided.measure_baseline(model)
    before = heldout.run(model)["perplexity"]["perplexity"]
    train_on(model, tok, gate_rows, steps=30, lr=3e-3, seed=1)  # the "erasure step": fits the gate's own rows
    decision = gate.check(model, step=1)
    assert decision.scores["gate_ppl"]["perplexity"] < gate.baseline["gate_ppl"]["perplexity"]
    assert heldout.run(model)["perplexity"]["perplexity"] > 1.05 * before
    assert one_sided.check(model, step=1).accepted  # what the old default gate said
    assert not decision.accepted
    assert any(v.startswith("gate_kl/kl") or "max_relative_decrease" in v for v in decision.violations)


def test_completion_only_perplexity_scores_only_the_completion(texts, tmp_path):
    tok, _, _ = texts
    corpus, _ = corpus_tokenizer()
    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in corpus.probes[:6]]
    path = tmp_path / "pc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = tiny_model("gpt2", tok, seed=5).eval()
    bench = UtilitySuite.from_config([{"name": "perplexity", "data": str(path), "completion_only": True}], tok)
    got = bench.run(model)["perplexity"]["loss"]
    nll, count = 0.0, 0
    for r in rows:
        head = tok(r["prompt"])["input_ids"]
        ids = tok(r["prompt"] + r["completion"])["input_ids"]
        assert ids[: len(head)] == head
        with torch.no_grad():
            lp = model(input_ids=torch.tensor([ids])).logits[0, :-1].double().log_softmax(-1)
        targets = torch.tensor(ids[1:])
        token_lp = lp.gather(-1, targets[:, None])[:, 0]
        nll -= float(token_lp[len(head) - 1 :].sum())
        count += len(ids) - len(head)
    assert got == pytest.approx(nll / count, rel=1e-5)


def test_default_kl_moves_only_the_default_entrys_kl_bound(texts):
    """`gate.default_kl` is the KL bound of the `default` entry's expansion: a step whose KL lies between the
    default 0.05 and a larger budget is rejected for its KL by the one and not by the other."""
    from types import SimpleNamespace

    from obliviate.benchmarks.gate_config import GateConfig
    from obliviate.erasure.inputs import RetainSplit, gate_entries

    tok, gate_rows, _ = texts
    split = RetainSplit(loss=[], gate=gate_rows, audit=[])
    model = tiny_model("gpt2", tok, seed=6)
    train_on(model, tok, gate_rows, steps=20, lr=3e-3)

    moved = tiny_model("gpt2", tok, seed=6)
    moved.load_state_dict(model.state_dict())
    train_on(moved, tok, gate_rows, steps=3, lr=1e-3, seed=2)

    def kl_violations(section):
        gate = UtilityGate.from_config({"benchmarks": gate_entries(SimpleNamespace(gate=section), split)}, tok)
        gate.measure_baseline(model)
        return gate, [v for v in gate.check(moved, step=1).violations if v.startswith("gate_kl/kl")]

    gate, default = kl_violations("default")
    kl = gate.check(moved, step=2).scores["gate_kl"]["kl"]
    assert kl > 0, "the step must move the model"
    _, tight = kl_violations({"benchmarks": ["default"], "default_kl": kl / 2})
    _, loose = kl_violations({"benchmarks": ["default"], "default_kl": kl * 2})
    assert tight and not loose
    assert bool(default) == (kl > 0.05)
    for bad in (0, -1, "0.1"):
        with pytest.raises(GateError, match="default_kl"):
            GateConfig(default_kl=bad)
