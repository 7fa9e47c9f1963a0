"""The documented EraseConfig options that change the loop do what their help says: score_every, lr_recovery
(with select_scope: per_tensor), max_grad_norm and weight_decay (checked against a hand computation).

    python -m pytest -q tests/test_erasure_options.py

(granularity, reselect_every and target_modules: tests/test_erasure.py; control_quantile:
tests/test_erasure_criterion.py.)
"""

from __future__ import annotations

import pytest
import torch

from obliviate.benchmarks import UtilityBenchmark, UtilityGate, UtilitySuite
from obliviate.erasure import EraseConfig, Eraser
from obliviate.erasure.selectors import Selection
from obliviate.erasure.update import SelectedUpdate

FORGET = ["canary-x8-0"]


class ScriptedBenchmark(UtilityBenchmark):
    """A gate benchmark whose scores are a script: the test decides which check rejects (no forward pass)."""

    name = "scripted"
    directions = {"ppl": "lower"}
    primary = "ppl"

    def compute(self, model, tokenizer):
        return {"ppl": self.script.pop(0) if self.script else 100.0}


def scripted_gate(script: list[float], **schedule) -> UtilityGate:
    bench = ScriptedBenchmark(tokenizer=object())
    bench.script = [100.0, *script]  # the first run is the baseline
    return UtilityGate(
        UtilitySuite([bench]), [{"benchmark": "scripted", "kind": "max_relative_increase", "value": 0.1}], **schedule
    )


def _erase(mem, gate=None, **overrides):
    config = EraseConfig(
        **{
            "select_fraction": 0.05,
            "learning_rate": 1e-5,
            "max_steps": 5,
            "gate": None,
            "min_group_controls": 8,
            **overrides,
        }
    )
    eraser = Eraser(
        mem.fresh(), mem.tokenizer, mem.probes.subset(FORGET), config, gate=gate, controls=mem.probes.by_role("control")
    )
    return eraser.erase().report


@pytest.mark.parametrize("score_every, scored", [(1, [1, 2, 3, 4, 5]), (2, [2, 4, 5]), (3, [3, 5])])
def test_score_every_judges_every_nth_step_and_the_last(memorized_gpt2, score_every, scored):
    # lr 1e-5 forgets nothing in 5 steps, so no judgement ends the chunk early.
    report = _erase(memorized_gpt2, score_every=score_every)
    assert report["chunks"][0]["status"] == "max_steps"
    assert [s["step"] for s in report["steps"] if s["forget"] is not None] == scored


@pytest.mark.parametrize(
    "recovery, lrs",
    [
        # rejected at 1e-3, accepted at 5e-4 on a retry (no recovery), then each first-attempt acceptance
        # multiplies the lr by 1.5 up to learning_rate: 7.5e-4, then min(1.125e-3, 1e-3)
        (1.5, [1e-3, 5e-4, 5e-4, 7.5e-4, 1e-3]),
        (1.0, [1e-3, 5e-4, 5e-4, 5e-4, 5e-4]),  # 1: a backed-off lr stays where it is
    ],
)
def test_lr_recovery_after_a_backoff_with_per_tensor_scope(memorized_gpt2, recovery, lrs):
    gate = scripted_gate([200.0], every=1, backoff=0.5, max_retries=3)
    report = _erase(
        memorized_gpt2, gate=gate, learning_rate=1e-3, max_steps=4, lr_recovery=recovery, select_scope="per_tensor"
    )
    steps = report["steps"]
    assert [s["learning_rate"] for s in steps] == pytest.approx(lrs)
    assert [s["rolled_back"] for s in steps] == [True, False, False, False, False]
    assert report["chunks"][0]["final_learning_rate"] == pytest.approx(min(1e-3, lrs[-1] * recovery))


def _update(config: EraseConfig) -> tuple[torch.nn.Parameter, SelectedUpdate, torch.Tensor]:
    """A 2x3 parameter with entries 1, 2 and 5 selected, and a known gradient on every entry."""
    p = torch.nn.Parameter(torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]]))
    selection = Selection({"w": torch.tensor([1, 2, 5])}, 6, {"w": 3})
    update = SelectedUpdate({"w": p}, selection, config, lr=config.learning_rate)
    grad = torch.tensor([[9.0, 3.0, -4.0], [7.0, 7.0, 0.0]])
    p.grad = grad.clone()
    return p, update, grad


def test_max_grad_norm_clips_the_selected_gradient_to_that_norm():
    config = EraseConfig(optimizer="sgd", learning_rate=0.5, max_grad_norm=1.0, gate=None)
    p, update, grad = _update(config)
    before = p.detach().clone()
    norm = update.step()
    # The selected gradient is (3, -4, 0): norm 5 (the unselected 9 and 7s do not count), scaled to norm 1.
    assert norm == pytest.approx(5.0)
    expected = before.clone().reshape(-1)
    expected[[1, 2, 5]] -= 0.5 * torch.tensor([3.0, -4.0, 0.0]) / 5.0
    assert torch.allclose(p.detach().reshape(-1), expected, atol=1e-6)
    unclipped = EraseConfig(optimizer="sgd", learning_rate=0.5, gate=None)
    q, update, _ = _update(unclipped)
    update.step()
    assert torch.allclose(q.detach().reshape(-1)[[1, 2]], before.reshape(-1)[[1, 2]] - 0.5 * torch.tensor([3.0, -4.0]))


def test_weight_decay_is_decoupled_and_only_on_the_selected_entries():
    lr, wd, eps = 0.1, 0.5, 1e-8
    config = EraseConfig(learning_rate=lr, weight_decay=wd, adam_epsilon=eps, gate=None)
    p, update, grad = _update(config)
    before = p.detach().clone().reshape(-1)
    update.step()
    # AdamW's first step: w <- w * (1 - lr * wd) - lr * m_hat / (sqrt(v_hat) + eps), m_hat = g, v_hat = g^2.
    idx = torch.tensor([1, 2, 5])
    g = grad.reshape(-1)[idx]
    expected = before.clone()
    expected[idx] = before[idx] * (1 - lr * wd) - lr * g / (g.abs() + eps)
    assert torch.allclose(p.detach().reshape(-1), expected, atol=1e-6)
    # Entry 5 has a zero gradient: only the decay moves it. Unselected entries are bitwise unchanged.
    assert p.detach().reshape(-1)[5] == pytest.approx(-1.0 * (1 - lr * wd))
    assert torch.equal(p.detach().reshape(-1)[[0, 3, 4]], before[[0, 3, 4]])
