"""The flag rule on models trained for real: predictable members are not flagged, a memorized secret is;
groups without enough controls are judged by absolute evidence, and the run says so."""

from __future__ import annotations

import json
import logging
import random

import pytest
import torch

from obliviate.callbacks import FlagRule, MemorizationCallback
from obliviate.data import Probe, ProbeSet, load_probes, read_jsonl
from obliviate.data.synthetic import canary_prompt, canary_secret
from obliviate.metrics import score_probes
from tests.ddp_worker import sft_probes, sft_trainer
from tests.helpers import corpus_tokenizer, tiny_model, train_on


@pytest.fixture(scope="module")
def predictable_members():
    """The issue's setup, ungrouped: a base model that knows the record format, members of that format trained
    about three times each (predictable, not memorized), one PIN secret trained ~170 times, and never-trained
    controls that are PINs -- another format than the members. Here the members' largest MA gain is 0.30 (the
    rule needs 0.5) and the secret goes from MA 0 to 1: margins of two tokens and more, not a lucky seed."""
    corpus, tokenizer = corpus_tokenizer()
    model = tiny_model("gpt2", tokenizer)
    train_on(model, tokenizer, [r["text"] for r in corpus.pretrain], steps=100)
    rng = random.Random(7)
    members = [
        {"id": r["id"], "role": "member", "prompt": r["prompt"], "completion": r["completion"]}
        for r in corpus.probes
        if r["role"] == "member"
    ]
    secret = {
        "id": "secret",
        "role": "canary",
        "prompt": canary_prompt("Ada Lovelace Q."),
        "completion": " " + canary_secret(rng, 6),
    }
    controls = [
        {
            "id": f"pin-control-{i}",
            "role": "control",
            "prompt": canary_prompt(f"Person{i} Z."),
            "completion": " " + canary_secret(rng, 6),
        }
        for i in range(16)
    ]
    probes = load_probes([*members, secret, *controls], tokenizer)
    baseline = score_probes(model, tokenizer, probes)
    texts = [m["prompt"] + m["completion"] for m in members] + [secret["prompt"] + secret["completion"]] * 80
    train_on(model, tokenizer, texts, steps=16, seed=1)
    return baseline, score_probes(model, tokenizer, probes)


def test_predictable_members_not_flagged_memorized_secret_is(predictable_members):
    baseline, final = predictable_members
    baselines = {r["id"]: r for r in baseline}
    members = [r for r in final if r["role"] == "member"]
    # The members are not memorized: none is extractable by greedy decoding or by 100 samples.
    assert not [r for r in members if r["exact_extraction"] or r["extraction_probability"] >= 0.5]
    # ...yet many are more predictable than the secret-format controls: the old rule flags them (the issue; 17/40).
    old = FlagRule(min_ma_gain=None).apply(final)[0]
    assert sum(old.get(r["id"]) == "control_relative_ma" for r in members) >= len(members) // 4
    # Calibrated by each probe's own step-0 score, no member is flagged; the memorized secret is.
    flags = FlagRule().apply(final, baselines)[0]
    assert flags == {"secret": flags["secret"]}
    # The calibrated criterion alone finds it too: it is not only the absolute evidence that does.
    alone = FlagRule(exact_extraction=False, min_extraction_probability=None).apply(final, baselines)[0]
    assert alone == {"secret": "control_relative_ma"}


def test_text_the_base_model_already_predicts_is_not_flagged(predictable_members):
    baseline, final = predictable_members
    baselines = {r["id"]: r for r in baseline}
    result = FlagRule(exact_extraction=False, min_extraction_probability=None).apply(final, baselines)
    threshold = result.groups[None].control_ma_threshold
    # Members the base model predicted better than the controls' threshold before any fine-tuning.
    known = [r for r in final if r["role"] == "member" and baselines[r["id"]]["memorization_accuracy"] > threshold]
    assert len(known) >= 3  # 7 here
    # They still beat the controls after fine-tuning (the uncalibrated rule flags them), but gained too little.
    still_above = [r for r in known if r["memorization_accuracy"] > threshold]
    assert still_above and not [r for r in known if r["id"] in result.flags]
    assert all(r["memorization_accuracy"] - baselines[r["id"]]["memorization_accuracy"] < 0.5 for r in still_above)


def _ungrouped(probes: ProbeSet) -> ProbeSet:
    return ProbeSet(
        Probe(
            p.id,
            p.role,
            p.prefix_ids,
            p.suffix_ids,
            p.prefix,
            p.suffix,
            {k: v for k, v in p.meta.items() if k != "group"},
        )
        for p in probes
    )


def test_group_with_few_controls_warns_and_meta_says_absolute(tmp_path, caplog):
    probes = sft_probes()  # groups pin and record, 8 never-trained controls each
    trainer = sft_trainer(tmp_path / "grouped", max_steps=2)
    callback = MemorizationCallback(trainer, probes, every_n_steps=1)
    trainer.add_callback(callback)
    with caplog.at_level(logging.WARNING, logger="obliviate.callbacks.memorization"):
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if "judged by absolute evidence" in r.getMessage()]
    assert len(warnings) == 2 and any("group pin has 8 controls" in w for w in warnings), warnings
    assert (tmp_path / "grouped" / "memorization" / "flagged.jsonl").is_file()  # empty until a flag is made
    meta = json.loads((tmp_path / "grouped" / "memorization" / "flagged.meta.json").read_text())
    for group in ("pin", "record"):
        assert meta["groups"][group]["controls"] == 8 and meta["groups"][group]["judged_by"] == "absolute"
        assert "fewer than min_controls=10" in meta["groups"][group]["why"]
    assert meta["thresholds"]["min_ma_gain"] == 0.5
    logs = [e for e in trainer.state.log_history if "memorization/flagged" in e]
    assert logs and not [k for k in logs[-1] if k.startswith("memorization/control_ma_threshold")]

    # The same probes without groups: 16 ungrouped controls calibrate the ungrouped probes, no warning.
    caplog.clear()
    trainer = sft_trainer(tmp_path / "ungrouped", max_steps=2)
    trainer.add_callback(MemorizationCallback(trainer, _ungrouped(probes), every_n_steps=1))
    with caplog.at_level(logging.WARNING, logger="obliviate.callbacks.memorization"):
        trainer.train()
    assert "judged by absolute evidence" not in caplog.text
    meta = json.loads((tmp_path / "ungrouped" / "memorization" / "flagged.meta.json").read_text())
    assert list(meta["groups"]) == ["null"]
    assert meta["groups"]["null"]["controls"] == 16 and meta["groups"]["null"]["judged_by"] == "controls"
    logs = [e for e in trainer.state.log_history if "memorization/flagged" in e]
    history = read_jsonl(tmp_path / "ungrouped" / "memorization" / "history.jsonl")
    controls = [r["memorization_accuracy"] for r in history if r["step"] == 2 and r["role"] == "control"]
    expected = float(torch.tensor(controls, dtype=torch.float64).quantile(0.99))
    assert logs[-1]["memorization/control_ma_threshold/null"] == pytest.approx(expected)
    assert meta["groups"]["null"]["control_ma_threshold"] == pytest.approx(expected)


def test_reference_model_is_the_baseline(tmp_path):
    """With a reference model the baselines are its scores (scored once at train begin), not step-0 scores."""
    probes = sft_probes()
    trainer = sft_trainer(tmp_path, max_steps=2)
    reference = tiny_model("gpt2", trainer.processing_class, seed=3).eval()  # another init than the trained model
    callback = MemorizationCallback(trainer, probes, every_n_steps=1, reference_model=reference)
    trainer.add_callback(callback)
    trainer.train()
    expected = score_probes(reference, trainer.processing_class, probes)
    assert callback.baselines == {
        r["id"]: {
            "memorization_accuracy": r["memorization_accuracy"],
            "suffix_log_prob": pytest.approx(r["suffix_log_prob"], abs=1e-4),
        }
        for r in expected
    }
    history = read_jsonl(tmp_path / "memorization" / "history.jsonl")
    assert sorted({r["step"] for r in history}) == [1, 2]  # no step-0 scoring of the model itself
    meta = json.loads((tmp_path / "memorization" / "flagged.meta.json").read_text())
    assert meta["baseline"] == {"source": "reference model", "probes": len(probes)}
