"""flagged.jsonl I/O: ids must agree with the tokenizer however the probe was tokenized."""

from __future__ import annotations

import json

import pytest

from obliviate.data import ProbeError, load_probes
from obliviate.data.flagged import append_flagged, flagged_row, read_flagged
from obliviate.data.sft import probes_from_sft_rows
from obliviate.toy import train_tokenizer
from tests.helpers import corpus_tokenizer


def _write(path, rows):
    append_flagged(path, rows)
    return path


def test_roundtrip_of_separately_tokenized_probes(tmp_path):
    corpus, tok = corpus_tokenizer()
    probes = load_probes(corpus.probes[:5], tok)
    path = _write(tmp_path / "flagged.jsonl", [flagged_row(p, 3, "exact_extraction", {"loss": 0.1}) for p in probes])
    back = read_flagged(path, tok)
    assert back.ids == probes.ids
    assert [p.input_ids for p in back] == [p.input_ids for p in probes]
    assert json.loads(path.read_text().splitlines()[0])["step"] == 3


def test_sft_style_joint_tokenization_is_accepted(tmp_path):
    # " abc" is one token, so SFTTrainer's joint tokenization of "xx ab" + "c yy" differs from
    # tokenizing prompt and completion apart: the file must still read back with this tokenizer.
    tok = train_tokenizer(["xx abc yy " * 50, "xx ab c yy", "q r s"], vocab_size=300)
    row = {"id": "joint-0", "role": "member", "prompt": "xx ab", "completion": "c yy"}
    joint = probes_from_sft_rows([row], tok)
    separate = load_probes([row], tok)
    assert joint[0].input_ids != separate[0].input_ids
    path = _write(tmp_path / "flagged.jsonl", [flagged_row(p, 1, "exact_extraction", {}) for p in joint])
    back = read_flagged(path, tok)
    assert back[0].prefix_ids == joint[0].prefix_ids and back[0].suffix_ids == joint[0].suffix_ids


def test_other_tokenizer_is_refused(tmp_path):
    corpus, tok = corpus_tokenizer()
    other = train_tokenizer(["completely different text " * 20, "zzz yyy xxx"], vocab_size=300)
    probes = load_probes(corpus.probes[:3], other)
    path = _write(tmp_path / "flagged.jsonl", [flagged_row(p, 1, "exact_extraction", {}) for p in probes])
    with pytest.raises(ProbeError, match="different tokenizer"):
        read_flagged(path, tok)


def test_empty_and_missing_files(tmp_path):
    _, tok = corpus_tokenizer()
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ProbeError, match="nothing to erase"):
        read_flagged(tmp_path / "empty.jsonl", tok)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_flagged(tmp_path / "absent.jsonl", tok)
