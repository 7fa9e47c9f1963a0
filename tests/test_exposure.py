"""Canary exposure: format registry, exact enumeration vs brute-force ranking, estimated vs exact.

python -m pytest -q tests/test_exposure.py
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from obliviate.data import load_probes
from obliviate.metrics import ExposureConfig, canary_exposure, exposures, parse_format


def test_digits_format_round_trip():
    fmt = parse_format("digits:3")
    assert fmt.size == 1000
    assert fmt.render(7) == " 0 0 7"
    assert fmt.render(913) == " 9 1 3"
    assert fmt.index(" 9 1 3") == 913
    rng = random.Random(0)
    for i in (rng.randrange(10**6) for _ in range(50)):
        assert parse_format("digits:6").index(parse_format("digits:6").render(i)) == i
    assert parse_format({"type": "digits", "length": 3}) == fmt


def test_choices_format_and_errors():
    fmt = parse_format("choices: red.| blue.| green.")
    assert fmt.size == 3 and fmt.render(1) == " blue." and fmt.index(" green.") == 2
    assert parse_format({"type": "choices", "choices": [" red.", " blue.", " green."]}) == fmt
    with pytest.raises(ValueError, match="not in format"):
        parse_format("digits:3").index(" 1 2")
    with pytest.raises(ValueError, match="not in format"):
        parse_format("digits:3").index(" 1 2 x")
    with pytest.raises(ValueError, match="positive length"):
        parse_format("digits:x")
    with pytest.raises(ValueError, match="unknown secret format"):
        parse_format("hex:4")
    with pytest.raises(ValueError, match="distinct"):
        parse_format("choices: a")
    with pytest.raises(ValueError, match=">= 5000"):
        ExposureConfig(samples=100)
    with pytest.raises(ValueError, match="rank_by"):
        ExposureConfig(rank_by="perplexity")


def _split_canaries(memorized, keep_digits: int, roles=("canary", "control"), reps=(8, 0)):
    """Canary-format probes whose last ``keep_digits`` digits are the secret (the rest joins the prefix)."""
    rows = []
    for p in memorized.probes:
        if p.role in roles and p.meta.get("secret_format") and p.meta["repetitions"] in reps:
            digits = p.suffix.split()
            cut = len(digits) - keep_digits
            rows.append(
                {
                    "id": p.id,
                    "role": p.role,
                    "prefix": p.prefix + "".join(" " + d for d in digits[:cut]),
                    "suffix": "".join(" " + d for d in digits[cut:]),
                    "secret_format": f"digits:{keep_digits}",
                    "repetitions": p.meta["repetitions"],
                }
            )
    return load_probes(rows, memorized.tokenizer)


def brute_force_rank(model, tokenizer, probe, fmt) -> int:
    """Rank by log-perplexity with one unbatched forward pass per candidate."""
    scores = []
    for i in range(fmt.size):
        suffix = tokenizer(fmt.render(i), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([probe.prefix_ids + suffix])
        with torch.no_grad():
            log_p = model(input_ids=ids).logits[0, len(probe.prefix_ids) - 1 : -1].double().log_softmax(-1)
        scores.append(-log_p.gather(-1, torch.tensor(suffix)[:, None]).sum().item())
    own = scores[fmt.index(probe.suffix)]
    return 1 + sum(s < own for s in scores)


def test_exact_exposure_equals_brute_force_ranking(memorized_gpt2):
    probes = _split_canaries(memorized_gpt2, 2)
    model, tok = memorized_gpt2.model, memorized_gpt2.tokenizer
    fmt = parse_format("digits:2")
    for probe in [probes[0], probes[len(probes) - 1]]:
        result = canary_exposure(model, tok, probe)
        rank = brute_force_rank(model, tok, probe, fmt)
        assert result["method"] == "exact" and result["space_size"] == 100
        assert result["rank"] == rank
        assert result["exposure"] == pytest.approx(math.log2(100) - math.log2(rank))


def test_trained_canaries_are_exposed_and_controls_are_not(memorized_gpt2):
    probes = _split_canaries(memorized_gpt2, 3)
    results = {r["id"]: r for r in exposures(memorized_gpt2.model, memorized_gpt2.tokenizer, probes)}
    assert set(results) == set(probes.ids)
    canary = [results[p.id]["exposure"] for p in probes if p.role == "canary"]
    control = [results[p.id]["exposure"] for p in probes if p.role == "control"]
    assert len(canary) >= 2 and len(control) >= 4
    # Seen 8 times: ranked first or nearly among 1,000 candidates (log2 1000 = 9.97 bits).
    assert min(canary) > 8.0
    # Never seen: a random rank, ~1.44 bits on average; none should look memorized.
    assert max(control) < 6.0
    assert sum(control) / len(control) < 3.5


def test_choices_format_on_trained_facts(memorized_llama):
    colors = [" red.", " blue.", " green.", " yellow.", " purple.", " orange.", " white.", " black."]
    rows = [
        {
            "id": "flag",
            "role": "member",
            "prefix": "Fact. The flag of Riverton is",
            "suffix": " red.",
            "secret_format": {"type": "choices", "choices": colors},
        }
    ]
    probe = load_probes(rows, memorized_llama.tokenizer)[0]
    result = canary_exposure(memorized_llama.model, memorized_llama.tokenizer, probe)
    fmt = parse_format(rows[0]["secret_format"])
    assert result["rank"] == brute_force_rank(memorized_llama.model, memorized_llama.tokenizer, probe, fmt)
    assert result["exposure"] == pytest.approx(3.0)  # the trained fact ranks first of 8


def test_estimated_exposure_agrees_with_exact(memorized_gpt2):
    probes = _split_canaries(memorized_gpt2, 3)
    model, tok = memorized_gpt2.model, memorized_gpt2.tokenizer
    picked = [next(p for p in probes if p.role == "canary"), next(p for p in probes if p.role == "control")]
    estimate_cfg = ExposureConfig(exact_limit=0, samples=5000, batch_size=512)
    for probe in picked:
        exact = canary_exposure(model, tok, probe)
        estimated = canary_exposure(model, tok, probe, config=estimate_cfg)
        assert estimated["method"] == "estimated" and set(estimated["fit"]) == {"shape", "loc", "scale"}
        assert estimated["score"] == pytest.approx(exact["score"], abs=1e-4)
        # The skew-normal tail is an extrapolation: agreement within ~1.5 bits is what it can promise.
        assert estimated["exposure"] == pytest.approx(exact["exposure"], abs=1.5), probe.id


def test_probe_suffix_outside_its_format_is_a_clear_error(memorized_gpt2):
    rows = [
        {
            "id": "bad",
            "role": "canary",
            "prefix": "Internal note. The account PIN of X is",
            "suffix": " 1 2 a",
            "secret_format": "digits:3",
        }
    ]
    probe = load_probes(rows, memorized_gpt2.tokenizer)[0]
    with pytest.raises(ValueError, match="'bad'.*not in format 'digits:3'"):
        canary_exposure(memorized_gpt2.model, memorized_gpt2.tokenizer, probe)
    plain = load_probes([{**rows[0], "secret_format": None}], memorized_gpt2.tokenizer)[0]
    with pytest.raises(ValueError, match="no secret_format"):
        canary_exposure(memorized_gpt2.model, memorized_gpt2.tokenizer, plain)
