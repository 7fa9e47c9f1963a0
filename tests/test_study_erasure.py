"""Study 4 (recipes/studies/erasure.yaml) in --minimal mode, its numbers checked against hand computations.

The minimal recipe fine-tunes a tiny corpus for two epochs and erases its 4 most memorized sequences with
three arms (paper-faithful EMSO, EMSO's loss on every weight at a large lr, GA), and again under the product's
gate with GA and ga_to_reference; the erased models are saved, so held-out and gate-text perplexity, the forget
set and the set-mean MA are recomputed here from the models themselves with plain HF forward passes,
independently of obliviate.metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from obliviate.config import RecipeError
from obliviate.erasure.inputs import split_retain
from obliviate.studies import run_recipe
from obliviate.studies.common import StudyError, load_study, read_jsonl
from obliviate.studies.erasure import ErasureStudyConfig

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "studies" / "erasure.yaml"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("erasure")
    return out, run_recipe(RECIPE, out, minimal=True)


def _load(path: Path):
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _run_dir(out: Path, row: dict) -> Path:
    gated = "-gated" if row["gate"] == "default" else ""
    method = row["method"].replace(":", "-")  # emso:entropy names its run emso-entropy
    return out / "runs" / f"seed0-n24-e2-f4-{method}-{row['selector']}{gated}"


def _erased(out: Path, row: dict):
    """The erased model of ``row`` (the study saves weights only: the tokenizer is the SFT model's)."""
    return AutoModelForCausalLM.from_pretrained(_run_dir(out, row) / "model").eval()


def _run(results, arm: str, gate=None) -> dict:
    (row,) = [r for r in results["runs"] if r["arm"] == arm and r["gate"] == gate]
    return row


def _hand_perplexity(model, tokenizer, texts: list[str]) -> float:
    """exp(sum of next-token NLLs / predicted tokens) over all texts (token-weighted)."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            logp = model(ids).logits[0, :-1].log_softmax(-1)
            total -= logp.gather(1, ids[0, 1:, None]).sum().item()
            tokens += ids.shape[1] - 1
    return math.exp(total / tokens)


def _hand_kl(original, erased, tokenizer, texts: list[str]) -> float:
    """Token-weighted mean of KL(P_original || Q_erased) over every predicted position of every text (nats)."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            p = original(ids).logits[0, :-1].double().log_softmax(-1)
            q = erased(ids).logits[0, :-1].double().log_softmax(-1)
            total += (p.exp() * (p - q)).sum().item()
            tokens += ids.shape[1] - 1
    return total / tokens


def _greedy_hits(model, ids: list[int], start: int) -> list[bool]:
    """Teacher-forced argmax == the true token at every position from ``start`` on."""
    with torch.no_grad():
        pred = model(torch.tensor([ids])).logits[0, :-1].argmax(-1).tolist()
    return [pred[t - 1] == ids[t] for t in range(start, len(ids))]


def test_every_arm_ran_and_its_numbers_are_sane(study):
    out, results = study
    assert [r["arm"] for r in results["runs"] if r["gate"] is None] == ["emso", "emso_entropy", "entropy_only", "ga"]
    assert [r["arm"] for r in results["runs"] if r["gate"] == "default"] == ["ga", "ga_to_reference"]
    for r in results["runs"]:
        assert 0 <= r["forgotten"] <= 1 and 0 <= r["extraction_after"] <= 1 and len(r["forget_ids"]) == 4
        assert r["kl"] >= 0 and 0 <= r["mc_after"] <= 1 and r["wall_s"] > 0
        assert r["collapsed"] == (r["heldout_ppl_after"] > 2 * r["heldout_ppl_before"])
        assert r["heldout_ppl_change"] == pytest.approx(r["heldout_ppl_after"] / r["heldout_ppl_before"] - 1)
    md = (out / "erasure.md").read_text()
    assert "## Block minimal" in md and "| 4 | 24 | entropy_only | emso / all | 1 |" in md
    claim = md.split("## The claim")[1]  # the four main methods only, ungated: entropy_only is not one of them
    assert "| 4 | 24 | emso | emso / contrastive | 1 |" in claim and "entropy_only" not in claim
    assert "| 4 | 24 | emso_entropy | emso:entropy / contrastive | 1 |" in md and "emso_entropy" not in claim
    assert claim.count("| 4 | 24 | ga | ga / all | 1 |") == 1 and "ga_to_reference" not in claim
    gated = md.split("## Block gated")[1].split("## The claim")[0]
    assert "gate rejections" in gated and "| 4 | 24 | ga_to_reference | ga_to_reference / contrastive | 1 |" in gated
    assert (out / "erasure_forgetting_vs_utility.png").is_file()
    # The curves: when each sequence was forgotten, consistent with the run's own end state and step count.
    assert (out / "erasure_forgetting_curves.png").is_file()
    for r in results["runs"]:
        at = r["forgotten_at"]
        assert len(at) == 4 and sum(s is not None for s in at) / 4 == pytest.approx(r["forgotten"])
        # Steps count every attempt: under the gate (every: 1) one gate check each, rolled-back ones included.
        last = r["steps"] if r["gate"] is None else r["gate_checks"]
        assert all(0 <= s <= last for s in at if s is not None)
    assert json.loads((out / "erasure.json").read_text())["minimal"] is True


def test_heldout_perplexity_and_kl_equal_a_plain_hf_computation(study):
    out, results = study
    texts = [r["text"] for r in read_jsonl(out / "models" / "seed0-n24-e2" / "heldout.jsonl")]
    original, tokenizer = _load(out / "models" / "seed0-n24-e2" / "track" / "model")
    before = _hand_perplexity(original, tokenizer, texts)
    for arm in ("emso", "emso_entropy", "entropy_only", "ga"):
        row = _run(results, arm)
        erased = _erased(out, row)
        assert row["heldout_ppl_before"] == pytest.approx(before, rel=1e-4)
        assert row["heldout_ppl_after"] == pytest.approx(_hand_perplexity(erased, tokenizer, texts), rel=1e-4)
        assert row["kl"] == pytest.approx(_hand_kl(original, erased, tokenizer, texts), rel=1e-3, abs=1e-6)


def test_the_forget_set_is_the_most_memorized_and_all_weights_at_a_big_lr_move_the_model(study):
    out, results = study
    original, tokenizer = _load(out / "models" / "seed0-n24-e2" / "track" / "model")
    probes = [p for p in read_jsonl(out / "models" / "seed0-n24-e2" / "probes.jsonl") if p["role"] != "control"]
    ma = {}
    for p in probes:
        start = len(tokenizer(p["prompt"])["input_ids"])
        ma[p["id"]] = sum(hits := _greedy_hits(original, tokenizer(p["prompt"] + p["completion"])["input_ids"], start))
        ma[p["id"]] /= len(hits)
    chosen = set(_run(results, "emso")["forget_ids"])
    assert min(ma[i] for i in chosen) >= max(ma[i] for i in ma if i not in chosen) - 1e-9
    before = dict(original.named_parameters())
    moved = {}
    for arm in ("emso", "entropy_only"):
        row = _run(results, arm)
        erased = _erased(out, row)
        changed = sum(int((p != before[n]).sum()) for n, p in erased.named_parameters())
        moved[arm] = changed / sum(p.numel() for p in erased.parameters())
    # EMSO updates its 1% selection only; EMSO's loss on every weight at lr 3e-2 moves (nearly) all of them.
    assert 0 < moved["emso"] <= 0.011 and moved["entropy_only"] > 0.5
    big = _run(results, "entropy_only")
    assert big["kl"] > 0.1 and big["forgotten"] == 1.0


def test_emso_entropy_runs_the_negative_entropy_loss_on_its_own_selection(study):
    """emso_entropy is EMSO with entropy_variant "entropy" (-H(p_t)), not a relabelled uniform_ce run: the run's
    config says so, it moves at most its 1% selection, and it lands on a different model than emso."""
    out, results = study
    original, _ = _load(out / "models" / "seed0-n24-e2" / "track" / "model")
    rows = {arm: _run(results, arm) for arm in ("emso", "emso_entropy")}
    reports = {arm: json.loads((_run_dir(out, r) / "erasure_report.json").read_text()) for arm, r in rows.items()}
    assert reports["emso_entropy"]["config"]["method_args"]["entropy_variant"] == "entropy"
    assert reports["emso"]["config"]["method_args"]["entropy_variant"] == "uniform_ce"
    before = dict(original.named_parameters())
    erased = {arm: dict(_erased(out, r).named_parameters()) for arm, r in rows.items()}
    total = sum(p.numel() for p in before.values())
    changed = sum(int((p != before[n]).sum()) for n, p in erased["emso_entropy"].items())
    assert 0 < changed / total <= 0.011
    assert any(not torch.equal(p, erased["emso"][n]) for n, p in erased["emso_entropy"].items())


def test_set_mean_ma_is_the_mean_full_sequence_ma_of_the_erased_model(study):
    out, results = study
    row = _run(results, "ga")
    erased = _erased(out, row)
    _, tokenizer = _load(out / "models" / "seed0-n24-e2" / "track" / "model")
    by_id = {p["id"]: p for p in read_jsonl(out / "models" / "seed0-n24-e2" / "probes.jsonl")}
    per_sequence = []
    for i in row["forget_ids"]:
        hits = _greedy_hits(erased, tokenizer(by_id[i]["prompt"] + by_id[i]["completion"])["input_ids"], 1)
        per_sequence.append(sum(hits) / len(hits))
    assert row["set_mean"]["ma"] == pytest.approx(sum(per_sequence) / len(per_sequence), abs=1e-6)
    assert row["set_mean"]["forgotten"] == (
        row["set_mean"]["ma"] <= row["set_mean"]["threshold_ma"]
        and row["set_mean"]["el"] <= row["set_mean"]["threshold_el"]
    )


def test_gated_runs_report_the_gates_decisions_and_stay_within_its_bounds(study):
    out, results = study
    original, tokenizer = _load(out / "models" / "seed0-n24-e2" / "track" / "model")
    for arm, uses_retain in (("ga", False), ("ga_to_reference", True)):  # ga_to_reference has a retain NLL term
        row = _run(results, arm, gate="default")
        report = json.loads((_run_dir(out, row) / "erasure_report.json").read_text())
        decisions = report["gate_decisions"]
        # Under gate every: 1, one decision per attempted step; the row counts what the report records.
        assert len(decisions) == row["gate_checks"] == report["summary"]["attempted_steps"] > 0
        assert row["gate_rejections"] == sum(d["decision"] == "rejected" for d in decisions)
        assert row["chunks_gate_exhausted"] == sum(c["status"] == "gate_exhausted" for c in report["chunks"])
        before, after = report["utility"]["before"]["heldout_ppl"], report["utility"]["after"]["heldout_ppl"]
        assert row["heldout_ppl_change"] == pytest.approx(after["perplexity"] / before["perplexity"] - 1, rel=1e-9)
        # The gate's text: the retain rows left after dropping the forget set, its gate-only part (read by no loss).
        forget = {
            p["prompt"] + p["completion"]
            for p in read_jsonl(out / "models" / "seed0-n24-e2" / "probes.jsonl")
            if p["id"] in row["forget_ids"]
        }
        retain = [r["text"] for r in read_jsonl(out / "models" / "seed0-n24-e2" / "retain.jsonl")]
        split = split_retain([t for t in retain if t.strip() not in forget], 0.5, 0.25, uses_retain)
        assert len(split.gate) == report["retain_split"]["gate_rows"] and not set(split.gate) & set(split.loss)
        ppl_before = _hand_perplexity(original, tokenizer, split.gate)
        ppl_after = _hand_perplexity(_erased(out, row), tokenizer, split.gate)
        assert report["gate"]["baseline"]["gate_ppl"]["perplexity"] == pytest.approx(ppl_before, rel=1e-4)
        assert -0.10 <= ppl_after / ppl_before - 1 <= 0.02  # the default gate's two-sided perplexity bound
    # GA on every weight at lr 3e-2 breaks the gate at once (ungated, one step took held-out ppl x100+):
    # the gate must have rolled it back, and the model it kept is the one it accepted.
    ga = _run(results, "ga", gate="default")
    assert ga["gate_rejections"] >= 1 and _run(results, "ga")["heldout_ppl_change"] > 1
    assert ga["heldout_ppl_change"] < 0.02
    moved = _run(results, "ga_to_reference", gate="default")
    assert moved["steps"] > 0 and moved["kl"] > 0


def test_controls_are_128_per_group_of_never_trained_text(study):
    out, results = study
    controls = read_jsonl(out / "models" / "seed0-n24-e2" / "controls.jsonl")
    trained = {p["prompt"] + p["completion"] for p in read_jsonl(out / "models" / "seed0-n24-e2" / "train.jsonl")}
    assert {g: sum(c["group"] == g for c in controls) for g in ("pin", "record")} == {"pin": 128, "record": 128}
    assert all(c["role"] == "control" and c["prompt"] + c["completion"] not in trained for c in controls)
    row = _run(results, "emso")
    report = json.loads((_run_dir(out, row) / "erasure_report.json").read_text())
    assert {g: c["count"] for g, c in report["collateral"]["controls"].items()} == {"pin": 128, "record": 128}


def test_bad_erasure_recipes_say_what_to_change():
    with pytest.raises(RecipeError, match="neither one of emso"):
        load_study(RECIPE, ErasureStudyConfig, overrides={"blocks": [{"name": "x", "sizes": [8], "arms": ["emso2"]}]})
    with pytest.raises(RecipeError, match="gate: null"):
        load_study(RECIPE, ErasureStudyConfig, overrides={"erase": {"gate": "default"}})
    with pytest.raises(RecipeError, match="block x: gate: gate must be a mapping, 'default' or null"):
        load_study(
            RECIPE,
            ErasureStudyConfig,
            overrides={"blocks": [{"name": "x", "sizes": [8], "arms": ["ga"], "gate": "strict"}]},
        )
    with pytest.raises(RecipeError, match="not among the study's seeds"):
        load_study(
            RECIPE,
            ErasureStudyConfig,
            overrides={"blocks": [{"name": "x", "sizes": [8], "seeds": [9], "arms": ["ga"]}]},
        )
    with pytest.raises(RecipeError, match="only emso takes a variant"):
        load_study(
            RECIPE, ErasureStudyConfig, overrides={"blocks": [{"name": "x", "sizes": [8], "arms": ["ga:entropy/all"]}]}
        )
    with pytest.raises(RecipeError, match="only emso takes a variant"):
        load_study(
            RECIPE, ErasureStudyConfig, overrides={"blocks": [{"name": "x", "sizes": [8], "arms": ["emso:log/all"]}]}
        )
    with pytest.raises(RecipeError, match="only_blocks must be a non-empty list of block names"):
        load_study(RECIPE, ErasureStudyConfig, overrides={"only_blocks": ["nope"]})
    only = load_study(RECIPE, ErasureStudyConfig, overrides={"only_blocks": ["entropy"]})
    assert [b.name for b in only.blocks] == ["entropy"] and {r[2] for r in only.runs()} == {
        "emso",
        "emso:entropy",
        "ga",
    }
    with pytest.raises(StudyError, match="raise n_members"):
        from obliviate.studies.erasure_runs import SeedModel

        SeedModel(Path("."), None, None, None, None, [{"id": "a"}], {}).forget_set(2)


def test_forgetting_curve_counts_sequences_forgotten_by_each_step():
    """Two seeds of a 4-sequence set: the curve is the mean share forgotten by step k (None: never)."""
    import numpy as np

    from obliviate.studies.erasure_report import curve

    rows = [{"forgotten_at": [1, 3, None, 3]}, {"forgotten_at": [2, 2, 2, 2]}]
    got = curve(rows, np.arange(5))
    assert got.tolist() == pytest.approx([0.0, 0.125, 0.625, 0.875, 0.875])
