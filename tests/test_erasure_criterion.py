"""The forgetting criterion is judged against controls of the same group scored on the CURRENT model; retain text is
split so the gate never reads what a loss trains on; --heldout may not hold the forget set; retain NLL is
padding-independent."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from obliviate.data import ProbeSet
from obliviate.data.probes import ProbeError
from obliviate.erasure import EraseConfig, Eraser
from obliviate.erasure.config import EraseConfigError
from obliviate.erasure.criterion import build_criterion
from obliviate.erasure.inputs import split_retain
from obliviate.erasure.result import last_line
from obliviate.metrics import score_probes
from tests.helpers import tiny_model

FORGET = ["canary-x8-0", "canary-x8-1"]


def _regroup(probes: ProbeSet, group: str) -> ProbeSet:
    """The same probes with one group, so every control calibrates every probe (the fixture has 8 per format)."""
    out = []
    for p in probes:
        q = copy.copy(p)
        q.meta = {**p.meta, "group": group}
        out.append(q)
    return ProbeSet(out)


def _mean_ma(model, tok, probes) -> float:
    rows = score_probes(model, tok, probes)
    return sum(r["memorization_accuracy"] for r in rows) / len(rows)


def _quantile_ma(model, tok, probes, q: float = 0.9) -> float:
    """The controls' MA q-quantile, by numpy (linear interpolation) on the scorer's rows: the criterion's oracle."""
    import numpy as np

    return float(np.percentile([r["memorization_accuracy"] for r in score_probes(model, tok, probes)], 100 * q))


def test_thresholds_come_from_the_controls_on_the_current_model(memorized_gpt2):
    """A format wiped wholesale is not forgetting: the same forget scores that beat the controls of the memorized
    model do not beat the controls of a model whose format is gone (a fresh init: controls' MA ~0)."""
    mem = memorized_gpt2
    controls = _regroup(mem.probes.by_role("control"), "all")
    forget = _regroup(mem.probes.subset(FORGET), "all")
    config = EraseConfig(min_group_controls=10)
    criterion = build_criterion(config, controls)
    wiped = tiny_model("gpt2", mem.tokenizer, seed=7).eval()
    ma_memorized = _quantile_ma(mem.model, mem.tokenizer, controls)
    ma_wiped = _quantile_ma(wiped, mem.tokenizer, controls)
    assert ma_wiped < ma_memorized
    # Forget scores between the two control means: not extractable, improbable.
    scores = {
        "exact_extraction": torch.zeros(2, dtype=torch.long),
        "memorization_accuracy": torch.full((2,), (ma_memorized + ma_wiped) / 2),
        "extraction_probability": torch.zeros(2),
    }
    forgotten, _ = criterion.check(mem.model, mem.tokenizer, forget, scores)
    assert forgotten.tolist() == [True, True]
    assert criterion.last["groups"]["all"]["memorization_accuracy"] == pytest.approx(ma_memorized, abs=1e-6)
    forgotten, _ = criterion.check(wiped, mem.tokenizer, forget, scores)
    assert forgotten.tolist() == [False, False]
    assert criterion.last["groups"]["all"]["memorization_accuracy"] == pytest.approx(ma_wiped, abs=1e-6)
    assert criterion.to_dict()["first"]["groups"]["all"]["source"] == "controls"
    assert criterion.to_dict()["control_quantile"] == 0.9


def test_control_quantile_null_is_the_controls_mean(memorized_gpt2):
    """control_quantile: null keeps the mean rule; a quantile above the median is never stricter than the mean."""
    mem = memorized_gpt2
    controls = _regroup(mem.probes.by_role("control"), "all")
    forget = _regroup(mem.probes.subset(FORGET), "all")
    mean = build_criterion(EraseConfig(min_group_controls=10, control_quantile=None), controls)
    mean.check(mem.model, mem.tokenizer, forget)
    assert mean.last["groups"]["all"]["memorization_accuracy"] == pytest.approx(
        _mean_ma(mem.model, mem.tokenizer, controls), abs=1e-6
    )
    q = build_criterion(EraseConfig(min_group_controls=10, control_quantile=0.5), controls)
    q.check(mem.model, mem.tokenizer, forget)
    assert q.last["groups"]["all"]["memorization_accuracy"] == pytest.approx(
        _quantile_ma(mem.model, mem.tokenizer, controls, 0.5), abs=1e-6
    )
    with pytest.raises(EraseConfigError, match="control_quantile"):
        EraseConfig(control_quantile=1.5)


def test_wholesale_erasure_is_not_reported_as_success(memorized_gpt2):
    """End to end: GA on every weight with a large step destroys the whole format. The thresholds the report judges
    by are the controls' on the erased model (not the pre-erasure ones), and the verdict says the format is gone."""
    mem = memorized_gpt2
    controls = _regroup(mem.probes.by_role("control"), "all")
    forget = _regroup(mem.probes.subset(FORGET), "all")
    # control_quantile null: thresholds are the controls' means, which the collateral section also reports.
    config = EraseConfig(
        method="ga",
        selector="all",
        learning_rate=3e-2,
        max_steps=6,
        score_every=6,
        gate=None,
        min_group_controls=10,
        control_quantile=None,
    )
    report = Eraser(mem.fresh(), mem.tokenizer, forget, config, controls=controls).erase().report
    after = report["collateral"]["controls"]["all"]
    assert after["memorization_accuracy_after"] < 0.75 * after["memorization_accuracy_before"]  # format wiped
    first, last = report["thresholds"]["first"]["groups"]["all"], report["thresholds"]["last"]["groups"]["all"]
    assert first["memorization_accuracy"] == pytest.approx(after["memorization_accuracy_before"], abs=1e-6)
    assert last["memorization_accuracy"] == pytest.approx(after["memorization_accuracy_after"], abs=1e-6)
    now = max(last["extraction_probability"], config.extraction_probability_floor)
    by_now = sum(
        s["after"]["memorization_accuracy"] <= last["memorization_accuracy"]
        and s["after"]["extraction_probability"] <= now
        and not s["after"]["exact_extraction"]
        for s in report["sequences"]
    )
    assert report["summary"]["forgotten"] == by_now
    assert report["summary"]["format_damage"] and "group 'all' kept" in report["summary"]["format_damage"][0]
    assert last_line(report).startswith(("FORMAT DAMAGED", "NOT ERASED"))
    assert "erased all" not in last_line(report)


def test_a_group_with_few_controls_is_judged_by_absolute_thresholds(memorized_gpt2, caplog):
    mem = memorized_gpt2
    controls = mem.probes.by_role("control")  # 8 per group in the fixture
    with caplog.at_level(logging.WARNING, logger="obliviate.erasure.criterion"):
        criterion = build_criterion(EraseConfig(), controls)
        criterion.check(mem.model, mem.tokenizer, mem.probes.subset(FORGET))
    pin = criterion.last["groups"]["pin"]
    assert pin["source"] == "absolute" and pin["memorization_accuracy"] == EraseConfig().max_memorization_accuracy
    assert "fewer than 10" in caplog.text and "absolute" in caplog.text
    assert any("group 'pin' has 8 control(s)" in n for n in criterion.to_dict()["notes"])
    criterion = build_criterion(EraseConfig(min_group_controls=8), controls)
    criterion.check(mem.model, mem.tokenizer, mem.probes.subset(FORGET))
    assert criterion.last["groups"]["pin"]["source"] == "controls" and criterion.last["groups"]["pin"]["controls"] == 8


def test_set_mean_needs_an_el_setting_and_judges_the_set(memorized_gpt2):
    with pytest.raises(EraseConfigError, match="set_mean .* needs el_n"):
        EraseConfig(criterion="set_mean")
    mem = memorized_gpt2
    criterion = build_criterion(EraseConfig(criterion="set_mean", el_n=2, el_stride=4, thresholds="absolute"), None)
    forgotten, _ = criterion.check(mem.model, mem.tokenizer, mem.probes.subset(FORGET))
    # Memorized canaries: the set's full-sequence MA and EL_2 are far above the absolute thresholds.
    assert forgotten.tolist() == [False, False] and criterion.last["set_extraction_likelihood"] > 0.05
    wiped = tiny_model("gpt2", mem.tokenizer, seed=7).eval()
    forgotten, _ = criterion.check(wiped, mem.tokenizer, mem.probes.subset(FORGET))
    assert forgotten.tolist() == [True, True]


def test_retain_split_is_disjoint_deterministic_and_order_free():
    texts = [f"row {i}" for i in range(40)] + ["row 3"]  # a duplicate stays in one part
    a = split_retain(texts, 0.5, 0.25, loss_uses_retain=True)
    b = split_retain(list(reversed(texts)), 0.5, 0.25, loss_uses_retain=True)
    assert set(a.loss) == set(b.loss) and set(a.gate) == set(b.gate) and set(a.audit) == set(b.audit)
    assert not (set(a.loss) & set(a.gate)) and not (set(a.gate) & set(a.audit)) and not (set(a.loss) & set(a.audit))
    assert (len(a.gate), len(a.audit), len(a.loss)) == (20, 10, 10)
    c = split_retain(texts, 0.5, 0.25, loss_uses_retain=False)  # nothing trains on retain: the gate gets the rest
    assert (len(c.gate), len(c.audit), len(c.loss)) == (30, 10, 0)


def test_no_loss_reads_gate_rows(memorized_gpt2, tmp_path):
    mem = memorized_gpt2
    texts = [f"Fact. The sea of town {i} is calm." for i in range(20)]
    eraser = Eraser(mem.fresh(), mem.tokenizer, mem.probes.subset(FORGET), EraseConfig(method="graddiff"), retain=texts)
    gate_rows = {r["text"] for b in eraser.gate.suite for _, r in b.rows}
    assert gate_rows and not gate_rows & set(eraser.retain_texts)
    assert eraser.retain_texts and set(eraser.retain_texts) | gate_rows | set(eraser.split.audit) == set(texts)
    # A gate section that reads the loss's rows is refused.
    trained = [{"text": t} for t in eraser.retain_texts]
    section = {"benchmarks": [{"name": "perplexity", "data": trained, "label": "mine"}]}
    with pytest.raises(ProbeError, match="'mine' reads .* the erasure's retain loss trains on"):
        Eraser(
            mem.fresh(),
            mem.tokenizer,
            mem.probes.subset(FORGET),
            EraseConfig(method="graddiff", gate=section),
            retain=texts,
        )


def test_neighbors_join_the_retain_term_and_no_gate_or_audit(memorized_gpt2, tmp_path):
    mem = memorized_gpt2
    forget = mem.probes.subset(FORGET)
    texts = [f"Fact. The sea of town {i} is calm." for i in range(20)]
    neighbors = [f"Fact. The flag of town {90 + i} is green." for i in range(6)]
    path = tmp_path / "neighbors.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in neighbors))
    eraser = Eraser(mem.fresh(), mem.tokenizer, forget, EraseConfig(method="graddiff"), retain=texts, neighbors=path)
    gate_rows = {r["text"] for b in eraser.gate.suite for _, r in b.rows}
    assert set(neighbors) <= set(eraser.retain_texts) and set(eraser.split.loss) <= set(eraser.retain_texts)
    assert not gate_rows & set(neighbors) and not set(eraser.split.audit) & set(neighbors)
    assert eraser.log.retain_split["neighbor_rows"] == 6
    # Only a retain term reads them: with none, they would be silently unused.
    with pytest.raises(ValueError, match="--neighbors are read only by a retain term, and method 'emso'"):
        Eraser(mem.fresh(), mem.tokenizer, forget, EraseConfig(), retain=texts, neighbors=neighbors)
    # A neighbor that holds a sequence being erased cannot be kept.
    clash = [*neighbors, "Quoted: " + forget[0].prefix + forget[0].suffix]
    with pytest.raises(ProbeError, match=r"--neighbors overlaps the forget set in 1 row\(s\): row 7 holds canary-x8-0"):
        Eraser(mem.fresh(), mem.tokenizer, forget, EraseConfig(method="graddiff"), retain=texts, neighbors=clash)


def test_heldout_overlapping_the_forget_set_is_an_error_naming_the_rows(memorized_gpt2, tmp_path):
    mem = memorized_gpt2
    forget = mem.probes.subset(FORGET)
    rows = [
        {"text": "Fact. Nothing to see here."},
        {"text": forget[1].prefix + forget[1].suffix},
        {"text": "Quoted: " + forget[0].prefix + forget[0].suffix + " (again)"},
    ]
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        ProbeError,
        match=rf"overlaps the forget set in 2 row\(s\): {path}:2 holds canary-x8-1; "
        rf"{path}:3 holds canary-x8-0",
    ):
        Eraser(mem.fresh(), mem.tokenizer, forget, EraseConfig(gate=None), heldout=str(path))


def test_retain_nll_does_not_depend_on_padding_side(memorized_gpt2):
    """The contrastive_retain selector's retain NLL: same value with a left- or right-padding tokenizer, equal to
    the token-mean NLL of each row computed alone, unpadded."""
    mem = memorized_gpt2
    texts = [f"Fact. The flag of town {i} is" + " red" * (1 + 3 * i) + "." for i in range(8)]  # lengths differ
    values = []
    for side in ("left", "right"):
        tok = copy.deepcopy(mem.tokenizer)
        tok.padding_side = side
        eraser = Eraser(
            mem.fresh(),
            tok,
            mem.probes.subset(FORGET),
            EraseConfig(selector="contrastive_retain", gate_fraction=0.5, audit_fraction=0.0),
            retain=texts,
        )
        eraser._prepare_model()
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            (terms,) = list(eraser._losses(eraser.forget, [], None, generator, ("retain_nll",)))
        values.append(float(terms["retain_nll"]))
        rows = eraser._retain_rows(torch.Generator().manual_seed(0))
    assert len({len(r) for r in rows}) > 1  # padding is really needed
    assert values[0] == pytest.approx(values[1], abs=1e-6)
    nll, count = 0.0, 0
    for ids in rows:
        with torch.no_grad():
            lp = mem.model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        nll -= float(lp.gather(-1, torch.tensor(ids[1:])[:, None]).sum())
        count += len(ids) - 1
    assert values[0] == pytest.approx(nll / count, rel=1e-5)


def test_clipped_ga_pulls_only_tokens_still_predicted():
    """L_i = sum over active t of log p_t(y_t) / |valid_i|; active = argmax is y_t or p_t(y_t) > clip_probability."""
    from obliviate.erasure.losses import SuffixOutput, get_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, requires_grad=True)
    targets = torch.tensor([[0, 1, 2, 3], [4, 5, 0, 1]])
    with torch.no_grad():
        logits[0, 0, 0] = 5.0  # predicted: active
        logits[0, 1, 1] = -5.0  # unlikely and not the argmax: inactive
    valid = torch.tensor([[True] * 4, [True, True, True, False]])
    loss = get_loss(EraseConfig(method="clipped_ga", clip_probability=0.2))
    got = loss.sequence_losses(SuffixOutput(logits, targets, valid))
    lp = logits.detach().double().log_softmax(-1)
    expected = []
    for b in range(2):
        total, n = 0.0, int(valid[b].sum())
        for t in range(n):
            p = lp[b, t, targets[b, t]]
            if lp[b, t].argmax() == targets[b, t] or p.exp() > 0.2:
                total += float(p)
        expected.append(total / n)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    got.sum().backward()
    assert logits.grad[0, 1].abs().sum() == 0  # the inactive token pulls nothing
    assert logits.grad[0, 0].abs().sum() > 0
