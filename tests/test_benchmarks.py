"""Utility benchmarks against hand computations: perplexity, multiple choice, evaluate metrics, errors."""

from __future__ import annotations

import itertools
import json
import math
import os

import pytest
import torch

from obliviate.benchmarks import (
    BENCHMARKS,
    BenchmarkError,
    UnknownBenchmarkError,
    UtilityBenchmark,
    UtilitySuite,
    get_benchmark,
    register_benchmark,
)
from obliviate.benchmarks.evaluate_metric import load_metric
from obliviate.benchmarks.multiple_choice import MultipleChoice, encode_pair
from obliviate.benchmarks.perplexity import Perplexity
from obliviate.config import RecipeError
from tests.helpers import corpus_tokenizer, tiny_model


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tok():
    return corpus_tokenizer()[1]


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model("gpt2", tok, seed=3).eval()


def token_log_probs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= 1, from one plain forward pass (the hand computation)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return logits[:-1].log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


# --- perplexity ---------------------------------------------------------------------------------


def test_perplexity_is_token_weighted_exp_mean_nll(model, tok, tmp_path):
    corpus = corpus_tokenizer()[0]
    texts = [r["text"] for r in corpus.retain[:5]] + ["Fact.", corpus.heldout[0]["text"] * 2]
    data = write_jsonl(tmp_path / "ppl.jsonl", [{"text": t} for t in texts])
    bench = Perplexity(data=data, batch_size=3)
    scores = bench.run(model, tok)
    total_nll, tokens = 0.0, 0
    for text in texts:
        ids = tok(text)["input_ids"]
        total_nll -= token_log_probs(model, ids).sum().item()
        tokens += len(ids) - 1
    assert bench.last_token_count == tokens
    assert scores["loss"] == pytest.approx(total_nll / tokens, rel=1e-5)
    assert scores["perplexity"] == pytest.approx(math.exp(total_nll / tokens), rel=1e-5)
    # Token-weighted, not a mean of per-row perplexities (they differ once lengths differ).
    per_row = [math.exp(-token_log_probs(model, tok(t)["input_ids"]).mean().item()) for t in texts]
    assert abs(scores["perplexity"] - sum(per_row) / len(per_row)) > 1e-3


def test_perplexity_tokenizes_once_and_sees_weight_changes(model, tok, tmp_path):
    data = write_jsonl(tmp_path / "ppl.jsonl", [{"text": r["text"]} for r in corpus_tokenizer()[0].retain[:6]])
    bench = Perplexity(data=data, batch_size=4, tokenizer=tok)
    first = bench.run(model)
    changed = tiny_model("gpt2", tok, seed=4).eval()
    second = bench.run(changed)
    assert bench.tokenize_calls == 1
    assert first != second
    bench.clear_cache()
    assert bench.run(model) == pytest.approx(first, rel=1e-6)
    assert bench.tokenize_calls == 2


def test_perplexity_max_samples_is_a_fixed_sample(tmp_path):
    data = write_jsonl(tmp_path / "ppl.jsonl", [{"text": f"row {i} text"} for i in range(40)])
    a, b = Perplexity(data=data, max_samples=7), Perplexity(data=data, max_samples=7)
    c = Perplexity(data=data, max_samples=7, seed=1)
    assert [w for w, _ in a.rows] == [w for w, _ in b.rows]
    assert len(a.rows) == 7 and [w for w, _ in a.rows] != [w for w, _ in c.rows]


# --- multiple choice ----------------------------------------------------------------------------


def hand_choice_log_likelihood(model, tok, context: str, choice: str) -> float:
    """Summed log p of the choice tokens: encode context+choice whole, split after the context's tokens."""
    whole, ctx = tok(context + choice)["input_ids"], tok(context)["input_ids"]
    return token_log_probs(model, whole)[len(ctx) - 1 :].sum().item()


MC_ROWS = [
    {"context": "Fact. The flag of Riverton is", "choices": [" red.", " blue.", " green and white."], "label": 0},
    {
        "context": "Support ticket. Where does Alice Okafor live?\nAnswer:",
        "choices": [" 12 Maple Street, Lakeside", " 7 Mill Avenue", " no"],
        "label": 1,
    },
    {
        "context": "Internal note. The account PIN of Dana Novak R. is",
        "choices": [" 1 2 3", " 4 5 6 7 8 9"],
        "label": 1,
    },
]


def test_multiple_choice_matches_hand_computation(model, tok, tmp_path):
    bench = MultipleChoice(data=write_jsonl(tmp_path / "mc.jsonl", MC_ROWS), batch_size=3)
    scores = bench.run(model, tok)
    hits = {"acc": 0, "acc_norm": 0}
    for row, got in zip(MC_ROWS, bench.last_log_likelihoods):
        lls = [hand_choice_log_likelihood(model, tok, row["context"], c) for c in row["choices"]]
        assert got == pytest.approx(lls, abs=1e-4)
        hits["acc"] += max(range(len(lls)), key=lambda i: lls[i]) == row["label"]
        norm = [ll / len(c) for ll, c in zip(lls, row["choices"])]
        hits["acc_norm"] += max(range(len(lls)), key=lambda i: norm[i]) == row["label"]
    assert scores["acc"] == hits["acc"] / len(MC_ROWS)
    assert scores["acc_norm"] == hits["acc_norm"] / len(MC_ROWS)
    assert scores["acc_bytes"] == scores["acc_norm"]  # ASCII: characters == bytes


def test_multiple_choice_batching_does_not_change_scores(model, tok):
    one = MultipleChoice(data=MC_ROWS, batch_size=1, tokenizer=tok)
    many = MultipleChoice(data=MC_ROWS, batch_size=8, tokenizer=tok)
    one.run(model)
    many.run(model)
    for a, b in zip(one.last_log_likelihoods, many.last_log_likelihoods):
        assert a == pytest.approx(b, abs=1e-5)


def _pair_where(model, tok, candidates, normalizers):
    """Two candidates whose argmax flips between two normalizations of the log-likelihood, if any."""
    context = "Fact. The flag of Riverton is"
    bench = MultipleChoice(data=[{"context": context, "choices": candidates, "label": 0}], tokenizer=tok)
    bench.run(model)
    lls = bench.last_log_likelihoods[0]
    f, g = normalizers
    for i, j in itertools.permutations(range(len(candidates)), 2):
        if f(lls[i], candidates[i]) > f(lls[j], candidates[j]) and g(lls[i], candidates[i]) < g(lls[j], candidates[j]):
            return context, candidates[i], candidates[j]
    return None


def test_acc_norm_differs_from_acc_when_lengths_differ(model, tok):
    candidates = [" red.", " blue", " a very long and winding answer about flags", " green and white stripes", " x"]
    found = _pair_where(model, tok, candidates, (lambda ll, c: ll, lambda ll, c: ll / len(c)))
    assert found, "no candidate pair separates acc from acc_norm"
    context, unnormalized_best, per_char_best = found
    bench = MultipleChoice(data=[{"context": context, "choices": [unnormalized_best, per_char_best], "label": 1}])
    scores = bench.run(model, tok)
    assert scores["acc"] == 0.0 and scores["acc_norm"] == 1.0


def test_acc_bytes_divides_by_utf8_bytes(model, tok):
    # Each non-ASCII character is two UTF-8 bytes (and two byte-level tokens) but one character.
    candidates = ["é", "~", " ß", " ~^", " é", " {}", " café", " x", " ü", " |"]
    found = _pair_where(model, tok, candidates, (lambda ll, c: ll / len(c), lambda ll, c: ll / len(c.encode())))
    assert found, "no candidate pair separates acc_norm from acc_bytes"
    context, per_char_best, per_byte_best = found
    bench = MultipleChoice(data=[{"context": context, "choices": [per_char_best, per_byte_best], "label": 1}])
    scores = bench.run(model, tok)
    assert scores["acc_norm"] == 0.0 and scores["acc_bytes"] == 1.0


def test_encode_pair_moves_trailing_space_and_splits_whole_encoding(tok):
    context_ids, choice_ids = encode_pair(tok, "Answer: ", "red", tok.eos_token_id)
    assert context_ids == tok("Answer:")["input_ids"]
    assert context_ids + choice_ids == tok("Answer: red")["input_ids"]
    assert encode_pair(tok, "", " red", tok.eos_token_id) == ([tok.eos_token_id], tok(" red")["input_ids"])


# --- evaluate metrics ---------------------------------------------------------------------------


def test_shipped_metrics_load_by_path_offline():
    import evaluate

    from obliviate import evaluate_metrics

    assert os.environ.get("HF_EVALUATE_OFFLINE") == "1"
    assert evaluate_metrics.SHIPPED == ("exact_match", "token_f1")
    exact = evaluate.load(evaluate_metrics.path("exact_match"))  # the script path
    assert exact is not None  # evaluate modules are falsy (len 0)
    predictions, references = ["Red.", " blue  sky ", "x"], ["red.", "blue sky", "y"]
    assert exact.compute(predictions=predictions, references=references) == {"exact_match": pytest.approx(1 / 3)}
    assert exact.compute(predictions=predictions, references=references, ignore_case=True)[
        "exact_match"
    ] == pytest.approx(2 / 3)
    f1 = evaluate.load(str(evaluate_metrics.ROOT / "token_f1"))  # the folder path
    assert load_metric("token_f1") is not None and load_metric("token_f1") is load_metric("token_f1")
    # "the red red flag" -> [red, red, flag]; "a red flag of Riverton" -> [red, flag, of, riverton]
    # shared 2: precision 2/3, recall 2/4, F1 = 2*(2/3)*(1/2)/((2/3)+(1/2)) = 4/7; second pair: 0; third: 1.
    result = f1.compute(
        predictions=["the red red flag", "blue", "Green!"], references=["a red flag of Riverton", "red", "green"]
    )
    assert result["token_f1"] == pytest.approx((4 / 7 + 0 + 1) / 3)


def test_unknown_metric_fails_clearly_offline():
    with pytest.raises(BenchmarkError, match="exact_match, token_f1"):
        load_metric("no_such_metric_anywhere")


def test_evaluate_metric_scores_greedy_generations(model, tok, tmp_path):
    prompts = ["Fact. The flag of Riverton is", "Support ticket. Where does Alice Okafor live?\nAnswer:", "Internal"]
    expected = []
    for prompt in prompts:  # hand: one unpadded greedy generation per prompt
        ids = torch.tensor([tok(prompt)["input_ids"]])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        expected.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).split("\n")[0])
    rows = [{"prompt": p, "reference": expected[0] if i == 0 else "zzz"} for i, p in enumerate(prompts)]
    data = write_jsonl(tmp_path / "gen.jsonl", rows)
    bench = get_benchmark("evaluate_metric")(data=data, max_new_tokens=6, batch_size=2)
    scores = bench.run(model, tok)
    assert bench.last_predictions == expected
    assert scores == {"exact_match": pytest.approx(1 / 3)}
    assert bench.primary_score == "exact_match" and bench.direction("exact_match") == "higher"


# --- registry, suite and bad input --------------------------------------------------------------


def test_registry_lists_builtins_and_rejects_unknown_names():
    assert {"perplexity", "multiple_choice", "evaluate_metric", "lm_eval", "memorization"} <= set(BENCHMARKS)
    with pytest.raises(UnknownBenchmarkError, match=r"Did you mean 'perplexity'.*Known benchmarks: evaluate_metric"):
        get_benchmark("perplexty")
    with pytest.raises(ValueError, match="already registered"):
        register_benchmark("perplexity")(type("Other", (Perplexity,), {}))


def test_suite_runs_several_and_labels_results(model, tok, tmp_path):
    retain = write_jsonl(tmp_path / "r.jsonl", [{"text": "Fact. The flag of Riverton is red."}] * 3)
    suite = UtilitySuite.from_config(
        [{"name": "perplexity", "data": retain, "label": "retain"}, {"name": "multiple_choice", "data": MC_ROWS}], tok
    )
    results = suite.run(model)
    assert set(results) == {"retain", "multiple_choice"}
    assert set(results["multiple_choice"]) == {"acc", "acc_norm", "acc_bytes"}
    assert suite.directions(results)["retain"]["perplexity"] == "lower"
    assert all(b.tokenize_calls == 1 for b in suite)
    with pytest.raises(BenchmarkError, match="distinct `label:`"):
        UtilitySuite.from_config([{"name": "perplexity", "data": retain}] * 2)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"context": "c", "choices": ["a", "b"], "label": 2}, r"mc.jsonl:2: label 2 is out of range for 2 choices"),
        ({"context": "c", "choices": [], "label": 0}, r"mc.jsonl:2: 'choices' must be a non-empty list"),
        ({"context": "c", "choices": ["a", ""], "label": 0}, r"mc.jsonl:2: every choice must be a non-empty string"),
        ({"context": "c", "choices": ["a"], "label": "a"}, r"mc.jsonl:2: 'label' must be the integer index"),
        ({"context": "c", "choices": ["a"]}, r"mc.jsonl:2: missing 'label'"),
    ],
)
def test_multiple_choice_bad_rows_name_file_and_line(tmp_path, row, message):
    data = write_jsonl(tmp_path / "mc.jsonl", [{"context": "ok", "choices": ["a", "b"], "label": 0}, row])
    with pytest.raises(BenchmarkError, match=message):
        MultipleChoice(data=data)


def test_bad_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        UtilitySuite.from_config([{"name": "perplexity", "data": str(tmp_path / "nope.jsonl")}])
    with pytest.raises(
        UnknownBenchmarkError, match="Known benchmarks: evaluate_metric, kl_to_original, lm_eval, memorization"
    ):
        UtilitySuite.from_config([{"name": "rouge_bench", "data": "x"}])
    with pytest.raises(RecipeError, match=r"unknown key 'dat' in benchmark 'perplexity'.*Did you mean 'data'"):
        UtilitySuite.from_config([{"name": "perplexity", "dat": "x.jsonl"}])
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(BenchmarkError, match="bad.jsonl:2: not valid JSON"):
        Perplexity(data=str(bad_json))
    with pytest.raises(BenchmarkError, match="needs `benchmarks:`"):
        UtilitySuite.from_config([])
    with pytest.raises(BenchmarkError, match="needs a tokenizer"):
        Perplexity(data=[{"text": "a b c"}]).run(tiny_model("gpt2", corpus_tokenizer()[1]))
    assert issubclass(UnknownBenchmarkError, ValueError) and issubclass(BenchmarkError, ValueError)
    assert UtilityBenchmark.from_entry({"name": "perplexity", "data": [{"text": "a b"}]}).label == "perplexity"
