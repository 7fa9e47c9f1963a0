"""The ``lm_eval`` benchmark on a task defined on local files (needs the ``obliviate[lm-eval]`` extra)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install 'obliviate[lm-eval]'")

from obliviate.benchmarks import BenchmarkError, UtilitySuite
from obliviate.benchmarks.multiple_choice import encode_pair
from tests.helpers import corpus_tokenizer, tiny_model

ROWS = [
    {"context": "Fact. The flag of Riverton is", "choices": [" red.", " blue.", " green and white."], "label": 0},
    {"context": "Fact. The flag of Lakeside is", "choices": [" a long purple banner.", " blue."], "label": 1},
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

TASK_YAML = """task: toy_flags
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def loglikelihood_requests(rows) -> list:
    """lm-eval ``Instance`` requests for every (context, choice), built the same way on 0.4.x and 0.5."""
    from lm_eval.api.instance import Instance

    # 0.5 makes task_name and doc_id required; 0.4 takes them as optional fields.
    return [
        Instance(
            request_type="loglikelihood", doc={}, arguments=(r["context"], c), idx=i, task_name="toy_flags", doc_id=k
        )
        for k, r in enumerate(rows)
        for i, c in enumerate(r["choices"])
    ]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_task")
    data = root / "flags.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "tasks").mkdir()
    (root / "tasks" / "toy_flags.yaml").write_text(TASK_YAML.format(data=data))
    return root


def test_lm_eval_local_task_agrees_with_multiple_choice(task_dir):
    tok = corpus_tokenizer()[1]
    model = tiny_model("gpt2", tok, seed=5).eval()
    suite = UtilitySuite.from_config(
        [
            {"name": "lm_eval", "data": str(task_dir / "tasks"), "tasks": ["toy_flags"], "batch_size": 4},
            {"name": "multiple_choice", "data": str(task_dir / "flags.jsonl")},
        ],
        tok,
    )
    results = suite.run(model)
    assert set(results["lm_eval"]) == {"acc", "acc_norm"}
    # lm-eval's own loglikelihood path and ours agree on the same task and model.
    assert results["lm_eval"]["acc"] == results["multiple_choice"]["acc"]
    assert results["lm_eval"]["acc_norm"] == results["multiple_choice"]["acc_norm"]
    assert suite["lm_eval"].direction("acc") == "higher" and suite["lm_eval"].primary_score == "acc"
    assert model.training is False


def test_choice_log_likelihoods_equal_lm_evals():
    from lm_eval.models.huggingface import HFLM

    from obliviate.benchmarks.multiple_choice import MultipleChoice

    tok = corpus_tokenizer()[1]
    model = tiny_model("gpt2", tok, seed=5).eval()
    ours = MultipleChoice(data=ROWS, tokenizer=tok, batch_size=3)
    ours.run(model)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    requests = loglikelihood_requests(ROWS)
    theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    assert [ll for row in ours.last_log_likelihoods for ll in row] == pytest.approx(theirs, abs=1e-4)


def test_encode_pair_is_lm_evals():
    from lm_eval.models.huggingface import HFLM

    tok = corpus_tokenizer()[1]
    lm = HFLM(pretrained=tiny_model("gpt2", tok), tokenizer=tok, batch_size=1)
    for context, continuation in [
        ("Fact. The flag of Riverton is", " red."),
        ("Answer: ", "red"),
        ("PIN is  ", " 1 2"),
        ("x", "yz"),
    ]:
        assert encode_pair(tok, context, continuation, lm.prefix_token_id) == tuple(
            lm._encode_pair(context, continuation)
        )


def test_lm_eval_unknown_task_and_missing_path(task_dir, tmp_path):
    with pytest.raises(BenchmarkError, match="unknown lm-eval task 'toy_flag'.*Did you mean 'toy_flags'"):
        UtilitySuite.from_config(
            [{"name": "lm_eval", "data": str(task_dir / "tasks"), "tasks": ["toy_flag"], "include_defaults": False}]
        )
    with pytest.raises(FileNotFoundError, match="include path"):
        UtilitySuite.from_config([{"name": "lm_eval", "data": str(tmp_path / "none"), "tasks": ["x"]}])


def test_truncated_rows_equal_lm_evals_loglikelihood():
    # A 16-position model: the long context overflows it and lm-eval truncates from the left.
    from lm_eval.models.huggingface import HFLM
    from transformers import GPT2Config, GPT2LMHeadModel

    from obliviate.benchmarks.multiple_choice import MultipleChoice

    tok = corpus_tokenizer()[1]
    torch.manual_seed(3)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=2,
            n_positions=16,
            vocab_size=len(tok),
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    ).eval()
    ours = MultipleChoice(data=ROWS, tokenizer=tok, batch_size=3)
    ours.run(model)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    assert lm.max_length == 16
    requests = loglikelihood_requests(ROWS)
    pairs = [encode_pair(tok, r["context"], c, lm.prefix_token_id) for r in ROWS for c in r["choices"]]
    assert sum(len(a) + len(b) > 17 for a, b in pairs) >= 3  # several rows really are truncated
    theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    assert [ll for row in ours.last_log_likelihoods for ll in row] == pytest.approx(theirs, abs=1e-4)


def test_lm_eval_wraps_the_in_memory_model_without_reloading(task_dir, monkeypatch):
    import transformers

    def no_reload(*args, **kwargs):
        raise AssertionError("the lm_eval benchmark loaded weights from disk")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_reload)
    tok = corpus_tokenizer()[1]
    model = tiny_model("gpt2", tok, seed=5).eval()
    suite = UtilitySuite.from_config(
        [
            {
                "name": "lm_eval",
                "data": str(task_dir / "tasks"),
                "tasks": ["toy_flags"],
                "batch_size": 4,
                "include_defaults": False,
            }
        ],
        tok,
    )
    first = suite.run(model)["lm_eval"]
    bench = suite["lm_eval"]
    wrapper = bench._lm[2]
    assert wrapper.model is model  # the very object, so an erasure step is what the next check sees
    assert suite.run(model)["lm_eval"] == first and bench._lm[2] is wrapper
    # Weights changed in place (as an erasure step does) reach lm-eval through the same wrapper: scrambling
    # the output embedding moves its log-likelihoods.
    before = [ll for ll, _ in wrapper.loglikelihood(loglikelihood_requests(ROWS[:1]), disable_tqdm=True)]
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(3.0)
    after = [ll for ll, _ in wrapper.loglikelihood(loglikelihood_requests(ROWS[:1]), disable_tqdm=True)]
    assert max(abs(a - b) for a, b in zip(before, after)) > 1e-3
