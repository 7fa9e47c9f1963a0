"""The study recipes (recipes/studies/*.yaml) in --minimal mode, checked against hand computations.

Each study runs once per module (a few SFT steps on the cached toy); the tests recompute what the
study reports from the files the run wrote (history.jsonl, summaries.jsonl, train.jsonl) by the
published definitions, written out here independently of obliviate.metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from obliviate.config import RecipeError
from obliviate.studies import run_recipe
from obliviate.studies.common import StudyError, load_study, read_jsonl

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "studies"


def _last_rows(history: Path, roles=("member", "canary")) -> list[dict]:
    rows = read_jsonl(history)
    last = max(r["step"] for r in rows)
    return [r for r in rows if r["step"] == last and r["role"] in roles]


def _gini_by_pairs(x) -> float:
    """Gini as the mean absolute difference over all pairs / (2 * mean) (Gini 1912), not the sorted formula."""
    x = np.asarray(x, float)
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean()))


@pytest.fixture(scope="module")
def skew(tmp_path_factory):
    out = tmp_path_factory.mktemp("skew")
    return out, run_recipe(RECIPES / "skew.yaml", out, minimal=True)


@pytest.fixture(scope="module")
def density(tmp_path_factory):
    out = tmp_path_factory.mktemp("density")
    return out, run_recipe(RECIPES / "density.yaml", out, minimal=True)


def test_skew_tails_equal_a_hand_computation_on_the_history(skew):
    out, results = skew
    from obliviate.studies.skew import SkewConfig

    config = load_study(RECIPES / "skew.yaml", SkewConfig, minimal=True)
    n = config.base_members
    rows = _last_rows(out / "runs" / f"seed0-n{n}" / "track" / "memorization" / "history.jsonl")
    assert len(rows) == n + 16  # every member and canary of the run, nothing else
    reported = results["per_seed"][0]["by_size"][n]
    for metric in ("prefix_match_length", "extraction_probability"):
        x = np.array([r[metric] for r in rows], float)
        mine = reported[metric]
        assert mine["max"] == x.max()
        assert mine["p99"] == pytest.approx(np.percentile(x, 99))
        assert mine["gini"] == pytest.approx(_gini_by_pairs(x), rel=1e-9)
        z = (x - x.mean()) / x.std()
        assert mine["skewness"] == pytest.approx((z**3).mean())
        top = math.ceil(0.01 * len(x))
        assert mine["top1pct_share"] == pytest.approx(np.sort(x)[::-1][:top].sum() / x.sum())
    assert reported["extraction_rate"] == np.mean([r["exact_extraction"] for r in rows])


def test_skew_geometric_p_is_the_mean_per_token_recall(skew):
    out, results = skew
    geo = results["per_seed"][0]["geometric"]
    rows = _last_rows(out / "runs" / "seed0-n40" / "track" / "memorization" / "history.jsonl")
    correct = sum(round(r["memorization_accuracy"] * r["suffix_length"]) for r in rows)
    assert geo["p"] == pytest.approx(correct / sum(r["suffix_length"] for r in rows), abs=1e-6)
    # P(PML >= k) = p^k, capped at each probe's own suffix length.
    for k, model, measured in zip(geo["k"], geo["geometric"], geo["measured"]):
        assert model == pytest.approx(np.mean([geo["p"] ** k if k <= r["suffix_length"] else 0 for r in rows]))
        assert measured == np.mean([r["prefix_match_length"] >= k for r in rows])
    assert geo["measured"][0] == 1.0 and geo["geometric"][0] == 1.0


def test_skew_near_duplicates_are_in_the_training_set_only_for_targets(skew):
    out, _ = skew
    train = read_jsonl(out / "runs" / "seed0-n40-near" / "train.jsonl")
    probes = {p["id"]: p for p in read_jsonl(out / "runs" / "seed0-n40-near" / "probes.jsonl")}
    near = [r for r in train if "~near" in r["id"]]
    targets = {p for p, row in probes.items() if row["near_duplicates"]}
    assert len(targets) == 4 and len(near) == 4 * 2
    for row in near:
        original = probes[row["id"].split("~")[0]]
        assert row["completion"] == original["completion"] and row["prompt"] != original["prompt"]
    assert (out / "skew.md").read_text().count("\n## ") == 5 and (out / "skew_pml_survival.png").is_file()


def test_density_injected_copies_raise_the_density_of_their_original(density):
    _, results = density
    rows = results["per_seed"][0]["rows"]
    copies = [r for r in rows if r["kind"] == "copy" and r["injections"] > 0]
    assert copies
    for r in copies:
        assert r["log_density"] > r["log_density_before"], r
    # The c copies alone put c kernel values of 1 at the probe: a lower bound by the KDE's definition,
    # log f >= log(c / N) - (d / 2) log(2 pi h^2), N the injected training set's rows, d the width.
    out = density[0]
    n_rows = len(read_jsonl(out / "runs" / "seed0" / "train.jsonl"))
    d = json.loads((out / "toy" / "base" / "config.json").read_text())["n_embd"]
    h = results["per_seed"][0]["bandwidth"]
    for r in copies:
        bound = math.log(r["injections"] / n_rows) - 0.5 * d * math.log(2 * math.pi * h**2)
        assert r["log_density"] >= bound - 1e-6, r


def test_density_flag_rule_is_calibrated_on_128_controls_per_group(density):
    # The corpus's own 16 controls per group make the 99th percentile their maximum; the study adds the
    # corpus's calibration controls, so each group's threshold is the percentile of 128 never-trained probes.
    out, _ = density
    memo = out / "runs" / "seed0" / "track" / "memorization"
    groups = json.loads((memo / "flagged.meta.json").read_text())["groups"]
    history = read_jsonl(memo / "history.jsonl")
    last = max(r["step"] for r in history)
    for group in ("pin", "record"):
        ma = [
            r["memorization_accuracy"]
            for r in history
            if r["step"] == last and r["role"] == "control" and r["group"] == group
        ]
        assert groups[group]["controls"] == len(ma) == 128
        assert groups[group]["judged_by"] == "controls"
        assert groups[group]["control_ma_threshold"] == pytest.approx(np.percentile(ma, 99))
    group_of = {r["id"]: r["group"] for r in history}
    for row in read_jsonl(memo / "flagged.jsonl"):
        if row["reason"] == "control_relative_ma":
            threshold = groups[group_of[row["id"]]]["control_ma_threshold"]
            assert row["metrics"]["memorization_accuracy"] > threshold, row


def test_density_regression_is_least_squares_with_an_interval_around_it(density):
    _, results = density
    seed = results["per_seed"][0]
    x = np.array([r["log_density"] for r in seed["rows"]])
    y = np.array([r["ma"] for r in seed["rows"]])
    slope, intercept = np.polyfit(x, y, 1)
    fit = seed["fits"]["ma"]
    assert fit["slope"] == pytest.approx(slope) and fit["intercept"] == pytest.approx(intercept)
    assert fit["r2"] == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
    assert fit["slope_ci"][0] <= fit["slope"] <= fit["slope_ci"][1]


@pytest.mark.slow
def test_finetune_method_mia_and_parameter_counts(tmp_path):
    results = run_recipe(RECIPES / "finetune_method.yaml", tmp_path, minimal=True)
    params = results["trainable_parameters"]
    assert params["lora-r4"] < params["lora-r16"] < params["full"]
    config = json.loads((tmp_path / "toy" / "base" / "config.json").read_text())
    vocab, width = config["vocab_size"], config["n_embd"]
    assert params["head"] == vocab * width + 2 * width  # the tied head/embedding matrix and the final norm
    memo = tmp_path / "runs" / "full-seed0" / "track" / "memorization"
    history = read_jsonl(memo / "history.jsonl")
    last = max(r["step"] for r in history)
    rows = [r for r in history if r["step"] == last]
    pos = np.array([r["reference_ratio"] for r in rows if r["role"] != "control"])
    neg = np.sort([r["reference_ratio"] for r in rows if r["role"] == "control"])[::-1]
    assert len(neg) == 2 * 128  # the corpus's controls and its calibration controls, 128 per group
    threshold = neg[25]  # 10% of 256 controls: 25 may lie above the threshold
    final = results["per_method"]["full"][0]["curve"][-1]
    assert final["recall/reference_ratio"] == pytest.approx(np.mean(pos > threshold))
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert final["auc/reference_ratio"] == pytest.approx(pairs)
    summary = [s for s in read_jsonl(memo / "summaries.jsonl") if s["step"] == last][-1]
    assert final["recall/reference_ratio"] == pytest.approx(summary["recall@10%fpr/reference_ratio"])


def test_bad_recipes_say_what_to_change(tmp_path):
    from obliviate.studies.skew import SkewConfig

    with pytest.raises(RecipeError, match="base_members"):  # the loader names the recipe it came from
        load_study(RECIPES / "skew.yaml", SkewConfig, overrides={"base_members": 7})
    with pytest.raises(RecipeError, match="Did you mean 'epochs'"):
        load_study(RECIPES / "skew.yaml", SkewConfig, overrides={"epoch": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: skewed\n")
    with pytest.raises(StudyError, match="give one of skew"):
        run_recipe(bad, tmp_path / "out")


def test_matched_utility_takes_the_last_epoch_within_the_perplexity():
    from obliviate.studies.finetune_method import matched_row

    def seed(ppls, recalls):
        return {
            "curve": [
                {"epoch": float(i), "val_ppl": p, "recall/reference_ratio": r, "auc/reference_ratio": r}
                for i, (p, r) in enumerate(zip(ppls, recalls))
            ]
        }

    seeds = [seed([9.0, 11.0, 13.0, 12.0], [0.0, 0.2, 0.6, 0.4]), seed([9.0, 12.0, 14.0, 14.0], [0.0, 0.4, 0.8, 0.6])]
    # Seed-mean perplexities 9, 11.5, 13.5, 13: the last epoch <= 12 is epoch 1, recall (0.2 + 0.4) / 2.
    assert matched_row("m", seeds, "reference_ratio", 12.0) == ["m", "1", "11.50", "0.300 ± 0.100", "0.300 ± 0.100"]
    assert matched_row("m", seeds, "reference_ratio", 8.0)[1] == "-"
