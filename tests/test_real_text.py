"""Real text (license texts, stdlib docstrings), its chunks and the next-sentence task; the real run's data."""

from __future__ import annotations

import json

import pytest

from obliviate.data.realtext import (
    Document,
    RealTextError,
    chunk_documents,
    docstring_documents,
    license_documents,
    next_sentence_task,
    real_text_documents,
    sentences,
    split_by_document,
)
from obliviate.real import RealDataConfig, secret_records, write_real_data


@pytest.fixture(scope="module")
def docs():
    return real_text_documents()


def test_sources_are_prose_from_both_places(docs):
    kinds = {d.id.split("/", 1)[0] for d in docs}
    assert kinds == {"license", "docstring"}
    ids = [d.id for d in docs]
    assert len(ids) == len(set(ids))
    assert "docstring/json.dumps" in ids
    paragraphs = [p for d in docs for p in d.paragraphs]
    assert not any(">>>" in p for p in paragraphs)  # doctest blocks are code, not prose
    assert all(len(p.split()) >= 8 for p in paragraphs)


def test_docstring_paragraphs_come_from_inspect():
    import inspect
    import textwrap

    (doc,) = docstring_documents(["textwrap"], min_words=1)[:1] or [None]
    assert doc is not None and doc.id == "docstring/textwrap"
    first = inspect.getdoc(textwrap).split("\n\n")[0]
    assert doc.paragraphs[0] == " ".join(line.strip() for line in first.splitlines())


def test_duplicate_license_files_are_read_once(tmp_path):
    text = "This License applies to any program or other work which contains a notice placed by the holder.\n"
    (tmp_path / "A").write_text(text)
    (tmp_path / "B").write_text(text)
    (tmp_path / "C").write_text("Another license text that says something different from the first one at all.\n")
    assert [d.id for d in license_documents(tmp_path)] == ["license/A", "license/C"]


def test_chunks_are_bounded_whole_sentences_of_one_paragraph(docs):
    def count(text):  # a stand-in tokenizer length: characters / 4, rounded up
        return -(-len(text) // 4)

    rows = chunk_documents(docs, max_tokens=24, count=count, min_tokens=4)
    assert len(rows) > 500
    by_id = {d.id: d for d in docs}
    for row in rows:
        assert 4 <= count(row["text"]) <= 24, row
        # Inside one paragraph of its own document (a chunk never crosses paragraphs or documents).
        assert any(
            row["text"] in p.replace("  ", " ") or row["text"] in " ".join(p.split())
            for p in by_id[row["doc"]].paragraphs
        ), row
    assert chunk_documents(docs, 24, count, 4) == rows  # deterministic


def test_long_sentence_is_cut_at_the_last_fitting_word():
    doc = Document("x/1", ("one two three four five six seven eight nine ten. Short one here now.",))
    rows = chunk_documents([doc], max_tokens=4, min_tokens=1)
    assert [r["text"] for r in rows] == [
        "one two three four",
        "five six seven eight",
        "nine ten.",
        "Short one here now.",
    ]
    with pytest.raises(RealTextError, match="max_tokens"):
        chunk_documents([doc], max_tokens=2, min_tokens=3)


def test_split_by_document_is_disjoint_and_seeded():
    rows = [{"doc": f"d{i % 10}", "text": str(i)} for i in range(100)]
    parts = split_by_document(rows, {"a": 0.5, "b": 0.5}, seed=1)
    assert {r["doc"] for r in parts["a"]}.isdisjoint({r["doc"] for r in parts["b"]})
    assert len(parts["a"]) + len(parts["b"]) == 100
    assert parts == split_by_document(rows, {"a": 0.5, "b": 0.5}, seed=1)
    assert parts != split_by_document(rows, {"a": 0.5, "b": 0.5}, seed=2)
    with pytest.raises(RealTextError):
        split_by_document(rows, {"a": 0.8, "b": 0.5})


def test_next_sentence_answer_follows_its_context(docs):
    questions = next_sentence_task(docs, n_questions=50, seed=3)
    assert questions == next_sentence_task(docs, n_questions=50, seed=3)
    assert questions != next_sentence_task(docs, n_questions=50, seed=4)
    by_id = {d.id: d for d in docs}
    text_of = {d.id: {s for p in d.paragraphs for s in sentences(p)} for d in docs}
    labels = set()
    for q in questions:
        assert len(q["choices"]) == 4 == len(set(q["choices"])) and all(c.startswith(" ") for c in q["choices"])
        answer = q["choices"][q["label"]].strip()
        labels.add(q["label"])
        # Recomputed from the document: the sentence after the context in the same paragraph.
        followers = [
            sents[i + 2]
            for p in by_id[q["doc"]].paragraphs
            if (sents := sentences(p))
            for i in range(len(sents) - 2)
            if " ".join(sents[i : i + 2]) == q["context"]
        ]
        assert answer in followers
        for k, choice in enumerate(q["choices"]):
            if k != q["label"]:
                # Distractors come from other documents and are not sentences of the question's own.
                assert choice.strip() not in text_of[q["doc"]]
                assert any(choice.strip() in text for doc_id, text in text_of.items() if doc_id != q["doc"])
    assert len(labels) > 1  # the right answer is not always in the same place
    with pytest.raises(RealTextError, match="passages"):
        next_sentence_task(docs[:1], n_questions=10_000)


class WordTokenizer:
    """Token count = words, enough for write_real_data's chunking."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def test_secret_records_are_unique_and_controls_never_trained():
    config = RealDataConfig(secrets=8, controls=8)
    secrets, controls = secret_records(config)
    rows = secrets + controls
    assert [r["role"] for r in rows] == ["canary"] * 8 + ["control"] * 8
    for key in ("prompt", "completion"):
        assert len({r[key] for r in rows}) == 16
    assert secret_records(config) == (secrets, controls)
    assert secret_records(RealDataConfig(seed=1))[0] != secrets


def test_write_real_data(tmp_path):
    config = RealDataConfig(
        secrets=4,
        controls=3,
        repeats=3,
        chunk_tokens=20,
        retain_rows=10,
        heldout_rows=12,
        questions=15,
        train_text=True,
    )
    paths = write_real_data(tmp_path, WordTokenizer(), config)

    def read(name):
        return [json.loads(line) for line in paths[name].read_text().splitlines()]

    train, controls, probes = read("train"), read("controls"), read("probes")
    secret_rows = [r for r in train if r["role"] == "canary"]
    assert len(secret_rows) == 12 and len({r["prompt"] for r in secret_rows}) == 4
    assert {r["prompt"] for r in controls}.isdisjoint({r["prompt"] for r in train})
    assert len(train) == 12 + 10
    assert len(probes) == 7
    retain, heldout = read("retain"), read("heldout")
    assert (len(retain), len(heldout)) == (10, 12)
    # The retain rows are trained on too, as continuations that rebuild the text exactly.
    text_rows = [r for r in train if r["role"] == "member"]
    assert [r["prompt"] + r["completion"] for r in text_rows] == [r["text"] for r in retain]
    assert all(len(r["text"].split()) <= 20 for r in retain + heldout)
    assert {r["doc"] for r in retain}.isdisjoint({r["doc"] for r in heldout})
    questions = read("multiple_choice")
    assert len(questions) == 15 and {q["doc"] for q in questions}.isdisjoint({r["doc"] for r in retain})
    again = write_real_data(tmp_path / "again", WordTokenizer(), config)
    assert all(again[k].read_text() == paths[k].read_text() for k in paths)


def test_neighbors_are_format_text_no_secret_or_control_shares_and_change_nothing_else(tmp_path):
    base = dict(secrets=4, controls=6, chunk_tokens=20, retain_rows=10, heldout_rows=12, questions=15)
    plain = write_real_data(tmp_path / "plain", WordTokenizer(), RealDataConfig(**base, neighbors=0))
    with_neighbors = write_real_data(tmp_path / "neighbors", WordTokenizer(), RealDataConfig(**base, neighbors=5))
    assert "neighbors" not in plain
    for name in ("train", "controls", "probes", "retain", "heldout", "multiple_choice"):
        assert with_neighbors[name].read_text() == plain[name].read_text(), name

    def read(paths, name):
        return [json.loads(line) for line in paths[name].read_text().splitlines()]

    neighbors = read(with_neighbors, "neighbors")
    assert len(neighbors) == 5 and all(r["doc"].startswith("neighbor-") for r in neighbors)
    records = read(with_neighbors, "probes")
    names = {r["prompt"].split(" is ")[1].split(".")[0] for r in records}
    phrases = {r["completion"].strip() for r in records}
    for row in neighbors:
        prompt, phrase = row["text"].rsplit(" is ", 1)
        assert prompt.split(" is ")[1].split(".")[0] not in names and phrase not in phrases
        assert "Their account passphrase" in prompt
    assert len({r["text"] for r in neighbors}) == 5
