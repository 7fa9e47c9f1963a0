"""Study 4 (recipes/studies/erasure.yaml) in --minimal mode, its numbers checked against hand computations.

The minimal recipe fine-tunes a tiny corpus for two epochs and erases its 4 most memorized sequences with
three arms (paper-faithful EMSO, EMSO's loss on every weight at a large lr, GA); the erased models are saved,
so held-out perplexity, the forget set and the set-mean MA are recomputed here from the models themselves
with plain HF forward passes, independently of obliviate.metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from obliviate.config import RecipeError
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


def _erased(out: Path, row: dict):
    """The erased model of ``row`` (the study saves weights only: the tokenizer is the SFT model's)."""
    path = out / "runs" / f"seed0-n24-e2-f4-{row['method']}-{row['selector']}" / "model"
    return AutoModelForCausalLM.from_pretrained(path).eval()


def _run(results, arm: str) -> dict:
    (row,) = [r for r in results["runs"] if r["arm"] == arm]
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
    assert [r["arm"] for r in results["runs"]] == ["emso", "entropy_only", "ga"]
    for r in results["runs"]:
        assert 0 <= r["forgotten"] <= 1 and 0 <= r["extraction_after"] <= 1 and len(r["forget_ids"]) == 4
        assert r["kl"] >= 0 and 0 <= r["mc_after"] <= 1 and r["wall_s"] > 0
        assert r["collapsed"] == (r["heldout_ppl_after"] > 2 * r["heldout_ppl_before"])
        assert r["heldout_ppl_change"] == pytest.approx(r["heldout_ppl_after"] / r["heldout_ppl_before"] - 1)
    md = (out / "erasure.md").read_text()
    assert "## Block minimal" in md and "| 4 | 24 | entropy_only | emso / all | 1 |" in md
    claim = md.split("## The claim")[1]  # the four main methods only: entropy_only is not one of them
    assert "| 4 | 24 | emso | emso / contrastive | 1 |" in claim and "entropy_only" not in claim
    assert (out / "erasure_forgetting_vs_utility.png").is_file()
    assert json.loads((out / "erasure.json").read_text())["minimal"] is True


def test_heldout_perplexity_and_kl_equal_a_plain_hf_computation(study):
    out, results = study
    texts = [r["text"] for r in read_jsonl(out / "models" / "seed0-n24-e2" / "heldout.jsonl")]
    original, tokenizer = _load(out / "models" / "seed0-n24-e2" / "track" / "model")
    before = _hand_perplexity(original, tokenizer, texts)
    for arm in ("emso", "entropy_only", "ga"):
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


def test_bad_erasure_recipes_say_what_to_change():
    with pytest.raises(RecipeError, match="neither one of emso"):
        load_study(RECIPE, ErasureStudyConfig, overrides={"blocks": [{"name": "x", "sizes": [8], "arms": ["emso2"]}]})
    with pytest.raises(RecipeError, match="gate: null"):
        load_study(RECIPE, ErasureStudyConfig, overrides={"erase": {"gate": "default"}})
    with pytest.raises(RecipeError, match="not among the study's seeds"):
        load_study(
            RECIPE,
            ErasureStudyConfig,
            overrides={"blocks": [{"name": "x", "sizes": [8], "seeds": [9], "arms": ["ga"]}]},
        )
    with pytest.raises(StudyError, match="raise n_members"):
        from obliviate.studies.erasure_runs import SeedModel

        SeedModel(Path("."), None, None, None, [{"id": "a"}], {}).forget_set(2)
