"""Output paths: checked before any model loads, never inside an input, never replacing what a command
did not write, and --overwrite says what it replaced (issue 14 items 3, 5, 6)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from obliviate.cli import main


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to load a model fails the test: the path checks must come first."""
    import obliviate.modeling as modeling

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output path was checked")

    monkeypatch.setattr(modeling, "load_model_and_tokenizer", refuse)
    monkeypatch.setattr(modeling, "load_model", refuse)


def _files(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_toy_never_replaces_a_users_own_files(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "probes.jsonl").write_text('{"id": "mine"}\n')
    for argv in (["toy", "--out", str(out)], ["toy", "--out", str(out), "--overwrite"]):
        assert main([*argv, "--pretrain-steps", "0"]) == 2
        assert "not written by `obliviate toy`" in capsys.readouterr().err
    assert (out / "probes.jsonl").read_text() == '{"id": "mine"}\n'


def test_toy_replaces_its_own_build_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["toy", "--out", str(out), "--pretrain-steps", "0"]) == 0
    capsys.readouterr()
    assert main(["toy", "--out", str(out), "--pretrain-steps", "0"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["toy", "--out", str(out), "--pretrain-steps", "0", "--overwrite"]) == 0
    assert "replaced (--overwrite): base, train.jsonl, probes.jsonl" in capsys.readouterr().out


def test_score_refuses_the_input_model_dir_and_earlier_results(toy_dir, tmp_path, capsys, no_model_load):
    model = tmp_path / "model"
    shutil.copytree(toy_dir / "base", model)
    before = _files(model)
    probes = str(toy_dir / "probes.jsonl")
    assert main(["score", "--model", str(model), "--probes", probes, "--out", str(model)]) == 2
    assert "inside the input model directory" in capsys.readouterr().err
    assert main(["score", "--model", str(model), "--probes", probes, "--out", str(model / "scores")]) == 2
    assert _files(model) == before
    out = tmp_path / "scores"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"settings": {}}))
    assert main(["score", "--model", str(model), "--probes", probes, "--out", str(out)]) == 2
    assert "summary.json from an earlier `obliviate score`" in capsys.readouterr().err
    (out / "summary.json").write_text('{"mine": 1}')
    assert main(["score", "--model", str(model), "--probes", probes, "--out", str(out), "--overwrite"]) == 2
    assert "not written by `obliviate score`" in capsys.readouterr().err


def test_score_overwrite_says_what_it_replaced(toy_dir, tmp_path, capsys):
    out = tmp_path / "scores"
    argv = [
        "score",
        "--model",
        str(toy_dir / "base"),
        "--probes",
        str(toy_dir / "probes.jsonl"),
        "--out",
        str(out),
        "--samples",
        "2",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert main([*argv, "--overwrite"]) == 0
    assert "replaced (--overwrite): scores.jsonl, summary.json" in capsys.readouterr().out


def test_bench_refuses_earlier_results_before_loading(toy_dir, tmp_path, capsys, no_model_load):
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"benchmarks:\n  - {{name: perplexity, data: {toy_dir / 'retain.jsonl'}, label: retain}}\n")
    out = tmp_path / "utility"
    out.mkdir()
    (out / "utility.json").write_text("{}")
    assert main(["bench", "--model", str(toy_dir / "base"), "--config", str(suite), "--out", str(out)]) == 2
    assert "utility.json from an earlier `obliviate bench`" in capsys.readouterr().err
    assert (
        main(
            [
                "bench",
                "--model",
                str(toy_dir / "base"),
                "--config",
                str(suite),
                "--out",
                str(toy_dir / "base" / "utility"),
            ]
        )
        == 2
    )
    assert "inside the input model directory" in capsys.readouterr().err


def test_erase_out_under_a_file_fails_before_loading(toy_dir, tmp_path, capsys, no_model_load):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    argv = ["erase", "--model", str(toy_dir / "base"), "--forget", str(toy_dir / "probes.jsonl"), "--no-gate"]
    assert main([*argv, "--out", str(blocker / "erased")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_erase_out_in_an_unwritable_directory_fails_before_loading(
    toy_dir, tmp_path, capsys, no_model_load, monkeypatch
):
    import obliviate.commands._paths as paths

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access
    # Root may write anywhere, so a 0o500 directory alone proves nothing when the tests run as root.
    monkeypatch.setattr(paths.os, "access", lambda p, mode: real_access(p, mode) and str(p) != str(locked))
    argv = ["erase", "--model", str(toy_dir / "base"), "--forget", str(toy_dir / "probes.jsonl"), "--no-gate"]
    assert main([*argv, "--out", str(locked / "erased")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_demo_out_that_is_a_file_is_a_message(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["demo", "--out", str(blocker)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert blocker.read_text() == "x"


def test_track_refuses_an_earlier_run_dir(toy_dir, tmp_path, capsys, no_model_load):
    out = tmp_path / "track"
    (out / "memorization").mkdir(parents=True)
    (out / "memorization" / "flagged.jsonl").write_text('{"id": "old"}\n')
    (out / "track.json").write_text("{}")
    recipe = tmp_path / "track.yaml"
    recipe.write_text(
        f"model: {toy_dir / 'base'}\ntrain_file: {toy_dir / 'train.jsonl'}\n"
        f"probes: {toy_dir / 'probes.jsonl'}\noutput_dir: {out}\n"
    )
    assert main(["track", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "track.json, memorization" in err and "--overwrite" in err
    assert (out / "memorization" / "flagged.jsonl").read_text() == '{"id": "old"}\n'


def test_track_overwrite_removes_the_old_run_and_says_so(toy_dir, tmp_path, capsys):
    out = tmp_path / "track"
    (out / "memorization").mkdir(parents=True)
    (out / "memorization" / "stale.jsonl").write_text("{}\n")
    (out / "report.md").write_text("old report")
    (out / "notes.txt").write_text("the user's own")
    recipe = tmp_path / "track.yaml"
    recipe.write_text(
        f"model: {toy_dir / 'base'}\ntrain_file: {toy_dir / 'train.jsonl'}\n"
        f"probes: {toy_dir / 'probes.jsonl'}\noutput_dir: {out}\n"
        "training: {max_steps: 2, per_device_train_batch_size: 4}\n"
        "tracking: {every_n_steps: 2, max_probes: 40, batch_size: 64}\n"
    )
    assert main(["track", "--config", str(recipe), "--overwrite"]) == 0
    stdout = capsys.readouterr().out
    assert "replaced (--overwrite): track.json" not in stdout  # there was none
    assert "memorization, report.md" in stdout
    assert not (out / "memorization" / "stale.jsonl").exists() and not (out / "report.md").exists()
    assert (out / "notes.txt").read_text() == "the user's own"  # not ours: left alone
    assert json.loads((out / "track.json").read_text())["global_step"] == 2
    rows = len((toy_dir / "train.jsonl").read_text().splitlines())
    assert f"trained 2 optimizer steps on {rows} training rows" in stdout  # derived, not a recipe comment


def test_track_into_an_earlier_run_is_allowed_when_resuming_it(toy_dir, tmp_path, no_model_load):
    """--resume-from-checkpoint continues the same run: its directory is expected to exist."""
    import argparse

    from obliviate.commands.track import preflight

    out = tmp_path / "track"
    (out / "checkpoint-4").mkdir(parents=True)
    (out / "memorization").mkdir()
    recipe = tmp_path / "track.yaml"
    recipe.write_text(f"model: {toy_dir / 'base'}\ntrain_file: {toy_dir / 'train.jsonl'}\noutput_dir: {out}\n")
    args = argparse.Namespace(config=str(recipe), overwrite=False)
    with pytest.raises(FileExistsError, match="memorization, checkpoint-4"):
        preflight(args, {})
    assert preflight(args, {"training.resume_from_checkpoint": str(out / "checkpoint-4")}) == []
    assert (out / "checkpoint-4").is_dir()
