"""``run_track`` and ``obliviate track``: the shipped recipe, CLI overrides, recipe errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from obliviate.callbacks import run_track
from obliviate.callbacks.track import build_probes, load_track_recipe
from obliviate.cli import main
from obliviate.config import RecipeError
from obliviate.data import read_jsonl
from tests.ddp_worker import fresh_model
from tests.helpers import corpus_tokenizer

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "track-sft.yaml"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def mini_toy(tmp_path_factory) -> Path:
    """A toy-shaped directory (base/, train.jsonl, probes.jsonl, controls.jsonl) around the tiny model."""
    corpus, tokenizer = corpus_tokenizer()
    root = tmp_path_factory.mktemp("mini-toy")
    model = fresh_model(tokenizer)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    _write_jsonl(root / "train.jsonl", [r for r in corpus.train if not r["id"].startswith("fact")])
    _write_jsonl(root / "probes.jsonl", corpus.probes)
    _write_jsonl(
        root / "controls.jsonl",
        [{"prompt": r["prompt"], "completion": r["completion"]} for r in corpus.probes if r["role"] == "control"],
    )
    return root


def _paths(toy: Path, out: Path) -> dict:
    return {
        "model": str(toy / "base"),
        "train_file": str(toy / "train.jsonl"),
        "probes": str(toy / "probes.jsonl"),
        "output_dir": str(out),
    }


def test_shipped_recipe_runs_with_overrides(mini_toy, tmp_path):
    out = run_track(
        RECIPE,
        {
            **_paths(mini_toy, tmp_path / "run"),
            "training.max_steps": 6,
            "training.disable_tqdm": True,
            "tracking.every_n_steps": 3,
        },
    )
    mem = out / "memorization"
    history = read_jsonl(mem / "history.jsonl")
    assert sorted({r["step"] for r in history}) == [0, 3, 6]  # step 0: the flag rule's baseline
    assert (mem / "flagged.meta.json").exists() and (mem / "summaries.jsonl").exists()
    record = json.loads((out / "track.json").read_text())
    assert record["global_step"] == 6 and record["probes"] == 64
    assert record["recipe"]["training"]["learning_rate"] == 5e-3 and record["recipe"]["tracking"]["every_n_steps"] == 3
    assert (out / "model" / "config.json").exists() and (out / "model" / "tokenizer.json").exists()


def test_cli_track_and_errors(mini_toy, tmp_path, capsys):
    paths = _paths(mini_toy, tmp_path / "cli")
    code = main(
        [
            "track",
            "--config",
            str(RECIPE),
            "--model",
            paths["model"],
            "--train-file",
            paths["train_file"],
            "--probes",
            paths["probes"],
            "--output-dir",
            paths["output_dir"],
            "--max-steps",
            "2",
            "--every-n-steps",
            "2",
            "--set",
            "training.disable_tqdm=true",
            "--set",
            "lora={r: 4, lora_alpha: 8, target_modules: [c_attn], lora_dropout: 0.0}",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "probes flagged" in printed and "canary" in printed
    assert (tmp_path / "cli" / "model" / "adapter_config.json").exists()  # LoRA run saves the adapter
    assert main(["track", "--config", str(RECIPE), "--set", "training.learnig_rate=1"]) == 2
    assert "Did you mean 'learning_rate'" in capsys.readouterr().err
    assert main(["track", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_recipe_checks_before_loading_anything(mini_toy, tmp_path):
    base = _paths(mini_toy, tmp_path)
    with pytest.raises(RecipeError, match="Did you mean 'every_n_steps'"):
        load_track_recipe({**base, "tracking": {"every_n_step": 5}})
    with pytest.raises(RecipeError, match="Did you mean 'train_file'"):
        load_track_recipe({**base, "train_files": "x"})
    with pytest.raises(RecipeError, match="exactly one of 'train_file'"):
        load_track_recipe({**base, "dataset_name": "imdb"})
    with pytest.raises(FileNotFoundError, match="obliviate toy"):
        load_track_recipe({**base, "train_file": str(tmp_path / "nope.jsonl")})
    with pytest.raises(RecipeError, match="top level"):
        load_track_recipe({**base, "training": {"output_dir": "x"}})
    with pytest.raises(RecipeError, match="lora"):
        load_track_recipe({**base, "lora": {"rank": 4}})
    settings = load_track_recipe({**base, "training": {"report_to": "none", "max_steps": "7"}})
    assert settings.training.report_to == [] and settings.training.max_steps == 7
    if not torch.cuda.is_available():
        assert settings.training.use_cpu and not settings.training.bf16
        assert not settings.training.activation_checkpointing


def test_default_probes_from_train_rows_and_controls(mini_toy, tmp_path, caplog):
    corpus, tokenizer = corpus_tokenizer()
    settings = load_track_recipe(
        {**_paths(mini_toy, tmp_path), "probes": None, "controls": str(mini_toy / "controls.jsonl")}
    )
    rows = read_jsonl(mini_toy / "train.jsonl")
    probes = build_probes(settings, rows, tokenizer)
    assert probes["canary-x8-0"].meta["repetitions"] == 8 and probes["canary-x1-0"].meta["repetitions"] == 1
    assert len(probes.by_role("control")) == 16 and len(probes.by_role("member")) == 48
    settings.tracking.max_probes = 30
    with caplog.at_level("WARNING", logger="obliviate.callbacks.track"):
        capped = build_probes(settings, rows, tokenizer)
    assert len(capped) == 30 and len(capped.by_role("control")) == 16
    assert "tracking 14 of 48 members" in caplog.text  # 30 - the 16 controls


@pytest.mark.slow
def test_toy_recipe_as_written_memorizes_8x_canaries(tmp_path):
    """The shipped recipe, unchanged, on the real toy build: 8x canaries flagged, no control ever."""
    from obliviate.toy import build_toy

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        build_toy(tmp_path / "runs" / "toy")
        out = run_track(RECIPE, {"training.disable_tqdm": True})
    finally:
        os.chdir(cwd)
    flagged = read_jsonl(out / "memorization" / "flagged.jsonl")
    ids = {r["id"] for r in flagged}
    assert {f"canary-x8-{i}" for i in range(4)} <= ids
    assert not [r for r in flagged if r["role"] == "control"]
    # And still memorized at the end: every 8x canary's MA above the 99th percentile of the never-trained PIN
    # controls'. (An earlier floor, "some canary still exactly extractable", held on two AMD EPYCs and not on
    # an Intel Xeon, where no canary was ever greedy-extracted and all 16 were flagged by their MA: toy
    # training is not bitwise the same across CPUs, so the assertion reads a margin, not one machine's rounding.)
    history = read_jsonl(out / "memorization" / "history.jsonl")
    last = [r for r in history if r["step"] == max(h["step"] for h in history)]
    pins = sorted(r["memorization_accuracy"] for r in last if r["role"] == "control" and r["group"] == "pin")
    threshold = pins[int(0.99 * (len(pins) - 1))]
    x8 = [r["memorization_accuracy"] for r in last if r["id"].startswith("canary-x8")]
    assert len(x8) == 4 and min(x8) > threshold, (x8, threshold)
