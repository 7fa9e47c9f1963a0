"""MemorizationCallback in real training: SFTTrainer, Trainer on text, LoRA, accumulation, resume, budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from obliviate.callbacks import FlagRule, MemorizationBudget, MemorizationCallback
from obliviate.data import read_jsonl
from obliviate.data.flagged import read_flagged
from tests.ddp_worker import sft_data, sft_probes, sft_trainer


def read_rows(path: Path) -> list[dict]:
    return read_jsonl(path)


def memorization_logs(trainer) -> list[dict]:
    return [e for e in trainer.state.log_history if "memorization/flagged" in e]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """80 steps of SFT with TensorBoard reporting: enough for the tiny model to memorize its 8x canaries."""
    out = tmp_path_factory.mktemp("sft")
    trainer = sft_trainer(out, max_steps=80, report_to=["tensorboard"], logging_steps=10)
    callback = MemorizationCallback(trainer, sft_probes(), every_n_steps=20)
    trainer.add_callback(callback)
    trainer.train()
    return trainer, callback, out


def test_canary_8x_flagged_and_no_control_ever(sft_run):
    trainer, callback, out = sft_run
    flagged = read_rows(out / "memorization" / "flagged.jsonl")
    ids = [r["id"] for r in flagged]
    assert len(ids) == len(set(ids)), "a probe was flagged twice"
    assert {"canary-x8-0", "canary-x8-1"} <= set(ids)
    assert not [r for r in flagged if r["role"] == "control"]
    history = read_rows(out / "memorization" / "history.jsonl")
    # Really memorized, not only above the controls: at the end each 8x canary meets an absolute criterion
    # (greedy decoding gives it back, or 100 samples do with probability >= 1/2).
    rule = FlagRule()
    last = [r for r in history if r["step"] == 80 and r["id"].startswith("canary-x8")]
    assert len(last) == 2 and all(rule.reason(r, None) for r in last), last
    # No control meets an absolute criterion at any step.
    assert not [r for r in history if r["role"] == "control" and rule.reason(r, None)]
    row = flagged[ids.index("canary-x8-0")]
    assert row["step"] in (20, 40, 60, 80) and row["reason"] in ("exact_extraction", "extraction_probability",
                                                                 "control_relative_ma")
    assert "extraction_probability@100" in row["metrics"] and row["prefix_ids"] and row["suffix"]
    meta = json.loads((out / "memorization" / "flagged.meta.json").read_text())
    assert meta["thresholds"]["control_ma_percentile"] == 99 and meta["flagged"] == len(ids)
    # Erasure reads the file back with the same tokenizer: text and ids agree.
    assert read_flagged(out / "memorization" / "flagged.jsonl", trainer.processing_class).ids == ids


def test_history_and_log_history(sft_run):
    trainer, callback, out = sft_run
    history = read_rows(out / "memorization" / "history.jsonl")
    steps = sorted({r["step"] for r in history})
    assert steps == [20, 40, 60, 80]
    assert len(history) == 4 * len(callback.probes)
    assert {"loss", "memorization_accuracy", "exact_extraction", "extraction_probability", "min_k",
            "prefix_match_length", "epoch"} <= set(history[0])
    logs = memorization_logs(trainer)
    assert [e["step"] for e in logs] == [20, 40, 60, 80]
    assert logs[-1]["memorization/canary/extraction_rate"] > logs[0]["memorization/canary/extraction_rate"]
    assert logs[-1]["memorization/flagged"] == len(callback.flagged)
    # The trainer's own loss logs survive at steps where the callback also logged.
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [10, 20, 30, 40, 50, 60, 70, 80]


def test_metrics_reach_tensorboard(sft_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, out = sft_run
    event_dirs = {p.parent for p in out.rglob("events.out.tfevents.*")}
    tags: dict[str, list] = {}
    for directory in event_dirs:
        acc = EventAccumulator(str(directory))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            tags.setdefault(tag, []).extend(acc.Scalars(tag))
    assert [e.step for e in tags["train/memorization/canary/extraction_rate"]] == [20, 40, 60, 80]
    assert "train/memorization/auc/min_k" in tags and "train/loss" in tags


def test_plain_trainer_on_text_every_epoch(tmp_path):
    """transformers.Trainer on plain text (prompt+completion as one string), scored per epoch only."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from tests.ddp_worker import fresh_model

    tokenizer, rows, _ = sft_data()
    texts = Dataset.from_list([{"text": r["prompt"] + r["completion"] + tokenizer.eos_token} for r in rows])
    data = texts.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=16,
                             learning_rate=5e-3, use_cpu=True, report_to="none", save_strategy="no",
                             logging_steps=50, disable_tqdm=True)
    trainer = Trainer(model=fresh_model(tokenizer), args=args, train_dataset=data,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                      processing_class=tokenizer)
    trainer.add_callback(MemorizationCallback(trainer, sft_probes(), every_n_steps=None, every_epoch=True))
    trainer.train()
    steps_per_epoch = -(-len(rows) // 16)
    history = read_rows(tmp_path / "memorization" / "history.jsonl")
    assert sorted({r["step"] for r in history}) == [steps_per_epoch, 2 * steps_per_epoch]
    assert [e["step"] for e in memorization_logs(trainer)] == [steps_per_epoch, 2 * steps_per_epoch]


def test_lora_sft(tmp_path):
    from peft import LoraConfig, PeftModel

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM", lora_dropout=0.0)
    trainer = sft_trainer(tmp_path, peft_config=lora, max_steps=6, learning_rate=1e-2)
    assert isinstance(trainer.model, PeftModel)
    callback = MemorizationCallback(trainer, sft_probes(), every_n_steps=3)
    trainer.add_callback(callback)
    trainer.train()
    history = read_rows(tmp_path / "memorization" / "history.jsonl")
    assert sorted({r["step"] for r in history}) == [3, 6]
    # Scored on the adapted model: the final rows are the PEFT model's scores, and they moved from step 3.
    from obliviate.metrics import score_probes

    final = score_probes(trainer.model, trainer.processing_class, callback.probes)
    assert [r["loss"] for r in history if r["step"] == 6] == pytest.approx([r["loss"] for r in final], abs=1e-5)
    assert [r["loss"] for r in history if r["step"] == 3] != pytest.approx([r["loss"] for r in final], abs=1e-4)


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    trainer = sft_trainer(tmp_path, max_steps=4, gradient_accumulation_steps=3, per_device_train_batch_size=4)
    trainer.add_callback(MemorizationCallback(trainer, sft_probes(), every_n_steps=2))
    trainer.train()
    assert trainer.state.global_step == 4
    history = read_rows(tmp_path / "memorization" / "history.jsonl")
    assert sorted({r["step"] for r in history}) == [2, 4]
    assert [e["step"] for e in memorization_logs(trainer)] == [2, 4]


def test_resume_continues_without_duplicates(tmp_path):
    probes = sft_probes()
    common = dict(max_steps=8, save_strategy="steps", save_steps=4, learning_rate=1e-2)
    first = sft_trainer(tmp_path, **common)
    first.add_callback(MemorizationCallback(first, probes, every_n_steps=2,
                                            flag_rule=FlagRule(control_ma_percentile=50)))
    first.train()
    mem = tmp_path / "memorization"
    before_history = read_rows(mem / "history.jsonl")
    before_flags = read_rows(mem / "flagged.jsonl")
    assert before_flags, "the relaxed rule should flag something in 8 steps"
    # As if the run had died after checkpoint-4: resume from it into the same directory.
    resumed = sft_trainer(tmp_path, **common)
    callback = MemorizationCallback(resumed, probes, every_n_steps=2, flag_rule=FlagRule(control_ma_percentile=50))
    resumed.add_callback(callback)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    history = read_rows(mem / "history.jsonl")
    per_step = {s: [r["id"] for r in history if r["step"] == s] for s in (2, 4, 6, 8)}
    assert all(ids == probes.ids for ids in per_step.values()), "one row per probe per step, no duplicates"
    assert len(history) == len(before_history)
    flags = read_rows(mem / "flagged.jsonl")
    assert len({r["id"] for r in flags}) == len(flags)
    assert flags[:len(before_flags)] == before_flags  # earlier findings kept as written
    # The trainer's log history (restored from the checkpoint) has one memorization entry per scored step.
    assert [e["step"] for e in memorization_logs(resumed)] == [2, 4, 6, 8]
    # Training resumes deterministically, so the re-scored steps match the first run's.
    old6 = [r["loss"] for r in before_history if r["step"] == 6]
    assert [r["loss"] for r in history if r["step"] == 6] == pytest.approx(old6, abs=1e-4)


def test_budget_stops_training(tmp_path, caplog):
    trainer = sft_trainer(tmp_path, max_steps=40, learning_rate=1e-2)
    callback = MemorizationCallback(trainer, sft_probes(), every_n_steps=5,
                                    flag_rule=FlagRule(control_ma_percentile=50),
                                    budget=MemorizationBudget(max_flagged=0))
    trainer.add_callback(callback)
    with caplog.at_level("WARNING", logger="obliviate.callbacks.memorization"):
        trainer.train()
    assert trainer.state.global_step == 5, "training must stop at the first scoring over budget"
    assert "max_flagged" in callback.stop_reason and "max_flagged" in caplog.text
    stops = [e for e in trainer.state.log_history if "memorization/budget_stop_reason" in e]
    assert len(stops) == 1 and stops[0]["step"] == 5
