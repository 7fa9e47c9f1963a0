"""Shared fixtures: offline hub, a toy corpus/tokenizer, and tiny models that really memorized.

Built once per session and cached on disk under pytest's tmp dir; every fixture is deterministic.
"""

from __future__ import annotations

import os
import tempfile

# Offline before anything imports transformers/datasets/evaluate: a hub name must fail at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="obliviate-hf-home-"))
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest
import torch

# Tiny models on a 2-core machine run faster on one thread than on two fighting each other.
torch.set_num_threads(1)

from tests.helpers import Memorized, make_memorized  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """The real-model loop first (stable otherwise): under pytest -n its tests, the longest of the slow tiers,
    start at once instead of leaving one worker busy after the other has finished."""
    items.sort(key=lambda item: item.get_closest_marker("real") is None)


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory):
    """The built-in toy build (base lightly pre-trained) written once per session."""
    from obliviate.toy import ToyConfig, build_toy

    return build_toy(tmp_path_factory.mktemp("toy"), ToyConfig(pretrain_steps=60))


@pytest.fixture(scope="session")
def memorized_gpt2() -> Memorized:
    return make_memorized("gpt2")


@pytest.fixture(scope="session")
def memorized_llama() -> Memorized:
    return make_memorized("llama")


@pytest.fixture(params=["gpt2", "llama"])
def memorized(request) -> Memorized:
    return request.getfixturevalue(f"memorized_{request.param}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
