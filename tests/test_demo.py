"""The end-to-end demo through the CLI, and its recipe's error messages.

python -m pytest -q tests/test_demo.py            # fast: recipe errors + a tiny end-to-end run
python -m pytest -q -m slow tests/test_demo.py    # the --quick demo, checked stage by stage
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from obliviate.cli import main
from obliviate.demo import default_recipe, load_demo_recipe

PLOTS = {"memorization.png", "tail.png", "roc.png", "erasure_trajectory.png", "before_after.png"}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_run_files(out: Path) -> dict:
    """Outputs every demo run must leave, whatever it managed to erase."""
    for name in (
        "demo.json",
        "timings.json",
        "scores_before.jsonl",
        "scores_after.jsonl",
        "utility_before.json",
        "utility_after.json",
        "report.md",
        "report.html",
        "data/retain.jsonl",
        "data/controls.jsonl",
        "track/memorization/history.jsonl",
        "track/memorization/flagged.jsonl",
        "track/model/config.json",
        "erase/erasure_report.json",
        "erase/config.json",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "erase" / "erasure_report.json").read_text())
    assert report["gate_decisions"], "the gate made no decision"
    # Rejected exactly when some tolerance was violated (the decision is the gate's verdict, not a label).
    assert all((d["decision"] == "accepted") == (not d["violations"]) for d in report["gate_decisions"])
    assert {p.name for p in (out / "plots").iterdir()} == PLOTS
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(PLOTS)
    md = (out / "report.md").read_text()
    for section in (
        "Memorization during training",
        "Flagged sequences",
        "Erasure trajectory",
        "Gate decisions",
        "Before and after erasure, by group",
        "Utility before and after",
        "Timings",
    ):
        assert section in md, section
    assert set(json.loads((out / "timings.json").read_text())) >= {
        "toy",
        "track",
        "before",
        "erase",
        "after",
        "report",
        "total",
    }
    flagged_ids = {r["id"] for r in _jsonl(out / "track/memorization/flagged.jsonl")}
    assert {s["id"] for s in report["sequences"]} == flagged_ids - {i for i in flagged_ids if i.startswith("control")}
    retain = {r["text"] for r in _jsonl(out / "data/retain.jsonl")}
    flagged_text = {r["prefix"] + r["suffix"] for r in _jsonl(out / "track/memorization/flagged.jsonl")}
    assert not retain & flagged_text, "retain text must not hold what is being erased"
    return report


def test_demo_tiny_end_to_end(toy_dir, tmp_path, capsys):
    """Two epochs and a loose flag rule: every stage runs and writes what it should (seconds, not minutes)."""
    out = tmp_path / "demo"
    argv = [
        "demo",
        "--quick",
        "--out",
        str(out),
        "--toy",
        str(toy_dir),
        "--epochs",
        "2",
        "--set",
        "tracking.flag_rule.control_ma_percentile=90",
        "--set",
        "tracking.every_n_steps=17",
        "--set",
        "erase.max_steps=5",
        "--set",
        "erase.chunk_size=256",
    ]
    assert main(argv) == 0
    _check_run_files(out)
    printed = capsys.readouterr().out
    assert "before -> after erasure" in printed and "retain/perplexity" in printed and "total" in printed
    # The trainer's logs as one digest line each (TrainerLogDigest in run_track), never its printed dicts.
    assert "memorization: extraction rate" in printed and "training done in" in printed
    assert "{'loss'" not in printed and "'memorization/" not in printed


@pytest.mark.slow
def test_demo_quick_flags_and_erases_canaries(tmp_path, capsys, monkeypatch):
    """The --quick demo as `make demo` runs it, toy build and cache included."""
    monkeypatch.setenv("OBLIVIATE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = _check_run_files(out)
    assert len(list((tmp_path / "cache").glob("toy-*"))) == 1
    flagged = _jsonl(out / "track/memorization/flagged.jsonl")
    canaries = [r for r in flagged if r["role"] == "canary"]
    assert canaries, "the demo must memorize and flag canaries"
    # Memorization follows repetition: the 8x canaries are flagged; no never-trained control is.
    assert any(r["meta"]["repetitions"] == 8 for r in canaries)
    assert not [r for r in flagged if r["role"] == "control"]
    before = {r["id"]: r for r in _jsonl(out / "scores_before.jsonl")}
    after = {r["id"]: r for r in _jsonl(out / "scores_after.jsonl")}
    extracted = [r["id"] for r in canaries if before[r["id"]]["exact_extraction"]]
    assert extracted
    # Erasing every extractable canary within the gate is the target the seeds test tracks (a known gap, strict
    # xfail); what this run must do is tell the truth about it on its last line.
    remaining = [i for i in extracted if after[i]["exact_extraction"]]
    printed = capsys.readouterr().out
    verdict = printed.strip().splitlines()[-1]
    if remaining or report["summary"]["forgotten"] < report["summary"]["sequences"]:
        assert verdict.startswith("NOT ERASED") and ("within the utility gate" in verdict or "max_steps" in verdict)
    else:
        assert verdict.startswith("erased all")
    utility_before = json.loads((out / "utility_before.json").read_text())
    utility_after = json.loads((out / "utility_after.json").read_text())
    # The gate's tolerances hold on the final model (gate-only perplexity +2% / -10%, KL within the recipe's
    # default_kl, one fact). The bound is read from the shipped recipe so that the test follows what it ships.
    kl_bound = load_demo_recipe(default_recipe()).erase.gate["default_kl"]
    assert 0 < kl_bound <= 0.1
    gate_before, gate_after = report["utility"]["before"], report["utility"]["after"]
    assert (
        0.9 * gate_before["gate_ppl"]["perplexity"] - 1e-6
        <= gate_after["gate_ppl"]["perplexity"]
        <= gate_before["gate_ppl"]["perplexity"] * 1.02 + 1e-6
    )
    assert gate_after["gate_kl"]["kl"] <= kl_bound + 1e-9
    assert gate_after["facts"]["acc"] >= gate_before["facts"]["acc"] - 0.07 - 1e-9
    assert set(utility_before) == set(utility_after) == {"retain", "heldout", "facts"}
    assert "canary ×8" in printed and "built" in printed
    # Again into the same directory (make demo twice): the stages are replaced, the toy build reused.
    (out / "erase" / "marker").write_text("old")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert not (out / "erase" / "marker").exists()
    assert "reused" in capsys.readouterr().out


def test_shipped_recipe_loads_and_quick_overrides_apply():
    settings = load_demo_recipe(default_recipe())
    quick = load_demo_recipe(default_recipe(), {"training.num_train_epochs": 3}, quick=True)
    assert settings.training["num_train_epochs"] == 8 and quick.training["num_train_epochs"] == 3  # CLI wins
    assert quick.toy.pretrain_steps == 60 and settings.toy.pretrain_steps == 300
    assert settings.erase.gate["benchmarks"][0] == "default"  # the gate-only split: two-sided ppl + KL


def _recipe(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("trainig: {num_train_epochs: 3}\n", "unknown key 'trainig'.*Did you mean 'training'"),
        ("training: {num_train_epoch: 3}\n", "unknown key 'num_train_epoch'.*Did you mean 'num_train_epochs'"),
        ("tracking: {every_n_step: 3}\n", "unknown key 'every_n_step'.*Did you mean 'every_n_steps'"),
        ("erase: {methd: ga}\n", "unknown key 'methd'.*Did you mean 'method'"),
        ("erase: {method: emsoo}\n", "method must be one of"),
        ("toy: {pretrain_step: 3}\n", "Did you mean 'pretrain_steps'"),
        (
            "utility: [{name: perplexty, data: retain.jsonl}]\n",
            "unknown benchmark 'perplexty'.*Did you mean 'perplexity'",
        ),
        ("quick: {epochs: 2}\n", "must be a dotted key"),
        ("tracking: {every_n_steps: 0}\n", "section 'tracking': every_n_steps must be a positive number"),
        (
            "erase: {gate: {benchmarks: [default, {name: perplexity, data: x, max_relative_increse: 0.1}]}}\n",
            r"unknown key 'max_relative_increse' in erase\.gate\.benchmarks\[1\].*Did you mean 'max_relative_increase'",
        ),
        (
            "utility: [{name: perplexity, dat: retain.jsonl}]\n",
            r"unknown key 'dat' in section 'utility'\[0\].*Did you mean 'data'",
        ),
    ],
)
def test_bad_recipe_keys_fail_with_the_fix(tmp_path, capsys, body, expected):
    import re

    path = _recipe(
        tmp_path,
        "utility: [{name: perplexity, data: retain.jsonl}]\n" + body if not body.startswith("utility") else body,
    )
    assert main(["demo", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err, re.S), err
    assert not (tmp_path / "out").exists(), "nothing may run before the recipe is checked"


def test_missing_recipe_and_bad_set_fail_fast(tmp_path, capsys):
    assert main(["demo", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["demo", "--set", "trainig.seed=1", "--out", str(tmp_path / "o")]) == 2
    assert "Did you mean 'training'" in capsys.readouterr().err
    assert main(["demo", "--set", "seed", "--out", str(tmp_path / "o")]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_recipe_errors_come_before_heavy_imports(tmp_path):
    """A typo or a wrong path is reported before torch is even imported: well within the first second."""
    path = _recipe(tmp_path, "trainig: {}\n")
    code = (
        "import sys; from obliviate.cli import main; rc = main(['demo', '--config', sys.argv[1], '--out', "
        "sys.argv[2]]); print('torch' in sys.modules); sys.exit(rc)"
    )
    for recipe in (str(path), str(tmp_path / "missing.yaml")):
        done = subprocess.run(
            [sys.executable, "-c", code, recipe, str(tmp_path / "o")], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2, done.stderr
        assert done.stdout.strip() == "False" and "obliviate demo: error:" in done.stderr


def test_demo_refuses_a_directory_it_did_not_write(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "not written by `obliviate demo`" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_help_texts_read_well(capsys):
    from obliviate.cli import COMMANDS

    for command in [None, *COMMANDS]:
        with pytest.raises(SystemExit) as e:
            main(["--help"] if command is None else [command, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "usage: obliviate" in text and "(default: None)" not in text and "%%" not in text


def _greedy_extracted(model, tokenizer, rows: list[dict]) -> set[str]:
    """Ids whose suffix unpadded greedy ``generate()`` reproduces from the prefix (one row at a time)."""
    from obliviate.metrics.generation import greedy_continuations

    out = greedy_continuations(
        model,
        [r["prefix_ids"] for r in rows],
        [len(r["suffix_ids"]) for r in rows],
        tokenizer.pad_token_id,
        batch_size=1,
    )
    return {r["id"] for r, g in zip(rows, out) if g == r["suffix_ids"]}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demo_erases_every_extracted_sequence(tmp_path, monkeypatch, seed):
    """The demo's promise, judged independently of the eraser's own report: every flagged sequence greedy
    generate() extracts from the tracked model is not extracted from the erased model, held-out perplexity
    rises at most 5%, at most one of the 16 facts is lost, and the never-trained controls keep 75% of their MA."""
    from obliviate.benchmarks import UtilitySuite
    from obliviate.data import ProbeSet, load_probes
    from obliviate.metrics import score_probes
    from obliviate.modeling import load_model_and_tokenizer

    monkeypatch.setenv("OBLIVIATE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--seed", str(seed), "--out", str(out)]) == 0
    summary = json.loads((out / "demo.json").read_text())
    toy = Path(summary["toy"])
    flagged = [r for r in _jsonl(Path(summary["flagged"])) if r["role"] != "control"]
    tracked, tok = load_model_and_tokenizer(summary["tracked_model"], device="cpu")
    erased, _ = load_model_and_tokenizer(summary["erased_model"], device="cpu")
    extracted = _greedy_extracted(tracked, tok, flagged)
    assert extracted, "the demo must memorize something greedy decoding extracts"
    assert not _greedy_extracted(erased, tok, [r for r in flagged if r["id"] in extracted])
    suite = UtilitySuite.from_config(
        [
            {"name": "perplexity", "data": str(toy / "heldout.jsonl"), "label": "heldout"},
            {"name": "multiple_choice", "data": str(toy / "multiple_choice.jsonl"), "label": "facts"},
        ],
        tok,
    )
    before, after = suite.run(tracked), suite.run(erased)
    assert after["heldout"]["perplexity"] <= 1.05 * before["heldout"]["perplexity"]
    assert round(16 * (before["facts"]["acc"] - after["facts"]["acc"])) <= 1
    controls = load_probes(toy / "probes.jsonl", tok, roles=("control",))
    for group in ("pin", "record"):
        part = ProbeSet([p for p in controls if p.group == group])
        ma = [
            sum(r["memorization_accuracy"] for r in score_probes(m, tok, part)) / len(part) for m in (tracked, erased)
        ]
        assert ma[1] >= 0.75 * ma[0], (group, ma)
