"""GradNorm and ReCaLL membership scores against torch.autograd and hand computations.

python -m pytest -q tests/test_mia.py
"""

from __future__ import annotations

import math

import pytest
import torch

from obliviate.data import ProbeError
from obliviate.metrics import score_probes
from obliviate.metrics.mia import gradnorm_scores, recall_prefix, score_gradnorm, score_recall
from obliviate.metrics.sets import summarize_scores


def suffix_nll_by_hand(model, prefix: list[int], suffix: list[int]) -> torch.Tensor:
    logits = model(input_ids=torch.tensor([prefix + suffix])).logits[0, len(prefix) - 1 : -1]
    return -logits.log_softmax(-1).gather(-1, torch.tensor(suffix)[:, None]).mean()


def test_gradnorm_equals_autograd_on_one_sequence(memorized):
    model = memorized.fresh().eval()
    probe = memorized.probes[3]
    model.zero_grad()
    suffix_nll_by_hand(model, probe.prefix_ids, probe.suffix_ids).backward()
    grads = [p.grad.double() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    global_l2 = math.sqrt(sum(g.square().sum().item() for g in grads))
    global_l1 = sum(g.abs().sum().item() for g in grads)
    tensor_mean_inf = sum(g.abs().max().item() for g in grads) / len(grads)
    one = ([probe.prefix_ids], [probe.suffix_ids])
    assert gradnorm_scores(model, *one).item() == pytest.approx(global_l2, rel=1e-4)
    assert gradnorm_scores(model, *one, p=1).item() == pytest.approx(global_l1, rel=1e-4)
    assert gradnorm_scores(model, *one, p=math.inf, aggregate="tensor_mean").item() == pytest.approx(
        tensor_mean_inf, rel=1e-4
    )
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated into .grad


def test_gradnorm_orientation_and_rows(memorized_gpt2):
    model, tok, probes = memorized_gpt2.model, memorized_gpt2.tokenizer, memorized_gpt2.probes
    rows = {r["id"]: r for r in score_probes(model, tok, probes)}
    for g in score_gradnorm(model, tok, probes):
        assert g["gradnorm"] == -g["grad_norm"] and g["grad_norm"] > 0
        rows[g["id"]].update(g)
    # Trained sequences sit nearer a minimum of their loss: smaller gradients, so a higher (negated) score.
    assert summarize_scores(list(rows.values()))["auc/gradnorm"] > 0.7
    with pytest.raises(ValueError, match="aggregate must be one of global, tensor_mean"):
        gradnorm_scores(model, [[1]], [[2]], aggregate="sum")


def test_recall_by_hand(memorized):
    model, tok, probes = memorized.model, memorized.tokenizer, memorized.probes
    controls = probes.by_role("control")
    subset = probes.subset([probes.by_role("canary").ids[0], probes.by_role("member").ids[0], controls.ids[0]])
    rows = score_recall(model, tok, subset, controls, shots=2, batch_size=2)
    for probe, row in zip(subset, rows):
        # The non-member prefix: two controls' text, never the probe itself.
        others = [c for c in controls if c.id != probe.id][:2]
        prefix = [t for c in others for t in c.prefix_ids + c.suffix_ids]
        assert recall_prefix(controls, 2, probe.id) == prefix
        with torch.no_grad():
            ll = -suffix_nll_by_hand(model, probe.prefix_ids, probe.suffix_ids).item()
            ll_given = -suffix_nll_by_hand(model, prefix + probe.prefix_ids, probe.suffix_ids).item()
        assert row["recall"] == pytest.approx(ll_given / ll, rel=1e-4), probe.id
        assert row["recall_drop"] == pytest.approx(ll - ll_given, abs=1e-4), probe.id
        assert row["recall_shots"] == 2


def test_recall_needs_controls(memorized_gpt2):
    model, tok, probes = memorized_gpt2.model, memorized_gpt2.tokenizer, memorized_gpt2.probes
    members = probes.by_role("member")
    with pytest.raises(ProbeError, match="ReCaLL needs control probes"):
        score_recall(model, tok, members, None)
    with pytest.raises(ProbeError, match="ReCaLL needs control probes"):
        score_recall(model, tok, members, probes.by_role("no-such-role"))
    one = probes.by_role("control").subset(probes.by_role("control").ids[:1])
    with pytest.raises(ProbeError, match="needs at least 2 controls"):
        score_recall(model, tok, one, one)
    with pytest.raises(ProbeError, match="longer than the model's context of 128"):
        score_recall(model, tok, members.subset(members.ids[:1]), probes.by_role("control"), shots=12)
