"""``gate.reference``: a model between the original and its reference model is accepted, drift away from both is
not, judged against perplexity and KL computed by hand on unpadded rows.

python -m pytest -q tests/test_gate_reference.py
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from obliviate.benchmarks import GateError, UtilityGate
from obliviate.config import RecipeError
from obliviate.erasure import EraseConfig, EraseConfigError
from tests.helpers import corpus_tokenizer, tiny_model, train_on

KL_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def models():
    """A reference trained on the gate's kind of text, and an "original" fine-tuned from it on other text."""
    corpus, tok = corpus_tokenizer()
    retain = [r["text"] for r in corpus.retain]
    reference = tiny_model("gpt2", tok, seed=0)
    train_on(reference, tok, retain[12:], steps=60)
    original = copy.deepcopy(reference)
    train_on(original, tok, [r["prompt"] + r["completion"] for r in corpus.train], steps=40, seed=1)
    return tok, retain[:12], reference.eval(), original.eval()


def _mix(a, b, t: float):
    """The model whose every weight is a + t (b - a): t = 0 is ``a``, t = 1 is ``b``, t < 0 beyond ``a``."""
    out = copy.deepcopy(a)
    with torch.no_grad():
        for p, pa, pb in zip(out.parameters(), a.parameters(), b.parameters()):
            p.copy_(pa + t * (pb - pa))
    return out.eval()


def _log_probs(model, tok, rows) -> list[torch.Tensor]:
    with torch.no_grad():
        return [
            model(input_ids=torch.tensor([tok(t)["input_ids"]])).logits[0, :-1].double().log_softmax(-1) for t in rows
        ]


def _hand(model, tok, rows, anchor=None) -> tuple[float, float | None]:
    """(perplexity, exact mean per-token KL(anchor || model)) over the rows, one unpadded row at a time."""
    own = _log_probs(model, tok, rows)
    targets = [torch.tensor(tok(t)["input_ids"][1:]) for t in rows]
    nll = torch.cat([-lp.gather(-1, y[:, None]).squeeze(-1) for lp, y in zip(own, targets)])
    if anchor is None:
        return math.exp(float(nll.mean())), None
    kl = torch.cat([(p.exp() * (p - q)).sum(-1) for p, q in zip(_log_probs(anchor, tok, rows), own)])
    return math.exp(float(nll.mean())), float(kl.mean())


def _gate(tok, rows, reference_model=None):
    data = [{"text": t} for t in rows]
    entries = [
        {"name": "perplexity", "data": data, "max_relative_increase": 0.02, "max_relative_decrease": 0.10},
        {"name": "kl_to_original", "data": data, "top_k": None, "max_absolute_increase": KL_TOLERANCE},
    ]
    gate = UtilityGate.from_config({"benchmarks": entries, "reference": reference_model is not None}, tok)
    if reference_model is not None:
        gate.measure_reference(reference_model)
    return gate


def _between(model, tok, rows, reference, original) -> bool:
    """The band's rule, computed by hand: perplexity inside the band the two span, KL(ref || .) no more than
    KL(ref || original) + the tolerance."""
    ppl, kl_ref = _hand(model, tok, rows, reference)
    ppl_o, kl_ref_o = _hand(original, tok, rows, reference)
    ppl_r, _ = _hand(reference, tok, rows)
    return min(ppl_o, ppl_r) * 0.9 <= ppl <= max(ppl_o, ppl_r) * 1.02 and kl_ref <= kl_ref_o + KL_TOLERANCE


def test_a_model_reverted_toward_the_reference_is_accepted_only_by_the_band(models):
    tok, rows, reference, original = models
    _, kl_orig_ref = _hand(reference, tok, rows, original)
    assert kl_orig_ref > 10 * KL_TOLERANCE  # the fine-tuning moved the gate's text: the setting the band is for
    reverted = _mix(original, reference, 0.8)
    assert _hand(reverted, tok, rows, original)[1] > KL_TOLERANCE  # outside the original's bound
    assert _between(reverted, tok, rows, reference, original)

    plain = _gate(tok, rows)
    plain.measure_baseline(original)
    assert not plain.check(reverted, step=1).accepted

    gate = _gate(tok, rows, reference)
    gate.measure_baseline(original)
    decision = gate.check(reverted, step=1)
    assert decision.accepted and decision.anchor == "reference band"
    assert any("kl" in v for v in decision.outside_original)
    # The KL(reference || current) the gate measured is the definition's (exact: top_k null).
    _, expected = _hand(reverted, tok, rows, reference)
    assert decision.scores["kl_to_original_from_reference"]["kl"] == pytest.approx(expected, rel=1e-4)
    summary = gate.summary()["reference"]
    assert summary["kl_reference_to_original"]["kl_to_original"] == pytest.approx(
        _hand(original, tok, rows, reference)[1], rel=1e-4
    )
    assert summary["reference_scores"]["perplexity"]["perplexity"] == pytest.approx(
        _hand(reference, tok, rows)[0], rel=1e-4
    )


@pytest.mark.parametrize("kind", ["beyond the original", "random direction"])
def test_drift_away_from_both_models_is_rejected(models, kind):
    tok, rows, reference, original = models
    if kind == "beyond the original":
        drifted = _mix(original, reference, -0.8)
    else:
        drifted = copy.deepcopy(original)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p, pr in zip(drifted.parameters(), reference.parameters()):
                step = torch.randn(p.shape, generator=gen)
                p.add_(step * (p - pr).norm() / step.norm())  # as far from the original as the reference is
    assert not _between(drifted, tok, rows, reference, original)
    gate = _gate(tok, rows, reference)
    gate.measure_baseline(original)
    decision = gate.check(drifted.eval(), step=1)
    assert not decision.accepted and decision.anchor is None
    assert any("reference" in v for v in decision.violations)


def test_the_original_itself_is_accepted_against_the_original(models):
    tok, rows, reference, original = models
    gate = _gate(tok, rows, reference)
    gate.measure_baseline(original)
    decision = gate.check(original, step=1)
    assert decision.accepted and decision.anchor == "original" and decision.outside_original == []


def test_misuse_is_a_clear_error(models):
    tok, rows, reference, original = models
    with pytest.raises(GateError, match="measure_reference"):
        _gate(tok, rows).measure_reference(reference)
    gate = UtilityGate.from_config(
        {"benchmarks": [{"name": "perplexity", "data": [{"text": t} for t in rows]}], "reference": True}, tok
    )
    with pytest.raises(GateError, match="before gate.measure_baseline"):
        gate.measure_baseline(original)
    with pytest.raises(RecipeError, match="true/false"):
        UtilityGate.from_config(
            {"benchmarks": [{"name": "perplexity", "data": [{"text": rows[0]}]}], "reference": 2}, tok
        )
    with pytest.raises(EraseConfigError, match="needs reference_model"):
        EraseConfig(gate={"every": 5, "benchmarks": ["default"], "reference": True})


def test_an_erasure_with_the_reference_band_records_it_in_the_report(memorized_gpt2):
    """The eraser measures the reference's scores of the gate's text before the baseline; the report keeps them
    and every decision's anchor."""
    from obliviate.erasure import Eraser
    from tests.test_erasure import FAST, FORGET, _retain_texts, saved_base

    mem = memorized_gpt2
    gate = {"every": 2, "benchmarks": ["default"], "reference": True}
    config = EraseConfig(
        **{**FAST, "method": "ga_to_reference", "reference_model": saved_base(mem), "max_steps": 4, "gate": gate}
    )
    eraser = Eraser(mem.fresh(), mem.tokenizer, mem.probes.subset(FORGET), config, retain=_retain_texts())
    report = eraser.erase().report
    reference = report["gate"]["reference"]
    ppl, kl = _hand(mem.model, mem.tokenizer, eraser.split.gate, mem.base)  # the original, against the base
    assert reference["reference_scores"]["gate_ppl"]["perplexity"] == pytest.approx(
        _hand(mem.base, mem.tokenizer, eraser.split.gate)[0], rel=1e-3
    )
    # The default gate's KL keeps the top 64 tokens: a lower bound of the exact KL(reference || original).
    assert 0 < reference["kl_reference_to_original"]["gate_kl"] <= kl + 1e-6
    assert report["gate"]["baseline"]["gate_ppl"]["perplexity"] == pytest.approx(ppl, rel=1e-3)
    decisions = report["gate_decisions"]
    assert decisions and all(d["anchor"] in ("original", "reference band", None) for d in decisions)
