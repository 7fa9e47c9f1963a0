"""Help texts and recipe comments that agree with what the commands do (issue 14 item 10)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from obliviate.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _help(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return " ".join(sub.choices[command].format_help().split())


def test_erase_help_does_not_promise_a_gate_it_may_not_have():
    text = _help("erase")
    assert "every step gated" not in text
    assert "needs --retain" in text and "ungated and says so" in text


def test_demo_help_takes_the_gate_tolerances_from_the_recipe():
    import yaml

    text = _help("demo")
    recipe = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    drops = [b["max_absolute_drop"] for b in recipe["erase"]["gate"]["benchmarks"] if "max_absolute_drop" in b]
    assert drops and drops != [0.01]  # the recipe allows more than one point ...
    assert "-1 point" not in text  # ... so the help must not say one
    assert "tolerance the recipe sets" in text


def test_toy_help_says_what_out_may_hold():
    text = _help("toy")
    assert "must not hold a model" not in text
    assert "never replaced" in text and "--overwrite" in text


@pytest.mark.parametrize("recipe", ["track-sft.yaml"])
def test_recipe_comments_do_not_hard_code_step_or_row_counts(recipe):
    """Counts that follow from the data and settings are printed by the run, not frozen in a comment."""
    comments = [line.split("#", 1)[1] for line in (ROOT / "recipes" / recipe).read_text().splitlines() if "#" in line]
    frozen = [c for c in comments if re.search(r"\b\d+\s*(steps|rows)\b", c)]
    assert frozen == []
