"""Generation-based scores: EL_n and greedy suffix text against a plain per-probe reference implementation.

python -m pytest -q tests/test_generation.py
"""

from __future__ import annotations

import pytest
import torch

from obliviate.metrics import extraction_likelihood, greedy_suffix, score_probes
from obliviate.metrics.generation import ngram_overlap


def reference_overlap(generated: list[int], true: list[int], n: int, overlap: str = "set") -> float | None:
    """Jang et al. (2022): each generated n-gram counts if it occurs anywhere in the truth (``set``);
    ``clipped``: only if an unused copy of it is left in the truth."""
    gen = [tuple(generated[i : i + n]) for i in range(len(generated) - n + 1)]
    pool = [tuple(true[i : i + n]) for i in range(len(true) - n + 1)]
    if not gen:
        return None
    hits = 0
    for gram in gen:
        if gram in pool:
            hits += 1
            if overlap == "clipped":
                pool.remove(gram)
    return hits / len(gen)


def reference_el(
    model, probe, n: int, stride: int, pad_id: int, from_suffix: bool = False, overlap: str = "set"
) -> float:
    x = probe.input_ids
    values = []
    for t in range(len(probe.prefix_ids) if from_suffix else 1, len(x) - n + 1, stride):
        ids = torch.tensor([x[:t]])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=len(x) - t,
            eos_token_id=None,
            pad_token_id=pad_id,
        )
        values.append(reference_overlap(out[0, t:].tolist(), x[t:], n, overlap))
    return sum(values) / len(values)


def _subset(probes):
    # Two of each role: extracted and non-extracted sequences of several lengths.
    ids = [p.id for role in ("member", "canary", "control") for p in probes.by_role(role)][::9]
    return probes.subset(ids)


def test_ngram_overlap_hand_cases():
    assert ngram_overlap([1, 2, 3], [1, 2, 3], 1) == 1.0
    assert ngram_overlap([1, 2, 3], [1, 2, 3], 2) == 1.0
    assert ngram_overlap([3, 2, 1], [1, 2, 3], 1) == 1.0
    assert ngram_overlap([3, 2, 1], [1, 2, 3], 2) == 0.0
    assert ngram_overlap([1], [1], 2) is None
    # Jang et al. count every generated n-gram found in the truth's n-gram set: a repeated hit counts each time ...
    assert ngram_overlap([1, 1, 1, 1], [1, 2, 3, 4], 1) == 1.0
    # ... the clipped count only as often as the truth holds it.
    assert ngram_overlap([1, 1, 1, 1], [1, 2, 3, 4], 1, "clipped") == 0.25
    with pytest.raises(ValueError, match="overlap must be one of set, clipped"):
        ngram_overlap([1], [1], 1, "bleu")


def test_ngram_overlap_hand_made_continuation():
    # True continuation "the cat sat on the mat"; the model loops on "the cat sat the cat".
    the, cat, sat, on, mat = range(5)
    true = [the, cat, sat, on, the, mat]
    generated = [the, cat, sat, the, cat, sat]
    # Bigrams generated: (the,cat) (cat,sat) (sat,the) (the,cat) (cat,sat); the truth's set is
    # {(the,cat), (cat,sat), (sat,on), (on,the), (the,mat)}: 4 of the 5 generated ones are in it.
    assert ngram_overlap(generated, true, 2) == pytest.approx(4 / 5)
    # Clipped: (the,cat) and (cat,sat) occur once in the truth, so their repeats do not count: 2 / 5.
    assert ngram_overlap(generated, true, 2, "clipped") == pytest.approx(2 / 5)
    # Unigrams: all 6 generated are in the truth; clipped: "the" twice (the truth has 2), "cat" and "sat" once each.
    assert ngram_overlap(generated, true, 1) == 1.0
    assert ngram_overlap(generated, true, 1, "clipped") == pytest.approx(4 / 6)


@pytest.mark.parametrize("n,stride,from_suffix,overlap", [(2, 3, False, "set"), (1, 1, True, "clipped")])
def test_extraction_likelihood_matches_per_probe_reference(memorized, n, stride, from_suffix, overlap):
    model, tok = memorized.model, memorized.tokenizer
    probes = _subset(memorized.probes)
    assert len(probes) >= 6
    rows = extraction_likelihood(
        model, tok, probes, n=n, stride=stride, batch_size=7, from_suffix=from_suffix, overlap=overlap
    )
    assert [r["id"] for r in rows] == probes.ids
    for probe, row in zip(probes, rows):
        expected = reference_el(model, probe, n, stride, tok.pad_token_id, from_suffix, overlap)
        assert row["extraction_likelihood"] == pytest.approx(expected, abs=1e-9), probe.id
        assert row["el_n"] == n and row["el_overlap"] == overlap


def test_extraction_likelihood_orders_extracted_above_controls(memorized_gpt2):
    model, tok, probes = memorized_gpt2.model, memorized_gpt2.tokenizer, memorized_gpt2.probes
    scores = {r["id"]: r for r in score_probes(model, tok, probes)}
    extracted = probes.subset([p.id for p in probes if scores[p.id]["exact_extraction"]][:6])
    controls = probes.by_role("control").subset(probes.by_role("control").ids[:6])
    el_ext = extraction_likelihood(model, tok, extracted, n=1, from_suffix=True)
    el_ctl = extraction_likelihood(model, tok, controls, n=1, from_suffix=True)
    # Greedy from the suffix start reproduces the suffix, so every later t does too.
    assert all(r["extraction_likelihood"] == 1.0 for r in el_ext)
    assert max(r["extraction_likelihood"] for r in el_ctl) < 1.0


def test_greedy_suffix_matches_generate_and_exact_extraction(memorized):
    model, tok, probes = memorized.model, memorized.tokenizer, memorized.probes
    texts = greedy_suffix(model, tok, probes, batch_size=16)
    rows = score_probes(model, tok, probes)
    for probe, text, row in zip(probes, texts, rows):
        ids = torch.tensor([probe.prefix_ids])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=len(probe.suffix_ids),
            eos_token_id=None,
            pad_token_id=tok.pad_token_id,
        )
        assert text == tok.decode(out[0, ids.shape[1] :]), probe.id
        assert (text == tok.decode(probe.suffix_ids)) == bool(row["exact_extraction"]), probe.id


def test_generation_restores_training_mode_and_validates(memorized_gpt2):
    model = memorized_gpt2.fresh().train()
    probes = memorized_gpt2.probes.subset(memorized_gpt2.probes.ids[:2])
    greedy_suffix(model, memorized_gpt2.tokenizer, probes)
    assert model.training
    with pytest.raises(ValueError, match="n and stride"):
        extraction_likelihood(model, memorized_gpt2.tokenizer, probes, n=0)
