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
    assert set(results["per_method"]) == {"full-lr0.003", "full-lr0.001", "head", "lora-r4", "lora-r16"}
    assert [s["learning_rate"] for s in results["per_method"]["full-lr0.001"]] == [1e-3]
    memo = tmp_path / "runs" / "full-lr0.003-seed0" / "track" / "memorization"
    history = read_jsonl(memo / "history.jsonl")
    last = max(r["step"] for r in history)
    rows = [r for r in history if r["step"] == last]
    pos = np.array([r["reference_ratio"] for r in rows if r["role"] != "control"])
    neg = np.sort([r["reference_ratio"] for r in rows if r["role"] == "control"])[::-1]
    assert len(neg) == 2 * 128  # the corpus's controls and its calibration controls, 128 per group
    threshold = neg[25]  # 10% of 256 controls: 25 may lie above the threshold
    final = results["per_method"]["full-lr0.003"][0]["curve"][-1]
    assert final["recall/reference_ratio"] == pytest.approx(np.mean(pos > threshold))
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert final["auc/reference_ratio"] == pytest.approx(pairs)
    summary = [s for s in read_jsonl(memo / "summaries.jsonl") if s["step"] == last][-1]
    assert final["recall/reference_ratio"] == pytest.approx(summary["recall@10%fpr/reference_ratio"])
    # threshold_per_group: each trained row against the 12th-highest loss of its own group's 128 controls
    # (floor(10% x 128) = 12 may lie above), AUC over within-group pairs.
    from obliviate.studies.finetune_method import mia_at_step

    grouped = mia_at_step(rows, ["neg_loss"], 0.1, per_group=True)
    above, pair_wins, pair_count = 0, 0.0, 0
    for group in {r["group"] for r in rows}:
        pos_g = np.array([-r["loss"] for r in rows if r["role"] != "control" and r["group"] == group])
        neg_g = np.sort([-r["loss"] for r in rows if r["role"] == "control" and r["group"] == group])[::-1]
        assert len(neg_g) == 128
        above += int(np.sum(pos_g > neg_g[12]))
        pair_wins += (pos_g[:, None] > neg_g[None, :]).sum() + 0.5 * (pos_g[:, None] == neg_g[None, :]).sum()
        pair_count += len(pos_g) * len(neg_g)
    assert grouped["recall/neg_loss"] == pytest.approx(above / len(pos))
    assert grouped["auc/neg_loss"] == pytest.approx(pair_wins / pair_count)


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


def test_matched_utility_takes_the_epoch_nearest_the_target_perplexity():
    from obliviate.studies.finetune_method import matched_row

    def seed(ppls, recalls):
        return {
            "curve": [
                {
                    "epoch": float(i),
                    "val_ppl": p,
                    "recall/reference_ratio": r,
                    "auc/reference_ratio": r,
                    "extraction_rate": 0.0,
                }
                for i, (p, r) in enumerate(zip(ppls, recalls))
            ]
        }

    fast = [seed([10.0, 16.0, 30.0], [0.0, 0.5, 0.9]), seed([10.0, 18.0, 34.0], [0.0, 0.7, 0.9])]  # means 17, 32
    slow = [seed([10.0, 11.0, 14.5], [0.0, 0.1, 0.2]), seed([10.0, 11.0, 15.5], [0.0, 0.1, 0.4])]  # means 11, 15
    # Target 15: the slow run's epoch 2 is exactly on it (|log(15/15)| = 0).
    assert matched_row("m", 1e-3, slow, "reference_ratio", 15.0, 0.1) == [
        "m",
        "0.001",
        "2",
        "15.00",
        "0.300 ± 0.100",
        "0.300 ± 0.100",
        "0.000 ± 0.000",
    ]
    # Target 18: epoch 1 (17, 5.6% away) is nearer in log perplexity than epoch 2 (32).
    assert matched_row("m", 1e-2, fast, "reference_ratio", 18.0, 0.1)[:4] == ["m", "0.01", "1", "17.00"]
    # Target 24: log(32/24) = 0.29 < log(24/17) = 0.34, so epoch 2 (32) is nearest, 33% away: unmatched.
    assert matched_row("m", 1e-2, fast, "reference_ratio", 24.0, 0.1)[3].startswith("32.00 (nearest")
    # Epoch 0 (the base, ppl 10) is never a match: at target 8 the nearest is epoch 1 (11), 37.5% away.
    row = matched_row("m", None, slow, "reference_ratio", 8.0, 0.1)
    assert row[1] == "-" and row[2] == "-" and row[3].startswith("11.00 (nearest")


def test_finetune_recipe_errors_name_the_field(tmp_path):
    from obliviate.studies.finetune_method import FinetuneMethodConfig

    recipe = RECIPES / "finetune_method.yaml"
    cases = [
        ({"methods": [{"name": "full", "learning_rate": [1e-3, 1e-3]}]}, "listed twice"),
        ({"methods": [{"name": "full", "learning_rate": [1e-3, -1.0]}]}, "must be > 0"),
        ({"methods": [{"name": "full", "learning_rate": [1e-3, None]}]}, "cannot include null"),
        ({"corpus": {"n_member": 8}}, "unknown make_corpus arguments \\['n_member'\\]"),
        ({"match_ppl_ratio": 1.0}, "match_ppl_ratio"),
        ({"match_tolerance": 1.5}, "match_tolerance"),
        ({"threshold_per_group": None}, "threshold_per_group must be true or false"),
        ({"model": str(tmp_path / "no-such-model")}, "does not exist: give a model directory"),
    ]
    for overrides, message in cases:
        with pytest.raises(RecipeError, match=message):
            load_study(recipe, FinetuneMethodConfig, overrides=overrides)


@pytest.mark.slow
def test_finetune_study_runs_on_a_model_that_is_not_the_toy(tmp_path):
    """``model:`` takes any causal LM directory: a tiny Llama (built here from a config, with the toy's
    tokenizer) gets LoRA on q_proj/v_proj, and the study's epoch-0 perplexity is that model's own."""
    from transformers import AutoTokenizer

    from obliviate.studies.common import prepare_base
    from obliviate.studies.finetune_method import FinetuneMethodConfig
    from tests.helpers import completion_perplexity, tiny_model

    toy = prepare_base(tmp_path / "toy-out", load_study(RECIPES / "finetune_method.yaml", FinetuneMethodConfig, True))
    tokenizer = AutoTokenizer.from_pretrained(toy)
    llama = tiny_model("llama", tokenizer)
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    recipe = tmp_path / "llama.yaml"
    recipe.write_text(
        "study: finetune_method\n"
        f"model: {tmp_path / 'llama'}\n"
        "seeds: [0]\nepochs: 1\nexposure_repetitions: []\nexposure_seeds: 0\nmatch_ppl_ratio: 0.9\n"
        "corpus: {n_members: 8, fact_repetitions: 0, n_controls: 16, controls_per_group: 8}\n"
        "methods:\n"
        "  - {name: full, learning_rate: 1.0e-3}\n"
        "  - {name: lora, learning_rate: [1.0e-2, 3.0e-2], lora: {r: 2, lora_alpha: 4, target_modules: [q_proj, v_proj]}}\n"
        "training: {max_steps: 2, per_device_train_batch_size: 8}\n"
    )
    results = run_recipe(recipe, tmp_path / "out")
    params = results["trainable_parameters"]
    assert params["full"] == sum(p.numel() for p in llama.parameters())
    width, cfg = llama.config.hidden_size, llama.config
    kv = width // cfg.num_attention_heads * cfg.num_key_value_heads
    assert params["lora"] == cfg.num_hidden_layers * 2 * ((width + width) + (width + kv))  # r=2 on q and v
    assert set(results["per_method"]) == {"full", "lora-lr0.01", "lora-lr0.03"}
    assert not (tmp_path / "out" / "toy").exists()  # the toy was never built for this study
    # Epoch 0 is the untrained Llama: its perplexity on the 16 controls, from a plain forward pass here.
    rows = read_jsonl(tmp_path / "out" / "runs" / "full-seed0" / "probes.jsonl")
    controls = [r for r in rows if r["role"] == "control"]
    assert len(controls) == 16  # n_controls 16: 8 per group, no calibration controls beyond them
    epoch0 = results["per_method"]["full"][0]["curve"][0]
    assert epoch0["val_ppl"] == pytest.approx(completion_perplexity(llama.eval(), tokenizer, controls), rel=1e-4)
