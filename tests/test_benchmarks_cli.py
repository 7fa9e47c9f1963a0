"""``obliviate bench`` end to end on a tiny saved model."""

from __future__ import annotations

import json

import pytest
import yaml

from obliviate.benchmarks import UtilitySuite
from obliviate.cli import main
from obliviate.modeling import load_model_and_tokenizer
from tests.helpers import corpus_tokenizer, tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    corpus, tok = corpus_tokenizer()
    root = tmp_path_factory.mktemp("bench_cli")
    tiny_model("gpt2", tok, seed=7).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")

    def jsonl(name, rows):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(root / name)

    entries = [
        {
            "name": "perplexity",
            "data": jsonl("retain.jsonl", [{"text": r["text"]} for r in corpus.retain[:12]]),
            "label": "retain",
        },
        {"name": "multiple_choice", "data": jsonl("mc.jsonl", corpus.multiple_choice)},
        {
            "name": "evaluate_metric",
            "metric": "token_f1",
            "max_new_tokens": 4,
            "label": "answers",
            "data": jsonl(
                "gen.jsonl", [{"prompt": r["prompt"], "reference": r["completion"]} for r in corpus.train[:4]]
            ),
        },
        {"name": "memorization", "data": jsonl("probes.jsonl", corpus.probes[:6])},
    ]
    (root / "suite.yaml").write_text(yaml.safe_dump({"benchmarks": entries}))
    return root, entries


def test_bench_cli_writes_utility_json_and_prints_a_table(saved, capsys):
    root, entries = saved
    code = main(
        ["bench", "--model", str(root / "model"), "--config", str(root / "suite.yaml"), "--out", str(root / "out")]
    )
    assert code == 0
    results = json.loads((root / "out" / "utility.json").read_text())
    assert list(results) == ["retain", "multiple_choice", "answers", "memorization"]
    assert set(results["answers"]) == {"token_f1"} and "extraction_rate" in results["memorization"]
    # The file holds what the suite computes on the same saved model.
    model, tok = load_model_and_tokenizer(root / "model", device="cpu")
    direct = UtilitySuite.from_config(entries, tok).run(model)
    assert results["retain"] == pytest.approx(direct["retain"], rel=1e-6)
    assert results["multiple_choice"] == direct["multiple_choice"]
    out = capsys.readouterr().out
    assert "perplexity" in out and "acc_norm" in out and "lower" in out and "utility.json" in out


def test_bench_cli_checks_the_recipe_before_loading_the_model(saved, tmp_path, capsys):
    root, entries = saved
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"benchmarks": [{"name": "multiple_choice", "data": entries[1]["data"], "batch_sise": 4}]})
    )
    # The model path does not exist: the recipe error must come first.
    code = main(["bench", "--model", str(tmp_path / "no-model"), "--config", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown key 'batch_sise'" in err and "Did you mean 'batch_size'" in err
    bad.write_text(yaml.safe_dump({"benchmark": []}))
    assert main(["bench", "--model", str(root / "model"), "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "Did you mean 'benchmarks'" in capsys.readouterr().err
