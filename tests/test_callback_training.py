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


STEPS = (30, 60, 90, 120)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """120 steps of SFT with TensorBoard reporting: the tiny model memorizes its 8x canaries with a wide margin.

    Training is deterministic (seeded init, seeded data order, one thread), but float rounding differs
    between CPUs: at 80 steps the 8x canaries sat at extraction probability 0.56-0.68 and only one canary
    was extractable, so a machine with other kernels could fall under the criteria (issue 11 item 14). At
    120 steps both 8x canaries are exactly extractable with extraction probability 1.0 here, and the
    assertions below leave that margin.
    """
    out = tmp_path_factory.mktemp("sft")
    trainer = sft_trainer(out, max_steps=STEPS[-1], report_to=["tensorboard"], logging_steps=10)
    callback = MemorizationCallback(trainer, sft_probes(), every_n_steps=STEPS[0])
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
    last = [r for r in history if r["step"] == STEPS[-1] and r["id"].startswith("canary-x8")]
    assert len(last) == 2 and all(rule.reason(r, None) for r in last), last
    # No control meets an absolute criterion at any step.
    assert not [r for r in history if r["role"] == "control" and rule.reason(r, None)]
    row = flagged[ids.index("canary-x8-0")]
    # Each group has 8 controls, fewer than min_controls: flags come from absolute evidence only.
    assert row["step"] in STEPS and row["reason"] in ("exact_extraction", "extraction_probability")
    assert "extraction_probability@100" in row["metrics"] and row["prefix_ids"] and row["suffix"]
    meta = json.loads((out / "memorization" / "flagged.meta.json").read_text())
    assert meta["thresholds"]["control_ma_percentile"] == 99 and meta["flagged"] == len(ids)
    assert meta["groups"]["pin"]["judged_by"] == "absolute" and meta["groups"]["pin"]["controls"] == 8
    assert meta["baseline"] == {"source": "step 0", "probes": len(callback.probes)}
    # Erasure reads the file back with the same tokenizer: text and ids agree.
    assert read_flagged(out / "memorization" / "flagged.jsonl", trainer.processing_class).ids == ids


def test_history_and_log_history(sft_run):
    trainer, callback, out = sft_run
    history = read_rows(out / "memorization" / "history.jsonl")
    steps = sorted({r["step"] for r in history})
    # Step 0 is the flag rule's baseline, scored at train begin (without score_on_start: written, not logged).
    assert steps == [0, *STEPS]
    assert len(history) == 5 * len(callback.probes)
    assert {
        "loss",
        "memorization_accuracy",
        "exact_extraction",
        "extraction_probability",
        "min_k",
        "prefix_match_length",
        "epoch",
        "group",
    } <= set(history[0])
    assert callback.baselines == {
        r["id"]: {"memorization_accuracy": r["memorization_accuracy"], "suffix_log_prob": r["suffix_log_prob"]}
        for r in history
        if r["step"] == 0
    }
    logs = memorization_logs(trainer)
    assert [e["step"] for e in logs] == list(STEPS)
    # What the run guarantees with margin: the 8x canaries are extractable at the end and not at the first scoring
    # (here 3/8 canaries vs 0/8), and canary MA rises by far more than rounding could move it (0.11 -> 0.79).
    assert logs[-1]["memorization/canary/extraction_rate"] >= 2 / 8 > logs[0]["memorization/canary/extraction_rate"]
    assert (
        logs[-1]["memorization/canary/mean_memorization_accuracy"]
        > logs[0]["memorization/canary/mean_memorization_accuracy"] + 0.3
    )
    assert logs[-1]["memorization/flagged"] == len(callback.flagged)
    # The trainer's own loss logs survive at steps where the callback also logged.
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == list(range(10, STEPS[-1] + 1, 10))


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
    assert [e.step for e in tags["train/memorization/canary/extraction_rate"]] == list(STEPS)
    assert "train/memorization/auc/min_k" in tags and "train/loss" in tags


def test_plain_trainer_on_text_every_epoch(tmp_path):
    """transformers.Trainer on plain text (prompt+completion as one string), scored per epoch only."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from tests.ddp_worker import fresh_model

    tokenizer, rows, _ = sft_data()
    texts = Dataset.from_list([{"text": r["prompt"] + r["completion"] + tokenizer.eos_token} for r in rows])
    data = texts.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
    args = TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=2,
        per_device_train_batch_size=16,
        learning_rate=5e-3,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=50,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=fresh_model(tokenizer),
        args=args,
        train_dataset=data,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
    )
    trainer.add_callback(MemorizationCallback(trainer, sft_probes(), every_n_steps=None, every_epoch=True))
    trainer.train()
    steps_per_epoch = -(-len(rows) // 16)
    history = read_rows(tmp_path / "memorization" / "history.jsonl")
    assert sorted({r["step"] for r in history}) == [0, steps_per_epoch, 2 * steps_per_epoch]
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
    assert sorted({r["step"] for r in history}) == [0, 3, 6]
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
    assert sorted({r["step"] for r in history}) == [0, 2, 4]
    assert [e["step"] for e in memorization_logs(trainer)] == [2, 4]


def test_resume_continues_without_duplicates_and_keeps_baselines(tmp_path):
    probes = sft_probes()
    common = dict(max_steps=8, save_strategy="steps", save_steps=4, learning_rate=1e-2)
    # A relaxed calibrated rule (median of 8 controls, any gain over the baseline) so 8 steps flag something.
    rule = FlagRule(control_ma_percentile=50, min_controls=5, min_ma_gain=0.0)
    first = sft_trainer(tmp_path, **common)
    first_callback = MemorizationCallback(first, probes, every_n_steps=2, flag_rule=rule)
    first.add_callback(first_callback)
    first.train()
    mem = tmp_path / "memorization"
    before_history = read_rows(mem / "history.jsonl")
    before_flags = read_rows(mem / "flagged.jsonl")
    assert before_flags, "the relaxed rule should flag something in 8 steps"
    assert {r["reason"] for r in before_flags} >= {"control_relative_ma"}
    # As if the run had died after checkpoint-4: resume from it into the same directory.
    resumed = sft_trainer(tmp_path, **common)
    callback = MemorizationCallback(resumed, probes, every_n_steps=2, flag_rule=rule)
    resumed.add_callback(callback)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    history = read_rows(mem / "history.jsonl")
    per_step = {s: [r["id"] for r in history if r["step"] == s] for s in (0, 2, 4, 6, 8)}
    assert all(ids == probes.ids for ids in per_step.values()), "one row per probe per step, no duplicates"
    assert len(history) == len(before_history)
    # The baselines are the step-0 scores read back from history, not a re-scoring of the checkpoint's weights.
    assert callback.baselines == first_callback.baselines and len(callback.baselines) == len(probes)
    at4 = {r["id"]: r["memorization_accuracy"] for r in before_history if r["step"] == 4}
    assert any(at4[i] != b["memorization_accuracy"] for i, b in callback.baselines.items())
    flags = read_rows(mem / "flagged.jsonl")
    assert len({r["id"] for r in flags}) == len(flags)
    assert flags[: len(before_flags)] == before_flags  # earlier findings kept as written
    # Same weights and same baselines give the same decisions: nothing new to flag at the re-scored steps.
    assert flags == before_flags
    # The trainer's log history (restored from the checkpoint) has one memorization entry per scored step.
    assert [e["step"] for e in memorization_logs(resumed)] == [2, 4, 6, 8]
    # Training resumes deterministically, so the re-scored steps match the first run's.
    old6 = [r["loss"] for r in before_history if r["step"] == 6]
    assert [r["loss"] for r in history if r["step"] == 6] == pytest.approx(old6, abs=1e-4)


def test_budget_stops_training(tmp_path, caplog):
    trainer = sft_trainer(tmp_path, max_steps=40, learning_rate=1e-2)
    # The uncalibrated rule against the median of 8 controls: something is flagged at the first scoring.
    callback = MemorizationCallback(
        trainer,
        sft_probes(),
        every_n_steps=5,
        flag_rule=FlagRule(control_ma_percentile=50, min_controls=5, min_ma_gain=None),
        budget=MemorizationBudget(max_flagged=0),
    )
    trainer.add_callback(callback)
    with caplog.at_level("WARNING", logger="obliviate.callbacks.memorization"):
        trainer.train()
    assert trainer.state.global_step == 5, "training must stop at the first scoring over budget"
    assert "max_flagged" in callback.stop_reason and "max_flagged" in caplog.text
    stops = [e for e in trainer.state.log_history if "memorization/budget_stop_reason" in e]
    assert len(stops) == 1 and stops[0]["step"] == 5
