"""GA / GradDiff / NPO / EMSO losses and their gradients on one batch against direct formulas.

python -m pytest -q tests/test_erasure_losses.py
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from obliviate.erasure import EraseConfig
from obliviate.erasure.losses import forward_suffix, get_loss, retain_nll
from tests.helpers import corpus_tokenizer, tiny_model

PREFIXES = [5, 3, 7]
SUFFIXES = [4, 9, 2]  # unequal lengths: token and sequence means differ


@pytest.fixture(scope="module")
def setup():
    tok = corpus_tokenizer()[1]
    model = tiny_model("gpt2", tok, seed=1).eval()
    gen = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    prefixes = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in PREFIXES]
    suffixes = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in SUFFIXES]
    return model, tok, prefixes, suffixes


def suffix_log_probs_unpadded(model, prefix, suffix) -> torch.Tensor:
    """log p_t(y_t) of each suffix token from one unpadded forward pass (with gradients)."""
    logits = model(input_ids=torch.tensor([prefix + suffix])).logits[0, len(prefix) - 1 : -1]
    return logits.log_softmax(-1).gather(-1, torch.tensor(suffix)[:, None]).squeeze(-1)


def eraser_objective(model, config, prefixes, suffixes, reference=None, retain=None):
    """What the eraser minimizes for one micro-batch holding the whole active set: sum_i l_i / N + retain."""
    loss = get_loss(config)
    out = forward_suffix(model, prefixes, suffixes, 0)
    value = loss.sequence_losses(out, reference).sum() / len(prefixes)
    if retain is not None:
        value = value + loss.retain_loss(retain_nll(model, *retain))
    return value


def grads(model, value) -> torch.Tensor:
    params = [p for p in model.parameters()]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params, retain_graph=True)])


def assert_same(model, ours, direct):
    assert ours.item() == pytest.approx(direct.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(grads(model, ours), grads(model, direct), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_gradient_ascent_loss_and_gradient(setup, reduction):
    model, _, prefixes, suffixes = setup
    config = EraseConfig(method="ga", forget_reduction=reduction)
    per_seq = [suffix_log_probs_unpadded(model, p, s) for p, s in zip(prefixes, suffixes)]
    if reduction == "token":  # Jang et al. / open-unlearning: -(sum of all token NLLs) / (number of tokens)
        direct = torch.cat(per_seq).sum() / sum(SUFFIXES)
    else:  # mean over sequences of each suffix's mean NLL, negated
        direct = torch.stack([lp.mean() for lp in per_seq]).mean()
    assert_same(model, eraser_objective(model, config, prefixes, suffixes), direct)


def test_token_reduction_is_hugging_face_loss_of_the_batch(setup):
    # open-unlearning's GradAscent: -model(**forget_inputs).loss, right-padded, prompt labels -100.
    model, _, prefixes, suffixes = setup
    width = max(len(p) + len(s) for p, s in zip(prefixes, suffixes))
    ids = torch.zeros((3, width), dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, (p, s) in enumerate(zip(prefixes, suffixes)):
        ids[i, : len(p) + len(s)] = torch.tensor(p + s)
        mask[i, : len(p) + len(s)] = 1
        labels[i, len(p) : len(p) + len(s)] = torch.tensor(s)
    hf = -model(input_ids=ids, attention_mask=mask, labels=labels).loss
    ours = eraser_objective(model, EraseConfig(method="ga", forget_reduction="token"), prefixes, suffixes)
    assert_same(model, ours, hf)
    sequence = eraser_objective(model, EraseConfig(method="ga", forget_reduction="sequence"), prefixes, suffixes)
    assert abs(sequence.item() - hf.item()) > 1e-3  # the two reductions really differ on this batch


def test_token_reduction_adds_up_across_micro_batches(setup):
    model, _, prefixes, suffixes = setup
    config = EraseConfig(method="ga", forget_reduction="token")
    whole = eraser_objective(model, config, prefixes, suffixes)
    loss = get_loss(config)
    loss.mean_suffix_length = sum(SUFFIXES) / 3  # what the eraser knows of the whole active set
    parts = [
        loss.sequence_losses(forward_suffix(model, prefixes[a:b], suffixes[a:b], 0)).sum() / 3
        for a, b in ((0, 1), (1, 3))
    ]
    assert_same(model, parts[0] + parts[1], whole)


def padded(rows: list[list[int]], side: str, pad: int):
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        where = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, where], mask[i, where] = torch.tensor(r), 1
    return ids, mask


def test_retain_nll_same_left_or_right_padded_and_equal_to_unpadded(setup):
    model, tok, prefixes, suffixes = setup
    rows = [p + s for p, s in zip(prefixes, suffixes)]
    direct = torch.cat([suffix_log_probs_unpadded(model, r[:1], r[1:]) for r in rows])
    direct = -direct.sum() / direct.numel()
    left, right = (retain_nll(model, *padded(rows, side, tok.pad_token_id)) for side in ("left", "right"))
    assert_same(model, left, direct)
    assert_same(model, right, direct)
    # The Hugging Face loss is right only for right padding: left-padded rows without position_ids are shifted.
    ids, mask = padded(rows, "right", tok.pad_token_id)
    assert model(
        input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)
    ).loss.item() == pytest.approx(direct.item(), rel=1e-5)
    ids, mask = padded(rows, "left", tok.pad_token_id)
    naive = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    assert abs(naive.item() - direct.item()) > 1e-2


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_graddiff_is_ascent_plus_weighted_retain_nll(setup, reduction):
    model, tok, prefixes, suffixes = setup
    retain_rows = [prefixes[1] + suffixes[1], suffixes[0] + prefixes[2]]
    config = EraseConfig(method="graddiff", forget_reduction=reduction, retain_weight=0.7)
    per_seq = [suffix_log_probs_unpadded(model, p, s) for p, s in zip(prefixes, suffixes)]
    forget = (
        torch.cat(per_seq).sum() / sum(SUFFIXES)
        if reduction == "token"
        else torch.stack([lp.mean() for lp in per_seq]).mean()
    )
    retain = torch.cat([suffix_log_probs_unpadded(model, r[:1], r[1:]) for r in retain_rows])
    direct = forget + 0.7 * (-retain.sum() / retain.numel())
    ours = eraser_objective(model, config, prefixes, suffixes, retain=padded(retain_rows, "left", tok.pad_token_id))
    assert_same(model, ours, direct)


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_unlikelihood_is_minus_log_one_minus_p_plus_weighted_retain_nll(setup, reduction):
    model, tok, prefixes, suffixes = setup
    retain_rows = [prefixes[1] + suffixes[1], suffixes[0] + prefixes[2]]
    config = EraseConfig(method="unlikelihood", forget_reduction=reduction, method_args={"retain_weight": 0.4})
    # Welleck et al. 2019 on each forget token: -log(1 - p_t(y_t)), written here from p itself.
    per_seq = [-torch.log(1 - suffix_log_probs_unpadded(model, p, s).exp()) for p, s in zip(prefixes, suffixes)]
    forget = (
        torch.cat(per_seq).sum() / sum(SUFFIXES)
        if reduction == "token"
        else torch.stack([t.mean() for t in per_seq]).mean()
    )
    retain = torch.cat([suffix_log_probs_unpadded(model, r[:1], r[1:]) for r in retain_rows])
    direct = forget + 0.4 * (-retain.sum() / retain.numel())
    ours = eraser_objective(model, config, prefixes, suffixes, retain=padded(retain_rows, "left", tok.pad_token_id))
    assert_same(model, ours, direct)


def test_unlikelihood_pushes_memorized_tokens_hardest_where_ascent_pushes_least():
    """The reason the loss exists: on the logits, GA's token gradient has size 1 - p and vanishes on a memorized
    token; the unlikelihood gradient is p / (1 - p) times it, largest exactly there, and finite at p = 1."""
    from obliviate.erasure.losses.base import SuffixOutput

    logits = torch.tensor([[[9.0, 0.0, 0.0], [0.0, 0.0, 0.0], [30.0, 0.0, 0.0]]], requires_grad=True)
    out = SuffixOutput(logits, torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool))
    for method in ("ga", "unlikelihood"):
        config = EraseConfig(method=method, forget_reduction="sequence", method_args=None)
        (grad,) = torch.autograd.grad(get_loss(config).sequence_losses(out).sum(), logits)
        size = grad[0, :, 0].abs()
        if method == "ga":
            assert size[0] < 0.01 and size[0] < size[1]  # p = 0.9998: ascent barely moves it
        else:
            assert size[0] > 0.3 and size[0] > 2 * size[1] and torch.isfinite(grad).all()  # p ~ 1: still pushed
            assert size[2] > 0.3  # float32 rounds p to 1.0 here: still finite, still pushed


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_ga_to_reference_pushes_each_token_only_down_to_the_reference(setup, margin):
    model, tok, prefixes, suffixes = setup
    config = EraseConfig(
        method="ga_to_reference",
        reference_model="unused-here",
        method_args={"retain_weight": 0, "reference_margin": margin},
    )
    loss = get_loss(config)
    out = forward_suffix(model, prefixes, suffixes, 0)
    own = [suffix_log_probs_unpadded(model, p, s).detach() for p, s in zip(prefixes, suffixes)]
    # A reference 1 nat below the model on the first half of each suffix, 1 nat above it on the rest.
    refs = [torch.where(torch.arange(len(o)) < len(o) // 2, o - 1.0, o + 1.0) for o in own]
    aligned = torch.zeros(out.valid.shape)
    aligned[out.valid] = torch.cat(refs)
    ours = loss.sequence_losses(out, aligned).sum() / len(prefixes)
    # Direct: sum over tokens of max(0, log p - log p_ref + margin), over all suffix tokens (token mean).
    per_seq = [suffix_log_probs_unpadded(model, p, s) for p, s in zip(prefixes, suffixes)]
    direct = sum((lp - r + margin).clamp_min(0).sum() for lp, r in zip(per_seq, refs)) / sum(SUFFIXES)
    assert_same(model, ours, direct)
    # Tokens already no likelier than the reference (by more than the margin) carry no term at all.
    level = loss.sequence_losses(out, out.target_log_probs().detach() + margin + 1e-3)
    assert torch.count_nonzero(level) == 0


def log_odds_unpadded(model, prefix: list[int], suffix: list[int]) -> torch.Tensor:
    """log p - log(1 - p) of each suffix token from one unpadded forward pass (with gradients)."""
    logits = model(input_ids=torch.tensor([prefix + suffix])).logits[0, len(prefix) - 1 : -1]
    p = logits.softmax(-1).gather(-1, torch.tensor(suffix)[:, None]).squeeze(-1)
    return p.log() - (1 - p).log()


def test_ga_to_reference_in_log_odds_space(setup):
    """space log_odds: the same one-sided term on log p - log(1 - p), value and gradient against a direct computation."""
    model, tok, prefixes, suffixes = setup
    config = EraseConfig(
        method="ga_to_reference", reference_model="x", method_args={"retain_weight": 0, "space": "log_odds"}
    )
    loss = get_loss(config)
    out = forward_suffix(model, prefixes, suffixes, 0)
    odds = [log_odds_unpadded(model, p, s) for p, s in zip(prefixes, suffixes)]
    torch.testing.assert_close(
        loss.token_reference(out).detach()[out.valid], torch.cat(odds).detach(), rtol=1e-4, atol=1e-4
    )
    # A reference 1.5 below the model on the first half of each suffix, 1 above it on the rest.
    refs = [torch.where(torch.arange(len(o)) < len(o) // 2, o.detach() - 1.5, o.detach() + 1.0) for o in odds]
    aligned = torch.zeros(out.valid.shape)
    aligned[out.valid] = torch.cat(refs)
    ours = loss.sequence_losses(out, aligned).sum() / len(prefixes)
    direct = sum((o - r).clamp_min(0).sum() for o, r in zip(odds, refs)) / sum(SUFFIXES)
    assert ours.item() == pytest.approx(direct.item(), rel=1e-4)
    torch.testing.assert_close(grads(model, ours), grads(model, direct), rtol=1e-3, atol=1e-6)


def test_log_odds_push_a_saturated_token_where_log_prob_does_not():
    """Why the space exists: at p = 0.9998 the log p gradient on the logits is 1e-4 the size of the log-odds one,
    and where float32 rounds p to 1 the log-odds is still finite and still pushed."""
    from obliviate.erasure.losses.base import SuffixOutput

    sizes = {}
    for space in ("log_prob", "log_odds"):
        logits = torch.tensor([[[9.0, 0.0, 0.0], [30.0, 0.0, 0.0]]], requires_grad=True)
        out = SuffixOutput(logits, torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))
        config = EraseConfig(
            method="ga_to_reference", reference_model="x", forget_reduction="sequence", method_args={"space": space}
        )
        (grad,) = torch.autograd.grad(get_loss(config).sequence_losses(out, torch.full((1, 2), -5.0)).sum(), logits)
        assert torch.isfinite(grad).all()
        sizes[space] = grad[0, :, 0].abs()
    assert sizes["log_prob"][0] < 1e-3 and sizes["log_odds"][0] > 0.3
    assert sizes["log_odds"][1] > 0.3


def test_ga_to_reference_rejects_an_unknown_space():
    from obliviate.erasure.config import EraseConfigError

    with pytest.raises(EraseConfigError, match="space must be one of log_prob, log_odds"):
        EraseConfig(method="ga_to_reference", reference_model="x", method_args={"space": "logit"})


def test_ga_to_reference_without_a_reference_model_says_what_to_give():
    from obliviate.erasure.config import EraseConfigError

    with pytest.raises(EraseConfigError, match="needs reference_model: the model the fine-tuning started from"):
        get_loss(EraseConfig(method="ga_to_reference"))


@pytest.mark.parametrize("method,reduction", [("npo", "sequence"), ("npo", "token"), ("npo_rt", "sequence")])
def test_npo_loss_and_gradient(setup, method, reduction):
    model, tok, prefixes, suffixes = setup
    beta = 0.1
    reference = torch.tensor([-30.0, -80.0, -12.0])  # log pi_ref(y|x), as scored before erasure
    per_seq = [suffix_log_probs_unpadded(model, p, s).sum() for p, s in zip(prefixes, suffixes)]
    # Zhang et al. 2024: -(2/beta) log sigmoid(-beta * (log pi_theta - log pi_ref)), averaged over sequences.
    terms = torch.stack([-(2 / beta) * F.logsigmoid(-beta * (lp - ref)) for lp, ref in zip(per_seq, reference)])
    if reduction == "token":
        lengths = torch.tensor(SUFFIXES, dtype=torch.float)
        direct = (terms * lengths).sum() / lengths.sum()
    else:
        direct = terms.mean()
    retain = None
    if method == "npo_rt":  # NPO-RT / open-unlearning's NPO: + alpha * retain NLL, alpha = retain_weight = 1
        rows = [prefixes[0] + suffixes[2]]
        retain = padded(rows, "left", tok.pad_token_id)
        lp = suffix_log_probs_unpadded(model, rows[0][:1], rows[0][1:])
        direct = direct + 1.0 * (-lp.mean())
    config = EraseConfig(method=method, forget_reduction=reduction, npo_beta=beta)
    ours = eraser_objective(model, config, prefixes, suffixes, reference=reference, retain=retain)
    assert_same(model, ours, direct)
    assert get_loss(config).needs_retain == (method == "npo_rt")


@pytest.mark.parametrize("variant", ["entropy", "uniform_ce"])
def test_emso_token_reduction(setup, variant):
    model, _, prefixes, suffixes = setup
    per_token = []
    for p, s in zip(prefixes, suffixes):
        log_p = model(input_ids=torch.tensor([p + s])).logits[0, len(p) - 1 : -1].log_softmax(-1)
        per_token.append((log_p.exp() * log_p).sum(-1) if variant == "entropy" else -log_p.mean(-1))
    direct = torch.cat(per_token).mean()
    config = EraseConfig(method="emso", entropy_variant=variant, forget_reduction="token")
    assert_same(model, eraser_objective(model, config, prefixes, suffixes), direct)


def test_bad_forget_reduction_is_a_clear_error():
    from obliviate.erasure.config import EraseConfigError

    with pytest.raises(EraseConfigError, match="forget_reduction must be one of token, sequence"):
        EraseConfig(forget_reduction="batch")


def test_default_reduction_is_each_losses_reference_convention():
    # null = the loss's own: token for ga/graddiff (Jang et al., open-unlearning), sequence for npo and emso.
    expected = {
        "ga": "token",
        "graddiff": "token",
        "unlikelihood": "token",
        "ga_to_reference": "token",
        "npo": "sequence",
        "npo_rt": "sequence",
        "emso": "sequence",
    }
    for method, reduction in expected.items():
        extra = {"reference_model": "base"} if method == "ga_to_reference" else {}
        assert get_loss(EraseConfig(method=method, **extra)).reduction == reduction, method
        assert get_loss(EraseConfig(method=method, forget_reduction="sequence", **extra)).reduction == "sequence"
        assert get_loss(EraseConfig(method=method, forget_reduction="token", **extra)).reduction == "token"
