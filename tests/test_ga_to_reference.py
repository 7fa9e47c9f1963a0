"""``method: ga_to_reference``: the reference model's token log-likelihoods, scored once, floor each forget token.

python -m pytest -q tests/test_ga_to_reference.py
"""

from __future__ import annotations

import pytest
import torch

from obliviate.erasure import EraseConfig, Eraser
from obliviate.modeling import ModelLoadError
from tests.test_erasure import FAST, FORGET, _retain_texts, saved_base


def _eraser(mem, **overrides):
    config = EraseConfig(**{**FAST, "method": "ga_to_reference", "reference_model": saved_base(mem), **overrides})
    return Eraser(mem.fresh(), mem.tokenizer, mem.probes.subset(FORGET), config, retain=_retain_texts())


def test_token_reference_is_the_reference_models_unpadded_likelihood(memorized_gpt2):
    mem = memorized_gpt2
    eraser = _eraser(mem)
    for probe in mem.probes.subset(FORGET):
        ids = torch.tensor([probe.prefix_ids + probe.suffix_ids])
        with torch.no_grad():
            logits = mem.base(input_ids=ids).logits[0, len(probe.prefix_ids) - 1 : -1]
        direct = logits.log_softmax(-1).gather(-1, torch.tensor(probe.suffix_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(eraser.token_reference[probe.id], direct, rtol=1e-4, atol=1e-5)
        # The memorized model finds its canaries far likelier than the model it was fine-tuned from.
        with torch.no_grad():
            own = mem.model(input_ids=ids).logits[0, len(probe.prefix_ids) - 1 : -1].log_softmax(-1)
        own = own.gather(-1, torch.tensor(probe.suffix_ids)[:, None]).squeeze(-1)
        assert (own - direct).mean() > 1.0


def test_token_reference_in_log_odds_space_is_the_reference_models_log_odds(memorized_gpt2):
    mem = memorized_gpt2
    eraser = _eraser(mem, method_args={"space": "log_odds"})
    for probe in mem.probes.subset(FORGET):
        ids = torch.tensor([probe.prefix_ids + probe.suffix_ids])
        with torch.no_grad():
            logits = mem.base(input_ids=ids).logits[0, len(probe.prefix_ids) - 1 : -1].double()
        p = logits.softmax(-1).gather(-1, torch.tensor(probe.suffix_ids)[:, None]).squeeze(-1)
        direct = (p.log() - (1 - p).log()).float()
        torch.testing.assert_close(eraser.token_reference[probe.id], direct, rtol=1e-4, atol=1e-4)


def test_erasure_stops_at_the_reference_when_the_reference_is_the_model_itself(memorized_gpt2, tmp_path):
    """Reference = the memorized model: no token is likelier than the reference finds it, so nothing moves."""
    mem = memorized_gpt2
    mem.model.save_pretrained(tmp_path / "same")
    mem.tokenizer.save_pretrained(tmp_path / "same")
    eraser = _eraser(mem, reference_model=str(tmp_path / "same"), max_steps=3, method_args={"retain_weight": 0})
    before = [p.detach().clone() for p in eraser.model.parameters()]
    result = eraser.erase()
    assert all(torch.equal(a, b) for a, b in zip(before, result.model.parameters()))
    assert result.report["summary"]["forgotten"] == 0


def test_a_missing_reference_model_fails_before_any_work(memorized_gpt2, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        _eraser(memorized_gpt2, reference_model=str(tmp_path / "nowhere"))


def test_the_report_gives_the_controls_ma_on_the_reference_model(memorized_gpt2):
    """Where the never-trained controls stood before the fine-tuning, so a fall in their MA back to that level
    reads as the fine-tuning's own lesson reverted, not as damage below it."""
    from obliviate.erasure.result import format_summary
    from obliviate.metrics import score_probes

    mem = memorized_gpt2
    controls = mem.probes.by_role("control")
    config = EraseConfig(**{**FAST, "method": "ga_to_reference", "reference_model": saved_base(mem), "max_steps": 2})
    eraser = Eraser(
        mem.fresh(), mem.tokenizer, mem.probes.subset(FORGET), config, retain=_retain_texts(), controls=controls
    )
    report = eraser.erase().report
    on_base = score_probes(mem.base, mem.tokenizer, controls)
    for group, change in report["collateral"]["controls"].items():
        rows = [r for r, p in zip(on_base, controls) if p.group == group]
        expected = sum(r["memorization_accuracy"] for r in rows) / len(rows)
        assert change["memorization_accuracy_reference"] == pytest.approx(expected, abs=1e-6)
    assert report["controls"]["reference"]["count"] == len(controls)
    assert "MA reference" in format_summary(report)
