"""``method_args.retain_objective: kl`` / ``no_worse``: the retain term against the original, cached before the first step.

python -m pytest -q tests/test_retain_kl.py
"""

from __future__ import annotations

import copy

import pytest
import torch

from obliviate.erasure import EraseConfig, EraseConfigError, Eraser
from obliviate.erasure.retain_kl import OriginalRetainCache
from tests.helpers import corpus_tokenizer, tiny_model


def _rows(tok, n=5):
    texts = [r["text"] for r in corpus_tokenizer()[0].retain][:n]
    return [tok(t)["input_ids"] for t in texts]


def _direct_kl(original, current, rows) -> torch.Tensor:
    """Mean over every predicted token of KL(P_original || P_current), each row unpadded, full vocabulary."""
    total, tokens = 0.0, 0
    for r in rows:
        ids = torch.tensor([r])
        with torch.no_grad():
            p = original(input_ids=ids).logits[0, :-1].log_softmax(-1)
        q = current(input_ids=ids).logits[0, :-1].log_softmax(-1)
        total = total + (p.exp() * (p - q)).sum()
        tokens += len(r) - 1
    return total / tokens


@pytest.fixture(scope="module")
def models():
    tok = corpus_tokenizer()[1]
    original = tiny_model("gpt2", tok, seed=3).eval()
    moved = copy.deepcopy(original)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return tok, original, moved


def test_kl_terms_equal_the_full_kl_on_unpadded_rows(models):
    tok, original, moved = models
    rows = _rows(tok)
    vocab = original.get_input_embeddings().num_embeddings
    cache = OriginalRetainCache(original, rows, tok.pad_token_id, rows_per_pass=2, top_k=vocab)
    picks = [3, 0, 4]
    ours = sum(cache.terms(moved, picks, tok.pad_token_id, 2, "kl"))
    direct = _direct_kl(original, moved, [rows[i] for i in picks])
    assert ours.item() > 1e-3  # the moved model really moved
    assert ours.item() == pytest.approx(direct.item(), rel=1e-4)
    params = list(moved.parameters())
    g_ours = torch.autograd.grad(ours, params)
    g_direct = torch.autograd.grad(_direct_kl(original, moved, [rows[i] for i in picks]), params)
    for a, b in zip(g_ours, g_direct):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_top_k_cache_is_a_lower_bound_and_zero_at_the_original(models):
    tok, original, moved = models
    rows = _rows(tok)
    cache = OriginalRetainCache(original, rows, tok.pad_token_id, rows_per_pass=8, top_k=8)
    coarse = sum(cache.terms(moved, list(range(len(rows))), tok.pad_token_id, 8, "kl")).item()
    exact = _direct_kl(original, moved, rows).item()
    assert 0 < coarse <= exact + 1e-6
    at_original = sum(cache.terms(original, list(range(len(rows))), tok.pad_token_id, 8, "kl")).item()
    assert at_original == pytest.approx(0.0, abs=1e-5)


def _direct_nll_rise(original, current, rows) -> torch.Tensor:
    """Mean over every predicted token of max(0, NLL_current - NLL_original), each row unpadded."""
    total, tokens = 0.0, 0
    for r in rows:
        ids = torch.tensor([r])
        with torch.no_grad():
            before = original(input_ids=ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])
        now = current(input_ids=ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])
        total = total + (before - now).clamp_min(0).sum()
        tokens += len(r) - 1
    return total / tokens


def test_no_worse_terms_equal_the_one_sided_nll_rise_on_unpadded_rows(models):
    tok, original, moved = models
    rows = _rows(tok)
    cache = OriginalRetainCache(original, rows, tok.pad_token_id, rows_per_pass=2, top_k=4)
    picks = [1, 4, 2]
    ours = sum(cache.terms(moved, picks, tok.pad_token_id, 2, "no_worse"))
    direct = _direct_nll_rise(original, moved, [rows[i] for i in picks])
    assert ours.item() > 1e-3 and ours.item() == pytest.approx(direct.item(), rel=1e-4)
    params = list(moved.parameters())
    g_ours = torch.autograd.grad(ours, params)
    g_direct = torch.autograd.grad(_direct_nll_rise(original, moved, [rows[i] for i in picks]), params)
    for a, b in zip(g_ours, g_direct):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
    # Zero at the original.
    at_original = sum(cache.terms(original, picks, tok.pad_token_id, 2, "no_worse")).item()
    assert at_original == pytest.approx(0.0, abs=1e-6)


def test_no_worse_is_not_rewarded_for_fitting_the_text(models):
    """A model likelier than the original on every retain token has no term at all (the NLL form would pull on)."""
    tok, original, _ = models
    rows = _rows(tok)
    cache = OriginalRetainCache(original, rows, tok.pad_token_id, rows_per_pass=8)
    # As if the original had been 5 nats worse on every token: the model now is likelier everywhere.
    cache.cache = [(top, ids, target - 5.0) for top, ids, target in cache.cache]
    value = sum(cache.terms(original, list(range(len(rows))), tok.pad_token_id, 8, "no_worse"))
    assert value.item() == 0.0
    kl = sum(cache.terms(original, list(range(len(rows))), tok.pad_token_id, 8, "kl"))  # the KL reads no target
    assert kl.item() == pytest.approx(0.0, abs=1e-5)


def test_the_cache_is_the_original_model_not_a_moved_one(memorized_gpt2):
    """Built before the first step: after a run that changed the weights, it still equals the original's."""
    mem = memorized_gpt2
    texts = [r["text"] for r in corpus_tokenizer()[0].retain]
    config = EraseConfig(
        method="graddiff",
        method_args={"retain_objective": "kl"},
        select_fraction=0.05,
        learning_rate=1e-2,
        max_steps=5,
        gate=None,
        min_group_controls=8,
    )
    model = mem.fresh()
    original = copy.deepcopy(model)
    eraser = Eraser(model, mem.tokenizer, mem.probes.subset(["canary-x8-0"]), config, retain=texts)
    result = eraser.erase()
    assert result.report["summary"]["steps"] > 0
    assert any((a != b).any() for a, b in zip(original.parameters(), result.model.parameters()))
    cache = eraser.retain_original
    assert cache is not None and len(cache.rows) == len(eraser.retain_texts)
    fresh = OriginalRetainCache(original, cache.rows, mem.tokenizer.pad_token_id, rows_per_pass=64)
    for a, b in zip(cache.cache, fresh.cache):
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
        assert torch.equal(a[1], b[1])


def test_unknown_retain_objective_names_the_choices():
    with pytest.raises(EraseConfigError, match="retain_objective must be one of nll, kl, no_worse"):
        EraseConfig(method="graddiff", method_args={"retain_objective": "mse"})
