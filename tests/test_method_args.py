"""Per-method settings: each loss's and selector's config_class validates ``method_args`` / ``selector_args``,
the flat keys of older recipes stay aliases of the same fields, and the docs' example loss is the file it shows.

    python -m pytest -q tests/test_method_args.py
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch

from obliviate.config import from_dict
from obliviate.erasure import LOSSES, SELECTORS, EraseConfig, EraseConfigError
from obliviate.erasure.losses import SuffixOutput, get_loss
from obliviate.erasure.selectors import get_selector

ROOT = Path(__file__).resolve().parents[1]


def _uniform(vocab: int = 7) -> SuffixOutput:
    return SuffixOutput(
        torch.zeros(1, 2, vocab), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool)
    )


@pytest.mark.parametrize(
    "method, flat, value",
    [
        ("emso", "entropy_variant", "entropy"),
        ("graddiff", "retain_weight", 0.3),
        ("npo", "npo_beta", 0.5),
        ("npo_rt", "npo_beta", 0.5),
        ("npo_rt", "retain_weight", 0.25),
        ("clipped_ga", "clip_probability", 0.2),
    ],
)
def test_a_flat_key_and_method_args_give_the_same_loss(method, flat, value):
    old = EraseConfig(method=method, **{flat: value})
    new = EraseConfig(method=method, method_args={flat: value})
    assert old.method_args == new.method_args and old.method_args[flat] == value
    assert getattr(get_loss(old).args, flat) == getattr(get_loss(new).args, flat) == value
    assert getattr(old, flat) is None  # folded into method_args: to_dict() holds it once
    assert EraseConfig(**old.to_dict()) == old  # and round-trips


def test_the_loss_reads_its_args():
    # NPO at pi_theta == pi_ref: L = (2 / beta) log 2, so beta from method_args is the one used.
    ref = torch.tensor([2 * -math.log(7)])
    for beta in (0.1, 0.4):
        loss = get_loss(EraseConfig(method="npo", method_args={"npo_beta": beta}))
        assert loss.sequence_losses(_uniform(), ref).item() == pytest.approx(2 / beta * math.log(2))
    # emso: -H = -log V (entropy) vs CE(U, p) = log V (uniform_ce, the default).
    assert get_loss(EraseConfig(method_args={"entropy_variant": "entropy"})).sequence_losses(
        _uniform()
    ).item() == pytest.approx(-math.log(7))
    assert get_loss(EraseConfig()).sequence_losses(_uniform()).item() == pytest.approx(math.log(7))


def test_defaults_are_filled_in_from_the_method_config_class():
    assert EraseConfig().method_args == {"entropy_variant": "uniform_ce"}
    assert EraseConfig(method="npo_rt").method_args == {
        "retain_weight": 1.0,
        "retain_objective": "nll",
        "npo_beta": 0.1,
    }
    assert EraseConfig(method="ga").method_args == {}
    assert EraseConfig(selector="contrastive_retain").selector_args == {"retain_contrast": 1.0}
    assert EraseConfig(selector="contrastive").selector_args == {}


def test_selector_args_set_the_contrast():
    for config in (
        EraseConfig(selector="contrastive_retain", retain_contrast=0.5),
        EraseConfig(selector="contrastive_retain", selector_args={"retain_contrast": 0.5}),
    ):
        selector = get_selector(config)
        assert selector.retain_contrast == 0.5 and selector.streams["direction"]["retain_nll"] == -0.5
    assert get_selector(EraseConfig(retain_contrast=0.5)).retain_contrast == 0.0  # contrastive: lambda 0


def test_a_flat_key_the_method_does_not_have_is_ignored_as_before():
    # erase-compare.yaml shares keys across runs: entropy_variant next to method: ga is not an error.
    config = EraseConfig(method="ga", entropy_variant="entropy", npo_beta=0.3)
    assert config.method_args == {} and config.entropy_variant == "entropy"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="npo", npo_beta=0.2, method_args={"npo_beta": 0.3}), "npo_beta is given twice"),
        (
            dict(selector="contrastive_retain", retain_contrast=1, selector_args={"retain_contrast": 2}),
            "retain_contrast is given twice",
        ),
        (dict(method="npo", method_args={"npo_bta": 0.3}), "Did you mean 'npo_beta'"),
        (dict(method="ga", method_args={"npo_beta": 0.3}), "method ga has no settings of its own"),
        (dict(method="npo", method_args={"npo_beta": 0}), "npo_beta must be > 0"),
        (dict(method="npo", npo_beta=-1.0), "npo_beta must be > 0"),
        (dict(method_args={"entropy_variant": "max"}), "entropy_variant must be one of entropy, uniform_ce"),
        (dict(method="graddiff", retain_weight=-1.0), "retain_weight must be >= 0"),
        (dict(method="clipped_ga", method_args={"clip_probability": 1.5}), r"clip_probability must be in \(0, 1\)"),
        (dict(selector="contrastive_retain", selector_args={"retain_contrast": -1}), "retain_contrast must be >= 0"),
        (dict(method_args=[1]), "method_args must be a mapping"),
    ],
)
def test_bad_method_args_are_clear_errors(kwargs, message):
    with pytest.raises(EraseConfigError, match=message):
        EraseConfig(**kwargs)


def test_a_recipe_mapping_with_method_args_loads():
    config = from_dict(EraseConfig, {"method": "npo_rt", "method_args": {"npo_beta": 0.2}, "retain_weight": 0.5})
    assert config.method_args == {"retain_weight": 0.5, "retain_objective": "nll", "npo_beta": 0.2}


def test_every_registered_component_config_is_a_documented_dataclass():
    for registry in (LOSSES, SELECTORS):
        for name, cls in registry.items():
            if cls.config_class is None:
                continue
            for f in dataclasses.fields(cls.config_class):
                assert f.metadata.get("help"), f"{name}.{f.name} has no help"
            cls.config_class()  # its defaults are valid


def test_the_docs_show_the_example_file_verbatim():
    doc = (ROOT / "docs" / "erasure.md").read_text()
    section = doc[doc.index("## Adding a loss is one new file") :]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert block == (ROOT / "docs" / "examples" / "capped_ga.py").read_text()
    assert len(block.strip().splitlines()) <= 25
