"""Study 2 on the real SmolLM2-135M-Instruct (``recipes/studies/finetune_method_smollm2.yaml --minimal``, ~1.5 min).

The model comes from ``make real-model``. The checks recompute from the model itself what the study reports:
the trainable-parameter counts from the model's config, and the epoch-0 validation perplexity (the base, before
any step) by a plain forward pass over the never-trained controls the run wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from obliviate.modeling import load_model_and_tokenizer
from obliviate.real import ensure_real_model
from obliviate.studies import run_recipe
from obliviate.studies.common import read_jsonl
from tests.helpers import completion_perplexity

pytestmark = [pytest.mark.slow, pytest.mark.real]
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "studies" / "finetune_method_smollm2.yaml"


def test_finetune_method_study_on_smollm2(tmp_path):
    model_dir = ensure_real_model()[0]
    results = run_recipe(RECIPE, tmp_path, minimal=True)
    assert not (tmp_path / "toy").exists()  # the study fine-tuned SmolLM2, not the toy

    config = json.loads((model_dir / "config.json").read_text())
    width, layers = config["hidden_size"], config["num_hidden_layers"]
    kv = width // config["num_attention_heads"] * config["num_key_value_heads"]
    params = results["trainable_parameters"]
    # LoRA r=4 on q_proj (width -> width) and v_proj (width -> kv) of every layer: r x (in + out) each.
    assert params["lora-r4"] == layers * 4 * ((width + width) + (width + kv))
    model, tokenizer = load_model_and_tokenizer(str(model_dir))
    assert params["full"] == sum(p.numel() for p in model.parameters())

    rows = read_jsonl(tmp_path / "runs" / "full-seed0" / "probes.jsonl")
    controls = [r for r in rows if r["role"] == "control"]
    assert len(controls) == 16  # the minimal corpus: 8 controls per group
    epoch0 = results["per_method"]["full"][0]["curve"][0]
    assert epoch0["val_ppl"] == pytest.approx(completion_perplexity(model.eval(), tokenizer, controls), rel=1e-3)
    # One step of full fine-tuning at 1e-4 on the records already moves the never-trained controls' perplexity.
    after = results["per_method"]["full"][0]["curve"][-1]
    assert after["val_ppl"] != pytest.approx(epoch0["val_ppl"], rel=1e-3)
