"""Every per-sequence metric of DESIGN §3 against an independent computation on models that really memorized.

python -m pytest -q tests/test_metrics_definitions.py
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from obliviate.metrics import SamplingConfig, score_probes, score_sequences

FLOAT_METRICS = (
    "loss",
    "memorization_accuracy",
    "extraction_probability",
    "suffix_log_prob",
    "min_k",
    "min_k_plus_plus",
    "extraction_strength",
)
INT_METRICS = ("exact_extraction", "prefix_match_length", "suffix_length")


def greedy_tokens(model, prefix: list[int], n: int, pad_id: int) -> list[int]:
    """Plain unbatched greedy decoding: eos disabled so it always produces n tokens."""
    ids = torch.tensor([prefix])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=n,
        eos_token_id=None,
        pad_token_id=pad_id,
    )
    return out[0, len(prefix) :].tolist()


def suffix_logits_by_hand(model, probe) -> torch.Tensor:
    """(S, V) float64 logits predicting each suffix token, from one unpadded forward pass."""
    ids = torch.tensor([probe.prefix_ids + probe.suffix_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    return logits[len(probe.prefix_ids) - 1 : -1]


def test_fixture_has_both_outcomes(memorized):
    # Every comparison below is only meaningful when the model extracts some probes and fails on others.
    rows = score_probes(memorized.model, memorized.tokenizer, memorized.probes)
    exact = [r["exact_extraction"] for r in rows]
    assert 0 < sum(exact) < len(exact)
    by_role = {role: [r for r in rows if r["role"] == role] for role in ("canary", "control")}
    assert sum(r["exact_extraction"] for r in by_role["control"]) == 0
    assert any(0 < r["prefix_match_length"] < r["suffix_length"] for r in rows)


def test_exact_extraction_and_prefix_match_equal_greedy_generate(memorized):
    model, tok, probes = memorized.model, memorized.tokenizer, memorized.probes
    rows = score_probes(model, tok, probes)
    for probe, row in zip(probes, rows):
        generated = greedy_tokens(model, probe.prefix_ids, len(probe.suffix_ids), tok.pad_token_id)
        assert len(generated) == len(probe.suffix_ids)
        matched = next((i for i, (g, y) in enumerate(zip(generated, probe.suffix_ids)) if g != y), len(generated))
        assert row["exact_extraction"] == int(generated == probe.suffix_ids), probe.id
        assert row["prefix_match_length"] == matched, probe.id


def extraction_strength_by_hand(correct: list[bool]) -> float:
    """1 - k/|S| with k the smallest start from which every prediction is right; k = |S| when none is."""
    size = len(correct)
    k = next((k for k in range(size) if all(correct[k:])), size)
    return 1 - k / size


@pytest.mark.parametrize(
    "pattern,expected",
    [
        ("1111", 1.0),
        ("0111", 0.75),
        ("1011", 0.5),
        ("0001", 0.25),
        ("1110", 0.0),
        ("0000", 0.0),
        ("1", 1.0),
        ("0", 0.0),
        ("110111", 0.5),
    ],
)
def test_extraction_strength_on_hand_made_argmax_patterns(pattern, expected):
    from obliviate.metrics.teacher_forced import sequence_metrics

    assert extraction_strength_by_hand([c == "1" for c in pattern]) == pytest.approx(expected)
    # The pattern flush right (left padding) and flush left (right padding) in a 7-wide window, padded
    # with "right" and "wrong" predictions: padding must not extend or break the tail.
    width, size = 7, len(pattern)
    for side in ("left", "right"):
        for pad_value in (True, False):
            correct = torch.full((1, width), pad_value)
            mask = torch.zeros((1, width), dtype=torch.bool)
            where = slice(width - size, width) if side == "left" else slice(0, size)
            correct[0, where] = torch.tensor([c == "1" for c in pattern])
            mask[0, where] = True
            zeros = torch.zeros((1, width))
            stats = {
                "target_log_prob": zeros - 1,
                "correct": correct,
                "mean_log_prob": zeros - 1,
                "std_log_prob": zeros + 1,
            }
            out = sequence_metrics(stats, mask, 0.2, SamplingConfig())
            assert out["extraction_strength"].item() == pytest.approx(expected), (side, pad_value)


def test_extraction_strength_equals_argmax_tail_of_the_model(memorized):
    model, tok, probes = memorized.model, memorized.tokenizer, memorized.probes
    rows = score_probes(model, tok, probes)
    values = set()
    for probe, row in zip(probes, rows):
        argmax = suffix_logits_by_hand(model, probe).argmax(-1).tolist()
        expected = extraction_strength_by_hand([a == y for a, y in zip(argmax, probe.suffix_ids)])
        assert row["extraction_strength"] == pytest.approx(expected, abs=1e-7), probe.id
        assert row["extraction_strength"] == 1.0 or not row["exact_extraction"]
        values.add(round(expected, 6))
    assert len(values) > 2  # the fixture has full, partial and absent tails


def test_memorization_accuracy_equals_per_position_loop(memorized):
    model, tok, probes = memorized.model, memorized.tokenizer, memorized.probes
    rows = score_probes(model, tok, probes)
    for probe, row in zip(probes, rows):
        hits, nll = 0, 0.0
        for t, y in enumerate(probe.suffix_ids):
            ids = torch.tensor([probe.prefix_ids + probe.suffix_ids[:t]])
            with torch.no_grad():
                last = model(input_ids=ids).logits[0, -1].double()
            hits += int(last.argmax().item() == y)
            nll -= last.log_softmax(-1)[y].item()
        assert row["memorization_accuracy"] == pytest.approx(hits / len(probe.suffix_ids), abs=1e-6), probe.id
        assert row["loss"] == pytest.approx(nll / len(probe.suffix_ids), abs=1e-4), probe.id


@pytest.mark.parametrize("sampling", [None, SamplingConfig(n=7, temperature=0.8, top_k=20, top_p=0.9)])
def test_same_scores_alone_batched_left_or_right(memorized, sampling):
    model, probes = memorized.model, memorized.probes
    prefixes, suffixes = [p.prefix_ids for p in probes], [p.suffix_ids for p in probes]
    pad = memorized.tokenizer.pad_token_id
    assert len({len(p) for p in probes}) > 3  # rows really get padded
    runs = {
        side: score_sequences(
            model, prefixes, suffixes, pad, batch_size=len(probes), sampling=sampling, padding_side=side
        )
        for side in ("left", "right")
    }
    runs["mixed"] = score_sequences(model, prefixes, suffixes, pad, batch_size=5, sampling=sampling)
    alone = [score_sequences(model, [p], [s], pad, batch_size=1, sampling=sampling) for p, s in zip(prefixes, suffixes)]
    runs["alone"] = {name: torch.cat([a[name] for a in alone]) for name in alone[0]}
    reference = runs.pop("left")
    for run in runs.values():
        assert run.keys() == reference.keys()
        for name in FLOAT_METRICS:
            # 1e-5 absolute; Min-K%++ z-scores reach |z| ~ 25 where float32 spacing alone is 2e-6, hence rtol.
            torch.testing.assert_close(run[name].double(), reference[name].double(), atol=1e-5, rtol=2e-6, msg=name)
        for name in INT_METRICS:
            assert torch.equal(run[name], reference[name]), name


def test_likelihood_scores_match_hand_computation(memorized):
    model, tok, probes = memorized.model, memorized.tokenizer, memorized.probes
    rows = score_probes(model, tok, probes, reference_model=memorized.base, min_k=0.2, sampling=SamplingConfig(n=50))
    for probe, row in zip(probes, rows):
        logits = suffix_logits_by_hand(model, probe)
        y = torch.tensor(probe.suffix_ids)
        log_p = logits.log_softmax(-1)
        target = log_p.gather(-1, y[:, None]).squeeze(-1)
        size = len(y)
        count = max(1, math.floor(0.2 * size))
        mu = (log_p.exp() * log_p).sum(-1)
        sigma = ((log_p.exp() * log_p.square()).sum(-1) - mu.square()).sqrt()
        z = (target - mu) / sigma
        loss = -target.mean().item()
        p_z = target.sum().exp().item()
        ref_target = suffix_logits_by_hand(memorized.base, probe).log_softmax(-1).gather(-1, y[:, None])
        assert row["suffix_length"] == size
        assert row["loss"] == pytest.approx(loss, abs=1e-5)
        assert row["suffix_log_prob"] == pytest.approx(target.sum().item(), abs=1e-4)
        assert row["min_k"] == pytest.approx(target.sort().values[:count].mean().item(), abs=1e-5)
        assert row["min_k_plus_plus"] == pytest.approx(z.sort().values[:count].mean().item(), abs=1e-4)
        assert row["zlib_ratio"] == pytest.approx(-loss / len(zlib.compress(probe.suffix.encode())), abs=1e-6)
        assert row["reference_ratio"] == pytest.approx(-ref_target.mean().item() - loss, abs=1e-5)
        assert row["extraction_probability"] == pytest.approx(1 - (1 - p_z) ** 50, abs=1e-5)


def test_min_k_counts_at_least_one_token(memorized_gpt2):
    model, probes = memorized_gpt2.model, memorized_gpt2.probes
    probe = probes[0]
    out = score_sequences(model, [probe.prefix_ids], [probe.suffix_ids[:3]], 1, min_k=0.2)
    target = (
        suffix_logits_by_hand(model, probe)[:3].log_softmax(-1).gather(-1, torch.tensor(probe.suffix_ids[:3])[:, None])
    )
    # floor(0.2 * 3) = 0 tokens would be undefined: the single lowest token is used.
    assert out["min_k"].item() == pytest.approx(target.min().item(), abs=1e-5)


def _sampling_log_p_z(logits: torch.Tensor, y: torch.Tensor, sampling: SamplingConfig) -> float:
    """log prod_t q_t(y_t) with transformers' own warpers, in the order generate() applies them."""
    scores = logits.float()
    warpers = [TemperatureLogitsWarper(sampling.temperature)]
    if sampling.top_k is not None:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p is not None:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    for warp in warpers:
        scores = warp(None, scores)
    return scores.double().log_softmax(-1).gather(-1, y[:, None]).sum().item()


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(n=10, temperature=0.7),
        SamplingConfig(n=10, temperature=1.3, top_k=3),
        SamplingConfig(n=10, top_p=0.8),
        SamplingConfig(n=100, temperature=0.6, top_k=8, top_p=0.75),
    ],
)
def test_extraction_probability_with_sampling_matches_transformers_warpers(memorized, sampling):
    model, tok, probes = memorized.model, memorized.tokenizer, memorized.probes
    rows = score_probes(model, tok, probes, sampling=sampling)
    filtered = 0
    for probe, row in zip(probes, rows):
        logits = suffix_logits_by_hand(model, probe)
        y = torch.tensor(probe.suffix_ids)
        expected = _sampling_log_p_z(logits, y, sampling)
        if math.isinf(expected):
            filtered += 1
            assert row["suffix_log_prob"] == -math.inf and row["extraction_probability"] == 0.0
            continue
        assert row["suffix_log_prob"] == pytest.approx(expected, abs=2e-4), probe.id
        p_z = math.exp(expected)
        at_least_once = 1.0 if p_z >= 1 else -math.expm1(sampling.n * math.log1p(-p_z))
        assert row["extraction_probability"] == pytest.approx(at_least_once, abs=1e-4)
    if sampling.top_k == 3 or sampling.top_p is not None:
        assert filtered > 0  # the filters really removed some true tokens on the controls


def test_temperature_only_matches_full_softmax_by_hand(memorized_llama):
    model, tok, probes = memorized_llama.model, memorized_llama.tokenizer, memorized_llama.probes
    rows = score_probes(model, tok, probes, sampling=SamplingConfig(n=3, temperature=0.5))
    for probe, row in zip(probes, rows):
        logits = suffix_logits_by_hand(model, probe) / 0.5
        probs = logits.exp() / logits.exp().sum(-1, keepdim=True)
        p_z = probs.gather(-1, torch.tensor(probe.suffix_ids)[:, None]).prod().item()
        assert row["extraction_probability"] == pytest.approx(1 - (1 - p_z) ** 3, abs=1e-5)


def test_extraction_probability_matches_monte_carlo_sampling(memorized_gpt2):
    # q_t must be the distribution generate() really samples from: check the frequency of exact extraction.
    model, tok, probes = memorized_gpt2.model, memorized_gpt2.tokenizer, memorized_gpt2.probes
    sampling = SamplingConfig(n=1, temperature=1.5, top_k=10, top_p=0.95)
    rows = score_probes(model, tok, probes, sampling=sampling)
    row, probe = min(((r, p) for r, p in zip(rows, probes)), key=lambda rp: abs(rp[0]["extraction_probability"] - 0.5))
    assert 0.2 < row["extraction_probability"] < 0.8
    ids = torch.tensor([probe.prefix_ids]).repeat(400, 1)
    torch.manual_seed(1)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=True,
        temperature=1.5,
        top_k=10,
        top_p=0.95,
        max_new_tokens=len(probe.suffix_ids),
        eos_token_id=None,
        pad_token_id=tok.pad_token_id,
    )
    hits = (out[:, ids.shape[1] :] == torch.tensor(probe.suffix_ids)).all(-1).float().mean().item()
    # 400 Bernoulli draws: standard error <= 0.025.
    assert hits == pytest.approx(row["extraction_probability"], abs=0.1)


def test_bfloat16_model_runs_and_agrees_loosely(memorized):
    model32 = memorized.model
    model16 = memorized.fresh().to(torch.bfloat16)
    rows32 = score_probes(model32, memorized.tokenizer, memorized.probes)
    rows16 = score_probes(model16, memorized.tokenizer, memorized.probes)
    agree = 0
    for r32, r16 in zip(rows32, rows16):
        for name in FLOAT_METRICS:
            assert math.isfinite(r16[name]), name
        assert r16["loss"] == pytest.approx(r32["loss"], abs=0.1 + 0.05 * r32["loss"])
        assert r16["memorization_accuracy"] == pytest.approx(r32["memorization_accuracy"], abs=0.25)
        agree += r16["exact_extraction"] == r32["exact_extraction"]
    assert agree >= 0.9 * len(rows32)


def test_scorer_restores_training_mode_and_rejects_empty_prefix(memorized_gpt2):
    model = memorized_gpt2.fresh().train()
    probe = memorized_gpt2.probes[0]
    score_sequences(model, [probe.prefix_ids], [probe.suffix_ids], 1)
    assert model.training
    with pytest.raises(ValueError, match="empty prefix"):
        score_sequences(model, [[]], [probe.suffix_ids], 1)
    with pytest.raises(ValueError, match="padding_side"):
        score_sequences(model, [probe.prefix_ids], [probe.suffix_ids], 1, padding_side="middle")


def test_chunked_statistics_equal_one_chunk(memorized_gpt2, monkeypatch):
    from obliviate.metrics import teacher_forced

    model, probes = memorized_gpt2.model, memorized_gpt2.probes
    args = ([p.prefix_ids for p in probes], [p.suffix_ids for p in probes], 1)
    kwargs = dict(batch_size=16, sampling=SamplingConfig(n=5, top_k=30, top_p=0.9))
    whole = score_sequences(model, *args, **kwargs)
    # One batch row per chunk: exercises every chunk boundary the memory bound can produce.
    monkeypatch.setattr(teacher_forced, "CHUNK_ELEMENTS", 1)
    chunked = score_sequences(model, *args, **kwargs)
    for name, values in whole.items():
        torch.testing.assert_close(chunked[name], values, atol=0, rtol=0, msg=name)


def test_head_reads_a_contiguous_window_and_keeps_no_hook(memorized):
    """logits_to_keep slices the hidden states; the head must get a flat copy (a 3-D strided view makes
    F.linear a batched matmul on a weight expanded per row: 3x slower on a 49k head), and no hook may outlive
    the call: scores are those of the plain pass."""
    model, probes = memorized.model, memorized.probes
    head = model.get_output_embeddings()
    seen = []
    # A forward hook sees the input as the head's forward got it, after every pre-hook.
    spy = head.register_forward_hook(lambda module, args, out: seen.append(args[0].is_contiguous()))
    try:
        scores = score_sequences(model, [p.prefix_ids for p in probes], [p.suffix_ids for p in probes], 1, batch_size=4)
    finally:
        spy.remove()
    assert seen and all(seen)
    assert not head._forward_pre_hooks
    expected = [suffix_logits_by_hand(model, p).argmax(-1).tolist() == list(p.suffix_ids) for p in probes]
    assert scores["exact_extraction"].bool().tolist() == expected


def test_scores_without_moments_equal_those_with_them(memorized):
    """moments=False drops Min-K%++ (and only it); every other score is bit for bit the full pass's."""
    model, probes = memorized.model, memorized.probes
    args = ([p.prefix_ids for p in probes], [p.suffix_ids for p in probes], 1)
    full = score_sequences(model, *args, batch_size=4)
    lean = score_sequences(model, *args, batch_size=4, moments=False)
    assert set(full) - set(lean) == {"min_k_plus_plus"}
    for name, values in lean.items():
        torch.testing.assert_close(values, full[name], atol=0, rtol=0, msg=name)
