"""LMD3-style density: kernel and bandwidth by hand, embeddings masked, near-duplicates denser.

python -m pytest -q tests/test_density.py
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from obliviate.metrics import DensityConfig, embed_texts, probe_density
from obliviate.metrics.density import bandwidth_rule, kernel_log_density
from tests.helpers import corpus_tokenizer


def test_kernel_density_matches_hand_formula():
    rng = np.random.default_rng(0)
    train, points = rng.normal(size=(40, 3)), rng.normal(size=(5, 3))
    h = 0.7
    log_density, nearest = kernel_log_density(torch.tensor(train), torch.tensor(points), h)
    for k, x in enumerate(points):
        sq = ((train - x) ** 2).sum(-1)
        density = np.exp(-sq / (2 * h * h)).sum() / (40 * (2 * math.pi * h * h) ** 1.5)
        assert log_density[k].item() == pytest.approx(math.log(density), rel=1e-9)
        assert nearest[k].item() == pytest.approx(math.sqrt(sq.min()))


def test_bandwidth_rules_by_hand():
    rng = np.random.default_rng(1)
    x = rng.normal(scale=2.0, size=(100, 4))
    sigma = math.sqrt(x.var(0, ddof=1).mean())
    assert bandwidth_rule(torch.tensor(x), "scott") == pytest.approx(sigma * 100 ** (-1 / 8))
    assert bandwidth_rule(torch.tensor(x), "silverman") == pytest.approx(sigma * (4 / 6) ** (1 / 8) * 100 ** (-1 / 8))
    with pytest.raises(ValueError, match="bandwidth"):
        DensityConfig(bandwidth="wide")
    with pytest.raises(ValueError, match="> 0"):
        DensityConfig(bandwidth=-1.0)
    assert DensityConfig(bandwidth="0.5").bandwidth == 0.5


def test_leave_one_out_drops_exactly_one_copy():
    train = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    point = torch.tensor([[0.0, 0.0]])
    with_self, _ = kernel_log_density(train, point, 1.0)
    without, near = kernel_log_density(train, point, 1.0, leave_one_out=True)
    # Two copies of the point among three vs one copy among the two others.
    assert with_self.item() == pytest.approx(math.log((2 + math.exp(-25)) / 3 / (2 * math.pi)))
    assert without.item() == pytest.approx(math.log((1 + math.exp(-25)) / 2 / (2 * math.pi)))
    assert near.item() == 0.0  # the second copy is still there


def test_embeddings_ignore_padding(memorized_gpt2):
    model, tok = memorized_gpt2.model, memorized_gpt2.tokenizer
    texts = ["Fact. The flag of Riverton is red.", "Hi", "Support ticket. Where does Alice Okafor live?"]
    batched = embed_texts(model, tok, texts, batch_size=3)
    alone = torch.cat([embed_texts(model, tok, [t]) for t in texts])
    assert batched.shape == (3, model.config.n_embd)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_near_duplicates_get_higher_density(memorized_gpt2):
    corpus, tok = corpus_tokenizer()
    train = [r["prompt"] + r["completion"] for r in corpus.train]
    canary8 = next(r for r in corpus.probes if r["id"].startswith("canary-x8"))
    canary1 = next(r for r in corpus.probes if r["id"].startswith("canary-x1"))
    control = next(r for r in corpus.probes if r["role"] == "control" and r.get("secret_format"))
    last = canary8["completion"][-1]
    texts = {
        # The 8x canary with its last digit changed: eight near-duplicates in training, no exact copy.
        "near_duplicate": canary8["prompt"] + canary8["completion"][:-1] + ("1" if last != "1" else "2"),
        "canary_x8": canary8["prompt"] + canary8["completion"],
        "canary_x1": canary1["prompt"] + canary1["completion"],
        "control": control["prompt"] + control["completion"],
    }
    out = probe_density(memorized_gpt2.model, tok, list(texts.values()), train)
    density = dict(zip(texts, out["log_density"].tolist()))
    assert out["bandwidth"] > 0
    assert density["near_duplicate"] > density["control"] + 5
    # Leave-one-out: the 8x canary keeps seven copies of itself, the 1x canary none.
    assert density["canary_x8"] > density["canary_x1"] + 5
    nearest = dict(zip(texts, out["nearest_distance"].tolist()))
    assert nearest["canary_x8"] < 1e-3 < nearest["control"]
