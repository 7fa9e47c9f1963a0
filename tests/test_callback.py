"""MemorizationCallback pieces: flag rule, budget, sharding, SFT probe tokenization, input checks."""

from __future__ import annotations

import json

import pytest
import torch

from obliviate.callbacks import MemorizationBudget, MemorizationCallback, TrackConfig, TrackingError
from obliviate.callbacks.distributed import shard_bounds
from obliviate.config import RecipeError, from_dict
from obliviate.data import Probe, ProbeError, ProbeSet, read_jsonl
from obliviate.data.sft import probes_from_sft_rows
from tests.ddp_worker import sft_data, sft_probes, sft_trainer


def test_budget_validation_and_limits():
    # The flag rule's own tests are in tests/test_flag_rule.py.
    with pytest.raises(ValueError, match="max_extraction_rate"):
        MemorizationBudget(max_extraction_rate=2.0)
    budget = MemorizationBudget(max_extraction_rate=0.1, max_flagged=3, max_tail_p99=4)
    assert budget.check({"extraction_rate": 0.05, "tail/prefix_match_length/p99": 2.0}, 3) is None
    assert "max_extraction_rate" in budget.check({"extraction_rate": 0.2}, 0)
    assert "max_flagged" in budget.check({"extraction_rate": 0.0}, 4)
    assert "max_tail_p99" in budget.check({"tail/prefix_match_length/p99": 5.0}, 0)
    assert not MemorizationBudget().active


def test_track_config_nested_sections_and_errors():
    cfg = from_dict(
        TrackConfig,
        {"every_n_steps": "20", "flag_rule": {"control_ma_percentile": 95}, "budget": {"max_flagged": 5}},
        "tracking",
    )
    assert cfg.every_n_steps == 20 and cfg.flag_rule.control_ma_percentile == 95 and cfg.budget.max_flagged == 5
    with pytest.raises(RecipeError, match="Did you mean 'control_ma_percentile'"):
        from_dict(TrackConfig, {"flag_rule": {"control_ma_percentil": 95}}, "tracking")
    with pytest.raises(RecipeError, match="every_n_steps"):
        from_dict(TrackConfig, {"every_n_steps": 0}, "tracking")
    with pytest.raises(RecipeError, match="unknown metrics"):
        from_dict(TrackConfig, {"metrics": ["memorisation_accuracy"]}, "tracking")


def test_shard_bounds_cover_in_order():
    for n, world in [(10, 3), (2, 4), (0, 2), (7, 1)]:
        bounds = shard_bounds(n, world)
        assert len(bounds) == world and bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(e - s for s, e in bounds) - min(e - s for s, e in bounds) <= 1


def test_sft_probes_are_the_trained_tokens(tmp_path):
    """prefix+suffix+eos is exactly SFTTrainer's input_ids, and the suffix+eos exactly its loss tokens."""
    tokenizer, rows, _ = sft_data()
    trainer = sft_trainer(tmp_path)
    probes = probes_from_sft_rows(rows, tokenizer, include_eos=True)
    prepared = {tuple(ex["input_ids"]): ex["labels"] for ex in trainer.train_dataset}
    assert len(prepared) == len(probes)
    for probe in probes:
        labels = prepared[tuple(probe.prefix_ids + probe.suffix_ids)]
        assert [t for t in labels if t != -100] == probe.suffix_ids
        assert probe.suffix_ids[-1] == tokenizer.eos_token_id
    # Without the eos (the default) the probes equal load_probes' separate tokenization on this corpus.
    from obliviate.data import load_probes

    plain = probes_from_sft_rows(rows[:10], tokenizer)
    separate = load_probes([{"id": p.id, **r} for p, r in zip(plain, rows[:10])], tokenizer)
    assert [(p.prefix_ids, p.suffix_ids) for p in plain] == [(p.prefix_ids, p.suffix_ids) for p in separate]


def test_sft_probes_collapse_repetitions_and_text_rows():
    tokenizer, _, probe_rows = sft_data()
    train_like = [
        {"id": "canary-x8-0#0", "prompt": "P is", "completion": " 1 2"},
        {"id": "canary-x8-0#1", "prompt": "P is", "completion": " 1 2"},
        {"id": "m", "prompt": "Q is", "completion": " 3"},
    ]
    probes = probes_from_sft_rows(train_like, tokenizer)
    assert probes.ids == ["canary-x8-0", "m"]
    assert probes["canary-x8-0"].meta["repetitions"] == 2 and probes["m"].role == "member"
    controls = probes_from_sft_rows(probe_rows[-3:], tokenizer, role="control")
    assert {p.role for p in controls} == {"control"}
    text = probes_from_sft_rows(
        [{"text": "Fact. The flag of Riverton is red and blue."}], tokenizer, prefix_tokens=4, suffix_tokens=3
    )
    assert len(text[0].prefix_ids) == 4 and len(text[0].suffix_ids) == 3 and text.ids == ["train-00000"]
    with pytest.raises(ProbeError, match="neither prompt/completion"):
        probes_from_sft_rows([{"id": "x", "body": "hi"}], tokenizer)


@pytest.fixture(scope="module")
def bare_trainer(tmp_path_factory):
    return sft_trainer(tmp_path_factory.mktemp("bare"), max_steps=2)


def test_bad_inputs_fail_before_training(bare_trainer, tmp_path):
    probes = sft_probes()
    for bad in (0, -5, 2.5, True):
        with pytest.raises(TrackingError, match="every_n_steps"):
            MemorizationCallback(bare_trainer, probes, every_n_steps=bad)
    vocab = bare_trainer.model.get_input_embeddings().num_embeddings
    outside = ProbeSet([Probe("alien", "member", [1, 2], [vocab + 3])])
    with pytest.raises(ProbeError, match="alien.*outside the vocabulary"):
        MemorizationCallback(bare_trainer, outside)
    long_probe = ProbeSet([Probe("long", "member", [5] * 120, [6] * 20)])
    with pytest.raises(ProbeError, match="long.*longer than the model's context"):
        MemorizationCallback(bare_trainer, long_probe)
    bare_trainer.args.max_length = 16
    try:
        with pytest.raises(TrackingError, match="max_length=16"):
            MemorizationCallback(bare_trainer, ProbeSet([Probe("p", "member", [5] * 12, [6] * 8)]))
    finally:
        bare_trainer.args.max_length = 1024
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(TrackingError, match="cannot write"):
        MemorizationCallback(bare_trainer, probes, output_dir=str(blocker))
    with pytest.raises(TrackingError, match="no probes"):
        MemorizationCallback(bare_trainer, ProbeSet([]))
    with pytest.raises(TrackingError, match="unknown metrics"):
        MemorizationCallback(bare_trainer, probes, metrics=["MA"])


def test_config_object_tracks_exactly_as_the_keywords(bare_trainer, tmp_path):
    """config=TrackConfig(...) (the way a TRL trainer takes args) scores, flags and logs what the same
    settings given as keywords do; a recipe's tracking: section is that TrackConfig."""
    from obliviate.callbacks import FlagRule
    from obliviate.metrics import SamplingConfig

    rule = FlagRule(control_ma_percentile=50, min_controls=5, min_ma_gain=None)
    by_config = MemorizationCallback(
        bare_trainer,
        sft_probes(),
        output_dir=str(tmp_path / "a"),
        config=TrackConfig(
            every_n_steps=7,
            batch_size=5,
            metrics=["loss", "memorization_accuracy"],
            flag_rule=rule,
            samples=13,
            temperature=0.7,
            min_k=0.5,
        ),
    )
    by_keywords = MemorizationCallback(
        bare_trainer,
        sft_probes(),
        output_dir=str(tmp_path / "b"),
        every_n_steps=7,
        batch_size=5,
        metrics=["loss", "memorization_accuracy"],
        flag_rule=rule,
        sampling=SamplingConfig(n=13, temperature=0.7),
        min_k=0.5,
    )
    assert by_config.config == by_keywords.config
    assert (by_config.every_n_steps, by_config.batch_size, by_config.sampling.n, by_config.min_k) == (7, 5, 13, 0.5)
    logs = [c.evaluate(bare_trainer.state, bare_trainer.control) for c in (by_config, by_keywords)]
    assert {k: v for k, v in logs[0].items() if k != "memorization/seconds"} == {
        k: v for k, v in logs[1].items() if k != "memorization/seconds"
    }
    assert logs[0]["memorization/flagged"] > 0, "the loose rule must flag something for the comparison to mean much"
    assert by_config.flagged == by_keywords.flagged
    histories = [read_jsonl(tmp_path / d / "memorization" / "history.jsonl") for d in ("a", "b")]
    assert histories[0] == histories[1] and "loss" in histories[0][0] and "min_k" not in histories[0][0]
    # Not the defaults: the keywords reached the scorer (13 samples, T=0.7 are in the flag meta).
    meta = json.loads((tmp_path / "a" / "memorization" / "flagged.meta.json").read_text())
    assert meta["thresholds"]["sampling"] == {"n": 13, "temperature": 0.7, "top_k": None, "top_p": None}


def test_a_keyword_and_a_config_together_is_an_error(bare_trainer):
    with pytest.raises(TrackingError, match=r"every_n_steps, batch_size given both as keywords and in config="):
        MemorizationCallback(
            bare_trainer, sft_probes(), config=TrackConfig(every_n_steps=5), every_n_steps=5, batch_size=4
        )
    with pytest.raises(TrackingError, match="config must be a TrackConfig"):
        MemorizationCallback(bare_trainer, sft_probes(), config={"every_n_steps": 5})
    # The checks are TrackConfig's own, whichever way the settings come.
    with pytest.raises(TrackingError, match="every_n_steps must be a positive number"):
        MemorizationCallback(bare_trainer, sft_probes(), config=TrackConfig(every_n_steps=0))
    with pytest.raises(TrackingError, match="batch_size must be a positive integer"):
        MemorizationCallback(bare_trainer, sft_probes(), batch_size=0)
    # None is a value (no step-based scoring), not "left out".
    assert MemorizationCallback(bare_trainer, sft_probes(), every_n_steps=None).every_n_steps is None


def test_evaluate_restores_modes_and_trainer_logging(bare_trainer, tmp_path):
    model = bare_trainer.model
    model.train()
    model.transformer.h[0].eval()  # a mixed state must come back as it was, not as model.train()
    modes = [m.training for m in model.modules()]
    params = [p.detach().clone() for p in model.parameters()]
    callback = MemorizationCallback(bare_trainer, sft_probes(), output_dir=str(tmp_path), metrics=["loss"])
    control = bare_trainer.control
    control.should_log = True
    logs = callback.evaluate(bare_trainer.state, control)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert control.should_log, "the trainer's own log at this step must not be swallowed"
    assert logs["memorization/count/control"] == 16 and "memorization/auc/min_k" in logs
    assert bare_trainer.state.log_history[-1]["memorization/count/canary"] == 8
    history = read_jsonl(tmp_path / "memorization" / "history.jsonl")
    assert len(history) == len(callback.probes)
    # The asked-for metric, the probe's group, what the flag rule reads and (at step 0) the baseline fields.
    assert set(history[0]) == {
        "step",
        "epoch",
        "id",
        "role",
        "group",
        "loss",
        "memorization_accuracy",
        "exact_extraction",
        "extraction_probability",
        "suffix_log_prob",
    }
    assert {r["group"] for r in history} == {"pin", "record"}
    # Scores are score_probes' own, on the unwrapped model.
    from obliviate.metrics import score_probes

    direct = score_probes(model, bare_trainer.processing_class, callback.probes)
    assert [r["loss"] for r in history] == pytest.approx([r["loss"] for r in direct], abs=1e-6)
    assert callback.evaluate(bare_trainer.state, control) is None  # once per step


def test_sft_probes_conversational_match_trainer(tmp_path):
    """Chat-templated prompt/completion and messages rows: the probe ids are the trainer's ids."""
    import copy

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tests.ddp_worker import fresh_model

    tokenizer, rows, _ = sft_data()
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    chats = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "completion": [{"role": "assistant", "content": r["completion"]}],
        }
        for r in rows
        if r["prompt"].startswith("Support")
    ][:12]  # distinct rows: one probe each
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        use_cpu=True,
        bf16=False,
        report_to="none",
        activation_checkpointing=False,
    )
    trainer = SFTTrainer(
        model=fresh_model(tokenizer), args=args, train_dataset=Dataset.from_list(chats), processing_class=tokenizer
    )
    probes = probes_from_sft_rows(chats, tokenizer)
    messages = probes_from_sft_rows([{"messages": c["prompt"] + c["completion"]} for c in chats], tokenizer)
    for probe, other, example in zip(probes, messages, trainer.train_dataset):
        assert probe.prefix_ids + probe.suffix_ids == example["input_ids"]
        assert [t for t in example["labels"] if t != -100] == probe.suffix_ids
        assert (other.prefix_ids, other.suffix_ids) == (probe.prefix_ids, probe.suffix_ids)
        assert probe.prefix.endswith("[assistant]")


def test_plain_trainer_without_processing_class_finds_the_tokenizer(tmp_path):
    """Issue 11 item 13: the tokenizer given only to the data collator, as many scripts do."""
    from datasets import Dataset
    from transformers import (
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    from tests.ddp_worker import fresh_model

    tokenizer, rows, probe_rows = sft_data()
    data = Dataset.from_list([{"text": r["prompt"] + r["completion"]} for r in rows[:8]])
    data = data.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True
    )

    def trainer(collator):
        return Trainer(model=fresh_model(tokenizer), args=args, train_dataset=data, data_collator=collator)

    with_collator = trainer(DataCollatorForLanguageModeling(tokenizer, mlm=False))
    assert with_collator.processing_class is None
    # From the collator, with probes given as rows (they carry no tokenizer of their own).
    callback = MemorizationCallback(with_collator, probe_rows)
    assert callback.tokenizer is tokenizer and len(callback.probes) == len(probe_rows)
    # From the ProbeSet that probes_from_sft_rows built with this tokenizer, with a collator that has none.
    bare = trainer(default_data_collator)
    probes = probes_from_sft_rows(probe_rows, tokenizer)
    assert MemorizationCallback(bare, probes).tokenizer is tokenizer
    with pytest.raises(TrackingError, match="no tokenizer.*processing_class"):
        MemorizationCallback(bare, probe_rows)
    assert MemorizationCallback(bare, probe_rows, tokenizer=tokenizer).tokenizer is tokenizer
