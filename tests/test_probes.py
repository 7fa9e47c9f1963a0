"""Probe loading: every row shape, every source, and clear errors for bad input.

python -m pytest -q tests/test_probes.py
"""

from __future__ import annotations

import json

import pytest

from obliviate.data import ProbeError, ProbeSet, load_probes
from obliviate.metrics import score_probes
from obliviate.modeling import load_tokenizer
from obliviate.toy import train_tokenizer
from tests.helpers import corpus_tokenizer


@pytest.fixture(scope="module")
def tok():
    return corpus_tokenizer()[1]


def encode(tok, text, special=True):
    return tok(text, add_special_tokens=special)["input_ids"]


def test_prefix_suffix_rows_tokenize_each_part_separately(tok):
    probe = load_probes([{"id": "a", "role": "member", "prefix": "Fact. The fla", "suffix": "g of Riverton is"}], tok)[
        0
    ]
    assert probe.prefix_ids == encode(tok, "Fact. The fla")
    assert probe.suffix_ids == encode(tok, "g of Riverton is", special=False)
    # Joint tokenization merges across the boundary (" flag"); separate tokenization keeps the suffix exact.
    assert probe.input_ids != encode(tok, "Fact. The flag of Riverton is")
    assert (probe.prefix, probe.suffix, probe.role) == ("Fact. The fla", "g of Riverton is", "member")


def test_prompt_completion_rows_keep_extra_fields_as_meta(tok):
    row = {
        "id": "c",
        "role": "canary",
        "prompt": "PIN of X is",
        "completion": " 1 2 3",
        "repetitions": 8,
        "secret_format": "digits:3",
    }
    probe = load_probes([row], tok)[0]
    assert probe.prefix_ids == encode(tok, "PIN of X is")
    assert probe.suffix_ids == encode(tok, " 1 2 3", special=False)
    assert probe.meta == {"repetitions": 8, "secret_format": "digits:3"}


def test_text_rows_split_by_token_counts(tok):
    text = "Support ticket. What is the phone number of Alice Okafor?\nAnswer: 555-123-4567"
    ids = encode(tok, text)
    probes = load_probes([{"id": "t", "text": text}], tok, prefix_tokens=5, suffix_tokens=7)
    assert probes[0].prefix_ids == ids[:5] and probes[0].suffix_ids == ids[5:12]
    assert probes[0].role == "member"  # the default role
    assert load_probes([{"id": "t", "text": text}], tok, prefix_tokens=5, suffix_tokens=1000)[0].suffix_ids == ids[5:]
    with pytest.raises(ProbeError, match="'t'.*none left after a 100-token prefix"):
        load_probes([{"id": "t", "text": text}], tok, prefix_tokens=100)


def test_rows_with_ids_are_used_as_given_without_tokenizer():
    probes = load_probes([{"id": 7, "role": "control", "prefix_ids": [1, 2], "suffix_ids": [3], "suffix": "x"}])
    assert probes[0].id == "7" and probes[0].input_ids == [1, 2, 3] and probes[0].suffix == "x"
    with pytest.raises(ProbeError, match="pass a tokenizer"):
        load_probes([{"id": "a", "prefix": "a", "suffix": "b"}])


def test_sources_jsonl_dataset_and_role_filter(tok, tmp_path):
    from datasets import Dataset

    rows = [
        {"id": f"p{i}", "role": role, "prompt": f"Question {i}?", "completion": f" answer {i}"}
        for i, role in enumerate(["member", "canary", "control", "member"])
    ]
    path = tmp_path / "probes.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    from_file = load_probes(path, tok)
    from_dataset = load_probes(Dataset.from_list(rows), tok)
    from_list = load_probes(rows, tok)
    for probes in (from_file, from_dataset):
        assert probes.ids == from_list.ids
        assert [p.input_ids for p in probes] == [p.input_ids for p in from_list]
    members = load_probes(path, tok, roles=["member"])
    assert members.ids == ["p0", "p3"]
    assert from_list.by_role("canary", "control").ids == ["p1", "p2"]
    assert "p2" in from_list and from_list["p2"].role == "control"


@pytest.mark.parametrize(
    "rows,match",
    [
        ([{"id": "a", "role": "member", "prefix": "x", "suffix": ""}], "'a' has an empty suffix"),
        ([{"id": "a", "role": "member", "prefix": "", "suffix": " y"}], "'a' has an empty prefix"),
        (
            [{"id": "a", "role": "secret", "prefix": "x", "suffix": " y"}],
            "unknown role 'secret'.*member, canary, control",
        ),
        (
            [{"id": "a", "prefix": "x", "suffix": " y"}, {"id": "a", "prefix": "z", "suffix": " w"}],
            "duplicate probe id 'a'",
        ),
        ([{"prefix": "x", "suffix": " y"}], "no 'id' field"),
        ([{"id": "a", "prompt": "x"}], "'a'.*no suffix/completion"),
        ([{"id": "a", "question": "x"}], "'a'.*needs prefix/suffix, prompt/completion, text"),
    ],
)
def test_bad_rows_give_clear_errors(tok, rows, match):
    with pytest.raises(ProbeError, match=match):
        load_probes(rows, tok)


def test_bad_files_name_file_and_line(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_probes(tmp_path / "missing.jsonl", tok)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prefix": "x", "suffix": " y"}\n{not json}\n')
    with pytest.raises(ProbeError, match=r"bad.jsonl:2: not valid JSON"):
        load_probes(bad, tok)


def test_too_long_probes_name_the_id_or_are_truncated(tok):
    probes = load_probes(
        [
            {"id": "short", "prefix_ids": [1, 2], "suffix_ids": [3]},
            {"id": "long-one", "prefix_ids": list(range(10)), "suffix_ids": [3, 4]},
        ]
    )
    with pytest.raises(ProbeError, match="'long-one' is 12 tokens.*context of 8"):
        probes.check_fits(8)
    fitted = probes.check_fits(8, truncate=True)
    assert fitted["long-one"].prefix_ids == [4, 5, 6, 7, 8, 9] and fitted["long-one"].suffix_ids == [3, 4]
    assert fitted["short"].input_ids == [1, 2, 3]
    with pytest.raises(ProbeError, match="'long-one'"):
        probes.check_fits(2, truncate=True)  # the suffix alone does not fit: truncation cannot help
    with pytest.raises(ProbeError, match="'long-one' has token ids \\[9\\] outside the vocabulary"):
        probes.check_vocab(9)


def test_probeset_subset_and_unknown_ids(tok):
    probes = ProbeSet(load_probes([{"id": i, "prefix_ids": [1], "suffix_ids": [2]} for i in "abc"]))
    assert probes.subset(["c", "a"]).ids == ["c", "a"]
    with pytest.raises(ProbeError, match="unknown probe ids \\['z'\\]"):
        probes.subset(["z"])


def test_tokenizer_without_pad_falls_back_to_eos_with_warning(memorized_gpt2, tmp_path):
    texts = [r["prompt"] + r["completion"] for r in corpus_tokenizer()[0].train]
    train_tokenizer(texts, vocab_size=512, with_pad=False).save_pretrained(tmp_path / "nopad")
    with pytest.warns(UserWarning, match="no pad token; using its eos token"):
        loaded = load_tokenizer(tmp_path / "nopad")
    assert loaded.pad_token_id == loaded.eos_token_id is not None
    # score_probes does the same fallback for a tokenizer built in memory.
    nopad = train_tokenizer(texts, vocab_size=512, with_pad=False)
    probes = load_probes([{"id": "a", "prefix": "Fact. The flag of", "suffix": " Riverton"}], nopad)
    with pytest.warns(UserWarning, match="no pad token"):
        rows = score_probes(memorized_gpt2.model, nopad, probes)
    assert rows[0]["suffix_length"] == len(probes[0].suffix_ids)
