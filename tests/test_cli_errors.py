"""Bad input at the command line: a message naming what is wrong and where, never a traceback (issue 14 items 7, 8).

And the reverse (issue 12 item 8): a library bug is not a user error, so it keeps its traceback.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil

import pytest

import obliviate
from obliviate.cli import main


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_a_library_bug_keeps_its_traceback(monkeypatch):
    """A KeyError inside a command is a bug: it propagates (traceback), not `error: 'id'` with exit 2."""
    import obliviate.commands.report as report

    def broken(args):
        return {}["id"]

    monkeypatch.setattr(report, "run", broken)
    with pytest.raises(KeyError):
        main(["report", "whatever"])


def test_every_obliviate_error_class_is_a_value_or_os_error():
    """cli.main shows the message of ValueError/OSError subclasses: every error class of ours must be one."""
    classes = []
    for info in pkgutil.walk_packages(obliviate.__path__, "obliviate."):
        if info.name.startswith("obliviate.evaluate_metrics"):
            continue
        module = importlib.import_module(info.name)
        classes += [
            c
            for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, Exception) and c.__module__ == module.__name__
        ]
    assert len(classes) >= 8, classes
    assert [c for c in classes if not issubclass(c, (ValueError, OSError))] == []


def test_errors_carry_the_rank_under_a_multi_process_launcher(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    err = _error(capsys, ["report", str(tmp_path / "missing")])
    assert err.startswith("[rank 1] obliviate report: error:"), err


def test_an_empty_safetensors_file_is_a_message(toy_dir, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(toy_dir / "base", model)
    (model / "model.safetensors").write_bytes(b"")
    err = _error(
        capsys,
        ["score", "--model", str(model), "--probes", str(toy_dir / "probes.jsonl"), "--out", str(tmp_path / "scores")],
    )
    assert "empty, truncated or not safetensors" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ("just a string", r"probes\.jsonl:2\) is a JSON str"),
        (
            {"id": "p7", "prefix_ids": "1, 2", "suffix_ids": [3]},
            r"'p7' \(.*probes\.jsonl:2\): prefix_ids must be a list",
        ),
        ({"id": "p8", "prompt": 12, "completion": " x"}, r"'p8' \(.*probes\.jsonl:2\): prompt must be a string"),
    ],
)
def test_bad_probe_rows_name_the_probe_and_line(toy_dir, tmp_path, capsys, row, pattern):
    import re

    good = {"id": "p1", "prompt": "Support ticket.", "completion": " yes", "role": "member"}
    probes = tmp_path / "probes.jsonl"
    probes.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    err = _error(
        capsys, ["score", "--model", str(toy_dir / "base"), "--probes", str(probes), "--out", str(tmp_path / "scores")]
    )
    assert re.search(pattern, err), err


def test_an_empty_probes_file_is_an_error(toy_dir, tmp_path, capsys):
    probes = tmp_path / "probes.jsonl"
    probes.write_text("\n")
    err = _error(
        capsys, ["score", "--model", str(toy_dir / "base"), "--probes", str(probes), "--out", str(tmp_path / "scores")]
    )
    assert "holds no probes" in err
    assert not (tmp_path / "scores").exists()


def test_truncate_cannot_shorten_a_suffix(toy_dir, tmp_path, capsys):
    n_positions = json.loads((toy_dir / "base" / "config.json").read_text())["n_positions"]
    probes = tmp_path / "probes.jsonl"
    probes.write_text(json.dumps({"id": "long", "prefix_ids": [5], "suffix_ids": [7] * n_positions}) + "\n")
    err = _error(
        capsys,
        [
            "score",
            "--model",
            str(toy_dir / "base"),
            "--probes",
            str(probes),
            "--truncate",
            "--out",
            str(tmp_path / "scores"),
        ],
    )
    assert "'long' has a suffix of" in err and "--truncate cannot help" in err


def test_duplicate_probe_ids_are_refused_by_score_and_track(toy_dir, tmp_path, capsys):
    row = {"id": "twice", "prompt": "Support ticket.", "completion": " yes", "role": "member"}
    probes = tmp_path / "probes.jsonl"
    probes.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    err = _error(
        capsys, ["score", "--model", str(toy_dir / "base"), "--probes", str(probes), "--out", str(tmp_path / "scores")]
    )
    assert "duplicate probe id 'twice'" in err and "probes.jsonl:1" in err and "probes.jsonl:2" in err
    recipe = tmp_path / "track.yaml"
    recipe.write_text(
        f"model: {toy_dir / 'base'}\ntrain_file: {toy_dir / 'train.jsonl'}\nprobes: {probes}\n"
        f"output_dir: {tmp_path / 'track'}\n"
    )
    err = _error(capsys, ["track", "--config", str(recipe)])
    assert "duplicate probe id 'twice'" in err
    assert not (tmp_path / "track").exists()


def test_a_mistyped_recipe_value_names_the_key_and_file(toy_dir, tmp_path, capsys):
    recipe = tmp_path / "track.yaml"
    recipe.write_text(
        f"model: {toy_dir / 'base'}\ntrain_file: {toy_dir / 'train.jsonl'}\n"
        f"output_dir: {tmp_path / 'track'}\ntraining:\n  learning_rate: fast\n"
    )
    err = _error(capsys, ["track", "--config", str(recipe)])
    assert "learning_rate" in err and str(recipe) in err and "'fast'" in err
    recipe.write_text(
        f"model: {toy_dir / 'base'}\ntrain_file: {toy_dir / 'train.jsonl'}\n"
        f"output_dir: {tmp_path / 'track'}\ntracking:\n  every_n_steps: [5]\n"
    )
    err = _error(capsys, ["track", "--config", str(recipe)])
    assert "every_n_steps" in err and "expected int" in err and str(recipe) in err


def test_erase_recipe_type_errors_name_the_key(tmp_path, capsys):
    recipe = tmp_path / "erase.yaml"
    recipe.write_text("model: m\nforget: f.jsonl\nlearning_rate: fast\n")
    err = _error(capsys, ["erase", "--config", str(recipe), "--out", str(tmp_path / "out")])
    assert "learning_rate" in err and str(recipe) in err


def test_toy_rejects_negative_pretrain_steps(tmp_path, capsys):
    err = _error(capsys, ["toy", "--out", str(tmp_path / "toy"), "--pretrain-steps", "-5"])
    assert "pretrain_steps" in err and "-5" in err
    assert not (tmp_path / "toy").exists()
