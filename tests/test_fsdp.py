"""FSDP2 on CPU (gloo, 2 processes): the callback scores a really sharded model as it scores the whole one,
and the Eraser refuses it.

    python -m pytest -q tests/test_fsdp.py
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import torchrun


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "result.pt"
    torchrun("fsdp_worker.py", str(out))  # a rank that runs one forward fewer hangs the other: a timeout
    return torch.load(out, weights_only=False)


def test_the_model_is_really_sharded_and_ranks_run_equal_forward_passes(result):
    assert result["world"] == 2 and result["kind"] == "fsdp2"
    first, second = result["forwards"]
    # 7 probes: shards of 4 and 3, the second padded to 4, so both ranks run the same passes
    assert first == second and first > 0


def test_sharded_scores_equal_the_whole_model_s_for_every_probe_once(result):
    whole, sharded = result["whole"], result["sharded"]
    assert [r["id"] for r in sharded] == [r["id"] for r in whole] and len(whole) == 7
    for a, b in zip(whole, sharded):
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (a["id"], key)
            else:
                assert b[key] == value, (a["id"], key)


def test_the_prefix_cache_is_off_on_the_sharded_model_and_the_eraser_refuses_it(result):
    # The whole model, with its embeddings and first block frozen, scores through the cache; the sharded one
    # does not (a cache built outside FSDP's forward would read unsharded weights that are no longer there).
    assert result["whole_cache"] and not result["sharded_cache"]
    assert result["eraser"] is not None and "sharded across processes (fsdp2)" in result["eraser"]
