"""``load_recipe(path, RecipeClass, overrides)``: the one loader, with two different recipe classes.

python -m pytest -q tests/test_config_recipes.py
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from obliviate.benchmarks.suite import BenchConfig
from obliviate.callbacks.track import TrackRecipe
from obliviate.config import RecipeError, apply_overrides, load_recipe


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def track_yaml(tmp_path) -> Path:
    _write(tmp_path / "train.jsonl", '{"prompt": "a", "completion": "b"}\n')
    return _write(
        tmp_path / "track.yaml",
        f"""\
        model: runs/toy/base
        train_file: {tmp_path / "train.jsonl"}
        training: {{learning_rate: 1.0e-3, max_steps: 4}}
        tracking: {{every_n_steps: 5, flag_rule: {{min_ma_gain: 0.3}}}}
        """,
    )


def test_track_recipe_with_dotted_overrides_applied(track_yaml):
    recipe = load_recipe(
        track_yaml,
        TrackRecipe,
        {
            "tracking.every_n_steps": "2",
            "tracking.flag_rule.min_ma_gain": 0.1,
            "training.max_steps": 9,
            "dtype": "bfloat16",
        },
    )
    assert (
        recipe.tracking.every_n_steps == 2 and recipe.tracking.flag_rule.min_ma_gain == 0.1
    )  # "2": typed by the field
    assert recipe.training.max_steps == 9 and recipe.training.learning_rate == 1e-3  # the file's key kept
    assert recipe.dtype == "bfloat16" and recipe.lora is None
    assert load_recipe(track_yaml, TrackRecipe).tracking.every_n_steps == 5  # without overrides: the file


def test_track_recipe_unknown_keys_name_the_nearest_and_where(track_yaml):
    with pytest.raises(
        RecipeError,
        match=rf"unknown key 'trainig' in recipe {track_yaml} \(with the command-line "
        r"overrides\)\. Did you mean 'training'\?",
    ):
        load_recipe(track_yaml, TrackRecipe, {"trainig.max_steps": 3})
    with pytest.raises(
        RecipeError,
        match=rf"recipe {track_yaml}: unknown key 'every_n_step' in section 'tracking'\. "
        r"Did you mean 'every_n_steps'\?",
    ):
        load_recipe(track_yaml, TrackRecipe, {"tracking.every_n_step": 3})
    typo = _write(track_yaml.with_name("typo.yaml"), track_yaml.read_text().replace("train_file", "train_files"))
    with pytest.raises(RecipeError, match=rf"unknown key 'train_files' in recipe {typo}\. Did you mean 'train_file'"):
        load_recipe(typo, TrackRecipe)
    with pytest.raises(
        RecipeError, match=rf"recipe {track_yaml}: section 'tracking': every_n_steps must be a positive"
    ):
        load_recipe(track_yaml, TrackRecipe, {"tracking.every_n_steps": 0})


def test_bench_recipe_through_the_same_loader(tmp_path):
    path = _write(
        tmp_path / "bench.yaml",
        """\
        benchmarks:
          - {name: perplexity, data: retain.jsonl}
          - {name: multiple_choice, data: mc.jsonl, label: facts}
        """,
    )
    config = load_recipe(path, BenchConfig, {"benchmarks": [{"name": "perplexity", "data": "other.jsonl"}]})
    assert config.benchmarks == [{"name": "perplexity", "data": "other.jsonl"}]  # a whole key replaced
    assert [e["name"] for e in load_recipe(path, BenchConfig).benchmarks] == ["perplexity", "multiple_choice"]
    with pytest.raises(RecipeError, match=rf"unknown key 'benchmark' in recipe {path}.*Did you mean 'benchmarks'"):
        load_recipe(path, BenchConfig, {"benchmark": []})
    bad = _write(tmp_path / "bad.yaml", "benchmarks: [{name: perplexity, dat: retain.jsonl}]\n")
    # The entry's keys are BenchConfig's own check: before any data file or tokenizer is read.
    with pytest.raises(
        RecipeError,
        match=rf"recipe {bad}: unknown key 'dat' in benchmark 'perplexity' \(benchmarks\[0\]\)"
        r"\. Did you mean 'data'\?",
    ):
        load_recipe(bad, BenchConfig)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml", BenchConfig)


def test_overrides_set_null_and_refuse_to_descend_into_a_value():
    data = {"gate": {"every": 2}, "method": "emso"}
    assert apply_overrides(data, {"gate": None, "method": "ga"}) == {"gate": None, "method": "ga"}
    assert apply_overrides(data, {"gate.every": 3, "gate.benchmarks": ["default"]}) == {
        "gate": {"every": 3, "benchmarks": ["default"]},
        "method": "emso",
    }
    assert data == {"gate": {"every": 2}, "method": "emso"}, "the recipe read is not changed in place"
    with pytest.raises(RecipeError, match=r"cannot set 'method.name': method is 'emso', not a section"):
        apply_overrides(data, {"method.name": "x"})
