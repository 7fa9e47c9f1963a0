"""DDP: two torchrun processes (gloo, CPU) give the flags and metrics one process gives on the same model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from obliviate.callbacks import FlagRule, MemorizationCallback
from obliviate.data import read_jsonl
from tests.ddp_worker import sft_probes, sft_trainer
from tests.helpers import torchrun

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_match_one(tmp_path):
    torchrun("ddp_worker.py", str(tmp_path), "30")
    assert json.loads((tmp_path / "world.json").read_text())["world_size"] == 2

    mem = tmp_path / "run" / "memorization"
    history = read_jsonl(mem / "history.jsonl")
    probes = sft_probes()
    # One writer: exactly one row per probe per scored step, in probe order.
    for step in (10, 20, 30):
        assert [r["id"] for r in history if r["step"] == step] == probes.ids
    flagged = read_jsonl(mem / "flagged.jsonl")
    assert len({r["id"] for r in flagged}) == len(flagged)

    # One process, the same final weights.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
        single = sft_trainer(tmp_path / "single", model=model, max_steps=30)
        single.state.global_step = 30
        callback = MemorizationCallback(single, probes, every_n_steps=10)
        logs = callback.evaluate(single.state, single.control)
    finally:
        torch.set_num_threads(threads)
    final = [r for r in history if r["step"] == 30]
    for name in ("loss", "memorization_accuracy", "extraction_probability", "min_k_plus_plus"):
        assert [r[name] for r in final] == pytest.approx([r[name] for r in callback.last_rows], abs=1e-5), name
    rule = FlagRule()
    assert rule.apply(final)[0] == rule.apply(callback.last_rows)[0]
    ddp_logs = [e for e in json.loads((tmp_path / "log_history.json").read_text()) if "memorization/flagged" in e]
    assert [e["step"] for e in ddp_logs] == [10, 20, 30]
    for key, value in logs.items():
        if key.startswith("memorization/") and key not in (
            "memorization/seconds",
            "memorization/flagged",
            "memorization/new_flagged",
        ):
            assert ddp_logs[-1][key] == pytest.approx(value, abs=1e-5), key
