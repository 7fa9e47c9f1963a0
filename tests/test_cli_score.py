"""``obliviate toy`` + ``obliviate score`` end to end through ``obliviate.cli.main``, and its input errors.

python -m pytest -q tests/test_cli_score.py
"""

from __future__ import annotations

import json
import shutil

import pytest

from obliviate.cli import main
from obliviate.metrics import METRIC_NAMES


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-toy") / "toy"
    assert main(["toy", "--out", str(out), "--pretrain-steps", "20"]) == 0
    return out


def read_jsonl(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def score(toy, probes, out, *extra):
    return main(["score", "--model", str(toy / "base"), "--probes", str(probes), "--out", str(out), *extra])


def test_toy_then_score_writes_scores_and_summary(toy, tmp_path, capsys):
    for name in ("train", "probes", "retain", "heldout", "multiple_choice"):
        assert (toy / f"{name}.jsonl").is_file()
    assert score(toy, toy / "probes.jsonl", tmp_path / "s", "--reference", str(toy / "base"), "--batch-size", "64") == 0
    probes = read_jsonl(toy / "probes.jsonl")
    rows = read_jsonl(tmp_path / "s" / "scores.jsonl")
    assert [r["id"] for r in rows] == [p["id"] for p in probes]
    for row in rows:
        assert set(METRIC_NAMES) <= set(row) and {"id", "role", "suffix_log_prob", "suffix_length"} <= set(row)
        assert 0 <= row["memorization_accuracy"] <= 1 and row["exact_extraction"] in (0, 1)
        assert row["prefix_match_length"] <= row["suffix_length"]
        # The reference is the model itself: the ratio must vanish.
        assert row["reference_ratio"] == pytest.approx(0.0, abs=1e-5)
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    roles = {role: sum(p["role"] == role for p in probes) for role in ("member", "canary", "control")}
    assert roles == {"member": 160, "canary": 16, "control": 256}
    for role, n in roles.items():
        assert summary[f"count/{role}"] == n
    trained = [r for r in rows if r["role"] != "control"]
    assert summary["extraction_rate"] == pytest.approx(sum(r["exact_extraction"] for r in trained) / len(trained))
    for key in (
        "auc/min_k",
        "auc/min_k_plus_plus",
        "auc/zlib_ratio",
        "auc/neg_loss",
        "auc/reference_ratio",
        "tpr@1%fpr/min_k",
        "tail/prefix_match_length/p99",
        "tail/extraction_probability/gini",
    ):
        assert key in summary, key
    assert summary["settings"]["sampling"]["n"] == 100
    assert not any(k.startswith("exposure/") for k in summary)  # slow scores stay off by default
    printed = capsys.readouterr().out
    assert "extraction rate" in printed and "ROC AUC" in printed


def _split_canaries(toy, keep: int = 2, count: int = 2):
    """Canary-format probes (trained canaries and controls) with only the last ``keep`` digits secret."""
    rows = []
    for role in ("canary", "control"):
        for p in [p for p in read_jsonl(toy / "probes.jsonl") if p["role"] == role and "secret_format" in p][:count]:
            digits = p["completion"].split()
            rows.append(
                {
                    "id": p["id"],
                    "role": role,
                    "prompt": p["prompt"] + "".join(" " + d for d in digits[:-keep]),
                    "completion": "".join(" " + d for d in digits[-keep:]),
                    "secret_format": f"digits:{keep}",
                }
            )
    return rows


def test_score_with_exposure_el_and_density(toy, tmp_path):
    rows = _split_canaries(toy) + [
        {"id": "plain", "role": "member", "prefix": "Fact. The flag of", "suffix": " Riverton"}
    ]
    probes = write_jsonl(tmp_path / "p.jsonl", rows)
    assert (
        score(
            toy,
            probes,
            tmp_path / "s",
            "--exposure",
            "--el-n",
            "2",
            "--el-subset",
            "3",
            "--density-train",
            str(toy / "train.jsonl"),
        )
        == 0
    )
    scored = {r["id"]: r for r in read_jsonl(tmp_path / "s" / "scores.jsonl")}
    for row in rows:
        out = scored[row["id"]]
        if "secret_format" in row:
            assert out["exposure_method"] == "exact" and out["exposure_space"] == 100
            assert 0 <= out["exposure"] <= 6.65 and out["exposure_rank"] >= 1
        else:
            assert "exposure" not in out
        assert isinstance(out["log_density"], float) and out["nearest_train_distance"] >= 0
    assert sum("extraction_likelihood" in r for r in scored.values()) == 3
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert {"exposure/canary/mean", "exposure/control/max", "canary/mean_log_density"} <= set(summary)
    assert summary["settings"]["exposure"]["methods"] == ["exact"]
    assert summary["settings"]["extraction_likelihood"] == {"n": 2, "stride": 1, "probes": 3}


def _bad_rows(toy):
    too_long = " ".join(["word"] * 300)
    return {
        "too_long": ([{"id": "way-too-long", "prefix": too_long, "suffix": " x"}], "'way-too-long' is .* tokens"),
        "empty_suffix": ([{"id": "e", "prefix": "Fact.", "suffix": ""}], "'e' has an empty suffix"),
        "unknown_role": ([{"id": "r", "role": "victim", "prefix": "Fact.", "suffix": " x"}], "unknown role 'victim'"),
        "duplicate": (
            [{"id": "d", "prefix": "a", "suffix": " b"}, {"id": "d", "prefix": "c", "suffix": " d"}],
            "duplicate probe id 'd'",
        ),
        "no_secret": ([{"id": "n", "prefix": "a", "suffix": " b"}], "no probe .* has a secret_format"),
    }


@pytest.mark.parametrize("case", ["too_long", "empty_suffix", "unknown_role", "duplicate", "no_secret"])
def test_bad_probes_exit_2_with_message(toy, tmp_path, capsys, case):
    import re

    rows, match = _bad_rows(toy)[case]
    probes = write_jsonl(tmp_path / "p.jsonl", rows)
    extra = ["--exposure"] if case == "no_secret" else []
    assert score(toy, probes, tmp_path / "s", *extra) == 2
    err = capsys.readouterr().err
    assert "obliviate score: error:" in err and re.search(match, err), err
    assert not (tmp_path / "s" / "scores.jsonl").exists()


def test_missing_model_path_exits_2(tmp_path, capsys, toy):
    code = main(
        [
            "score",
            "--model",
            str(tmp_path / "nope"),
            "--probes",
            str(toy / "probes.jsonl"),
            "--out",
            str(tmp_path / "s"),
        ]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_missing_probe_file_exits_2(tmp_path, capsys, toy):
    assert score(toy, tmp_path / "missing.jsonl", tmp_path / "s") == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["bert", "t5-encoder"])
def test_model_that_is_not_a_causal_lm_exits_2(tmp_path, capsys, toy, kind):
    from transformers import BertConfig, BertModel, T5Config, T5EncoderModel

    if kind == "bert":
        model = BertModel(
            BertConfig(
                vocab_size=1024, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
            )
        )
    else:
        model = T5EncoderModel(T5Config(vocab_size=1024, d_model=32, num_layers=1, num_heads=2, d_ff=64, d_kv=16))
    model.save_pretrained(tmp_path / kind)
    shutil.copy(toy / "base" / "tokenizer.json", tmp_path / kind / "tokenizer.json")
    code = main(
        ["score", "--model", str(tmp_path / kind), "--probes", str(toy / "probes.jsonl"), "--out", str(tmp_path / "s")]
    )
    assert code == 2
    assert "is not a causal language model" in capsys.readouterr().err


def test_tokenizer_without_pad_token_warns_and_scores(toy, tmp_path):
    from transformers import AutoTokenizer

    model_dir = tmp_path / "nopad"
    shutil.copytree(toy / "base", model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = None
    tok.save_pretrained(model_dir)
    assert AutoTokenizer.from_pretrained(model_dir).pad_token is None
    probes = write_jsonl(tmp_path / "p.jsonl", read_jsonl(toy / "probes.jsonl")[:5])
    with pytest.warns(UserWarning, match="no pad token; using its eos token"):
        code = main(["score", "--model", str(model_dir), "--probes", probes, "--out", str(tmp_path / "s")])
    assert code == 0
    assert len(read_jsonl(tmp_path / "s" / "scores.jsonl")) == 5
