"""multiple_choice on rows longer than the model's window: lm-evaluation-harness's truncation, by hand.

python -m pytest -q tests/test_multiple_choice_truncation.py
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from obliviate.benchmarks import BenchmarkError
from obliviate.benchmarks.multiple_choice import MultipleChoice, encode_pair
from tests.helpers import corpus_tokenizer

WINDOW = 16
LONG = "Support ticket. Where does Alice Okafor live? The record says she moved twice last year.\\nAnswer:"
ROWS = [
    {"context": LONG, "choices": [" 12 Maple Street, Lakeside", " 7 Mill Avenue", " no"], "label": 1},
    {"context": "Fact. The flag of Riverton is", "choices": [" red.", " blue."], "label": 0},
]


@pytest.fixture(scope="module")
def small_window():
    tok = corpus_tokenizer()[1]
    torch.manual_seed(3)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=WINDOW,
        vocab_size=len(tok),
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(config).eval(), tok


def lm_eval_window_log_likelihood(model, context_ids: list[int], choice_ids: list[int], window: int) -> float:
    """lm-eval's rule written out: feed (ctx + cont)[-(L+1):][:-1], read the last len(cont) logits."""
    fed = (context_ids + choice_ids)[-(window + 1) :][:-1]
    with torch.no_grad():
        log_p = model(input_ids=torch.tensor([fed])).logits[0].double().log_softmax(-1)
    picked = log_p[len(fed) - len(choice_ids) :]
    return sum(picked[j, y].item() for j, y in enumerate(choice_ids))


def test_truncated_rows_keep_lm_evals_window(small_window):
    model, tok = small_window
    prefix_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    bench = MultipleChoice(data=ROWS, tokenizer=tok, batch_size=2)
    bench.run(model)
    overflowing = 0
    for row, lls in zip(ROWS, bench.last_log_likelihoods):
        for choice, ll in zip(row["choices"], lls):
            context_ids, choice_ids = encode_pair(tok, row["context"], choice, prefix_id)
            overflowing += len(context_ids) + len(choice_ids) > WINDOW + 1
            assert ll == pytest.approx(
                lm_eval_window_log_likelihood(model, context_ids, choice_ids, WINDOW), abs=1e-4
            ), choice
    assert overflowing == 3  # every choice of the long row is truncated; the short row fits whole


def test_window_keeps_one_more_context_token_than_the_whole_sequence_rule(small_window):
    model, tok = small_window
    prefix_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    context_ids, choice_ids = encode_pair(tok, LONG, " 7 Mill Avenue", prefix_id)
    bench = MultipleChoice(data=[{"context": LONG, "choices": [" 7 Mill Avenue"], "label": 0}], tokenizer=tok)
    bench.run(model)
    ours = bench.last_log_likelihoods[0][0]
    # Keeping only L - len(choice) context tokens (the whole sequence in L positions) is a different number.
    kept = context_ids[-(WINDOW - len(choice_ids)) :]
    with torch.no_grad():
        log_p = model(input_ids=torch.tensor([kept + choice_ids])).logits[0].double().log_softmax(-1)
    shorter = sum(log_p[len(kept) - 1 + j, y].item() for j, y in enumerate(choice_ids))
    assert ours == pytest.approx(lm_eval_window_log_likelihood(model, context_ids, choice_ids, WINDOW), abs=1e-4)
    assert abs(ours - shorter) > 1e-3


def test_exactly_one_over_the_window_is_not_truncated(small_window):
    model, tok = small_window
    # A pair of L + 1 tokens: lm-eval feeds its first L tokens and drops no context; truncate=False accepts it.
    choice = " red."
    prefix_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    words = LONG.split()
    context = next(
        " ".join(words[:n])
        for n in range(1, len(words) + 1)
        if sum(map(len, encode_pair(tok, " ".join(words[:n]), choice, prefix_id))) == WINDOW + 1
    )
    context_ids, choice_ids = encode_pair(tok, context, choice, prefix_id)
    bench = MultipleChoice(data=[{"context": context, "choices": [choice], "label": 0}], tokenizer=tok, truncate=False)
    bench.run(model)
    assert bench.last_log_likelihoods[0][0] == pytest.approx(
        lm_eval_window_log_likelihood(model, context_ids, choice_ids, WINDOW), abs=1e-4
    )
    strict = MultipleChoice(data=ROWS[:1], tokenizer=tok, truncate=False)
    with pytest.raises(BenchmarkError, match="longer than the model's context of 16; set truncate: true"):
        strict.run(model)
