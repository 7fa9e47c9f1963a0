"""Erasure end to end: CLI, new output directory, resume after kill -9, LoRA adapters, bad input.

python -m pytest -q tests/test_erasure_io.py -x
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from obliviate.cli import main
from obliviate.data.flagged import flagged_row
from tests.helpers import corpus_tokenizer, free_port

FORGET = ["canary-x2-1", "canary-x4-0", "canary-x8-0"]
RECIPE = {
    "method": "emso",
    "select_fraction": 0.05,
    "learning_rate": 1e-2,
    "max_steps": 40,
    "chunk_size": 1,
    "plots": False,
}


@pytest.fixture(scope="module")
def workdir(memorized_gpt2, tmp_path_factory) -> Path:
    """The memorized model saved like a fine-tuned model, plus flagged, controls and retain files."""
    mem = memorized_gpt2
    root = tmp_path_factory.mktemp("erase-io")
    mem.model.save_pretrained(root / "model")
    mem.tokenizer.save_pretrained(root / "model")
    with open(root / "flagged.jsonl", "w") as f:
        for pid in FORGET + ["control-000", "control-001"]:
            f.write(json.dumps(flagged_row(mem.probes[pid], 10, "exact_extraction", {}, mem.tokenizer)) + "\n")
    with open(root / "retain.jsonl", "w") as f:
        for row in corpus_tokenizer()[0].retain:
            f.write(json.dumps(row) + "\n")
    with open(root / "controls.jsonl", "w") as f:
        for probe in mem.probes.by_role("control"):
            f.write(json.dumps(flagged_row(probe, None, "", {}, mem.tokenizer)) + "\n")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    return root


def _args(w: Path, out: Path, *extra: str) -> list[str]:
    return [
        "erase",
        "--model",
        str(w / "model"),
        "--forget",
        str(w / "flagged.jsonl"),
        "--controls",
        str(w / "controls.jsonl"),
        "--retain",
        str(w / "retain.jsonl"),
        "--config",
        str(w / "recipe.yaml"),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _hash_dir(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_cli_erases_into_a_new_directory_and_leaves_the_input_alone(workdir, tmp_path, capsys):
    before = _hash_dir(workdir / "model")
    out = tmp_path / "erased"
    assert main(_args(workdir, out, "--set", "plots=true")) == 0
    assert _hash_dir(workdir / "model") == before
    assert {"model.safetensors", "config.json", "tokenizer.json", "erasure_report.json"} <= {
        p.name for p in out.iterdir()
    }
    assert (out / "plots" / "erasure_trajectory.png").stat().st_size > 1000
    assert not list(tmp_path.glob("erased.*"))  # no temporary or partial leftovers
    report = json.loads((out / "erasure_report.json").read_text())
    assert [s["id"] for s in report["sequences"]] == FORGET  # control rows of the flagged file are not erased
    assert sum(report["thresholds"]["control_groups"].values()) == 16
    assert report["retain"] == {
        "path": str(workdir / "retain.jsonl"),
        "rows": len(corpus_tokenizer()[0].retain),
        "dropped": 0,
    }
    # The default gate ran after every step and held its text's perplexity within +2% / -10% and KL <= 0.05.
    assert report["gate_decisions"] and len(report["gate_decisions"]) == report["summary"]["attempted_steps"]
    ppl = report["utility"]["before"]["gate_ppl"]["perplexity"], report["utility"]["after"]["gate_ppl"]["perplexity"]
    assert 0.9 * ppl[0] <= ppl[1] <= 1.02 * ppl[0]
    assert report["utility"]["after"]["gate_kl"]["kl"] <= 0.05
    # ... and the same scores on the retain rows it never read are reported beside them.
    assert set(report["heldout"]["after"]) == {"heldout_gate_ppl", "heldout_gate_kl"}
    split = report["retain_split"]
    assert split["loss_rows"] == 0 and split["gate_rows"] > split["audit_rows"] > 0
    assert {c["status"] for c in report["chunks"]} <= {"erased", "max_steps", "gate_exhausted"}
    assert "forgotten " in capsys.readouterr().out
    from obliviate.data.flagged import read_flagged
    from obliviate.metrics import score_probes
    from obliviate.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(out, device="cpu")
    rows = score_probes(model, tokenizer, read_flagged(workdir / "flagged.jsonl", tokenizer).subset(FORGET))
    for row, seq in zip(rows, report["sequences"]):  # the saved model is the one the report describes
        assert row["exact_extraction"] == seq["after"]["exact_extraction"]
        assert row["memorization_accuracy"] == pytest.approx(seq["after"]["memorization_accuracy"])
        assert row["loss"] == pytest.approx(seq["after"]["loss"], rel=1e-5)


# The child process: `obliviate erase`, SIGKILLed right after the first chunk's resume state is on disk
# (the hook lives in the test, not in the library).
KILL_AFTER_FIRST_CHUNK = """
import os, signal, sys
import obliviate.erasure.eraser as eraser
save = eraser.save_checkpoint
def save_then_die(*args, **kwargs):
    save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
eraser.save_checkpoint = save_then_die
from obliviate.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_resumes_to_the_same_weights(workdir, tmp_path):
    killed = tmp_path / "resumed"
    # Same thread count as this process: float reductions (and so the last bits) depend on it.
    root = Path(__file__).resolve().parents[1]  # this checkout's code, src/ first, in the child process too
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)]),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_FIRST_CHUNK, *_args(workdir, killed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    partial = tmp_path / "resumed.partial"
    assert not killed.exists() and json.loads((partial / "state.json").read_text())["next_chunk"] == 1
    assert main(_args(workdir, killed)) == 0  # same command again: resumes
    assert not partial.exists()
    straight = tmp_path / "straight"
    assert main(_args(workdir, straight)) == 0
    a, b = load_file(killed / "model.safetensors"), load_file(straight / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "erasure_report.json").read_text()) for d in (killed, straight))
    assert ra["resumed_from_chunk"] == 1 and rb["resumed_from_chunk"] is None
    assert ra["sequences"] == rb["sequences"]
    assert [s["loss"] for s in ra["steps"]] == [s["loss"] for s in rb["steps"]]
    assert len(ra["gate_decisions"]) == len(rb["gate_decisions"])


def test_resume_refuses_a_partial_state_of_another_run(workdir, tmp_path, capsys):
    partial = tmp_path / "other.partial"
    partial.mkdir()
    (partial / "state.json").write_text(json.dumps({"version": 1, "fingerprint": "nope", "weights": "w"}))
    assert main(_args(workdir, tmp_path / "other", "--set", "gate=null")) == 2
    assert "different erasure run" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_lora_target_saves_an_adapter_peft_loads(workdir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from obliviate.data.flagged import read_flagged
    from obliviate.metrics import score_probes

    out = tmp_path / "adapter"
    before = _hash_dir(workdir / "model")
    assert (
        main(
            _args(
                workdir,
                out,
                "--target",
                "lora",
                "--select-fraction",
                "0.5",
                "--chunk-size",
                "3",
                "--set",
                "gate=null",
                "--set",
                "lora={r: 8, lora_alpha: 32}",
            )
        )
        == 0
    )
    assert _hash_dir(workdir / "model") == before
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names and "model.safetensors" not in names
    base = AutoModelForCausalLM.from_pretrained(workdir / "model")
    model = PeftModel.from_pretrained(base, out).eval()
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(out)
    rows = score_probes(model, tokenizer, read_flagged(workdir / "flagged.jsonl", tokenizer).subset(FORGET))
    report = json.loads((out / "erasure_report.json").read_text())
    assert report["summary"]["forgotten"] == 3
    assert [r["exact_extraction"] for r in rows] == [0, 0, 0]
    with model.disable_adapter():  # dropping the adapter gives the memorized model back
        again = score_probes(model, tokenizer, read_flagged(workdir / "flagged.jsonl", tokenizer).subset(FORGET))
    assert [r["exact_extraction"] for r in again] == [1, 1, 1]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("case", ["ids_disagree", "unknown_id", "empty", "too_long", "out_exists", "no_retain"])
def test_bad_input_is_a_clear_error_and_writes_nothing(workdir, tmp_path, capsys, case):
    rows = [json.loads(line) for line in (workdir / "flagged.jsonl").read_text().splitlines()]
    flagged = workdir / "flagged.jsonl"
    extra: list[str] = []
    out = tmp_path / "out"
    if case == "ids_disagree":
        rows[0]["suffix_ids"] = rows[0]["suffix_ids"][::-1]
        flagged, expected = _write(tmp_path / "f.jsonl", rows), "disagree with this tokenizer"
    elif case == "unknown_id":
        extra, expected = ["--ids", f"{FORGET[0]},no-such-id"], "unknown forget ids ['no-such-id']"
    elif case == "empty":
        flagged, expected = _write(tmp_path / "f.jsonl", [r for r in rows if r["role"] == "control"]), "is empty"
    elif case == "too_long":
        rows[0].update(prefix="x " * 300, prefix_ids=None, suffix_ids=None)
        flagged, expected = _write(tmp_path / "f.jsonl", rows), "longer than the model's context"
    elif case == "out_exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        expected = "already exists"
    else:
        extra, expected = ["--method", "graddiff"], "needs retained text"
    args = _args(workdir, out, *extra)
    args[args.index("--forget") + 1] = str(flagged)
    if case == "no_retain":
        i = args.index("--retain")
        del args[i : i + 2]
    assert main(args) == 2
    assert expected in capsys.readouterr().err
    if case == "out_exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    else:
        assert not out.exists()
    assert not list(tmp_path.glob("out.*"))


def test_shipped_recipes_load():
    from obliviate.commands.erase import _split
    from obliviate.config import read_yaml

    root = Path(__file__).resolve().parents[1] / "recipes"
    data = read_yaml(root / "erase-emso.yaml")
    paths, config = _split(data, "erase-emso.yaml")
    assert config.method == "emso" and config.selector == "contrastive" and config.gate == "default"
    assert paths["model"] == "runs/track/model"
    compare = read_yaml(root / "erase-compare.yaml")
    runs = compare.pop("runs")
    methods = set()
    for run in runs:
        _, cfg = _split({**compare, **{k: v for k, v in run.items() if k != "name"}}, run["name"])
        methods.add(cfg.method)
    assert methods == {"emso", "ga", "graddiff", "npo", "clipped_ga"}


def test_compare_recipe_runs_each_into_a_subdirectory(workdir, tmp_path, capsys):
    recipe = {**RECIPE, "gate": None, "chunk_size": 3, "runs": [{"name": "emso"}, {"name": "ga", "method": "ga"}]}
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump(recipe))
    args = _args(workdir, tmp_path / "cmp")
    args[args.index("--config") + 1] = str(tmp_path / "compare.yaml")
    assert main(args) == 0
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["run"] for r in rows] == ["emso", "ga"] and all(r["forgotten_pct"] == 100 for r in rows)
    assert (tmp_path / "cmp" / "ga" / "erasure_report.json").is_file()
    assert "forgotten %" in capsys.readouterr().out
    assert main(args) == 2  # a finished comparison is never overwritten


DDP_SCRIPT = """
import json, sys, torch
from accelerate import Accelerator
from obliviate.data.flagged import read_flagged
from obliviate.erasure import EraseConfig, Eraser
from obliviate.modeling import load_model_and_tokenizer
w, out = sys.argv[1], sys.argv[2]
acc = Accelerator()
model, tok = load_model_and_tokenizer(w + "/model", device="cpu")
forget = read_flagged(w + "/flagged.jsonl", tok)
config = EraseConfig(select_fraction=0.05, learning_rate=1e-2, max_steps=40, gate=None)
result = Eraser(model, tok, forget.by_role("canary"), config, controls=forget.by_role("control"),
                retain=w + "/retain.jsonl", accelerator=acc).erase()
if acc.is_main_process:
    torch.save({n: p.detach().clone() for n, p in result.model.named_parameters()}, out)
    # A file, not stdout: the other rank's and the launcher's output can land on the same stdout line.
    with open(out + ".json", "w") as f:
        json.dump([s["loss"] for s in result.report["steps"]], f)
"""


@pytest.mark.slow
def test_two_processes_erase_like_one(workdir, tmp_path):
    """accelerate with 2 CPU processes (gloo): sharded forget batch, summed gradients, same result."""
    script = tmp_path / "erase_ddp.py"
    script.write_text(DDP_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    outs = {}
    for n in (1, 2):
        launch = [
            sys.executable,
            "-m",
            "accelerate.commands.accelerate_cli",
            "launch",
            "--config_file",
            str(root / "recipes" / "accelerate" / "ddp-cpu.yaml"),
            "--num_processes",
            str(n),
            "--main_process_port",
            str(free_port()),
        ]
        proc = subprocess.run(
            [*launch, str(script), str(workdir), str(tmp_path / f"w{n}.pt")],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses = json.loads((tmp_path / f"w{n}.pt.json").read_text())
        outs[n] = (losses, torch.load(tmp_path / f"w{n}.pt"))
    assert outs[1][0] == pytest.approx(outs[2][0], rel=1e-4)
    for name, weight in outs[1][1].items():
        assert torch.allclose(weight, outs[2][1][name], atol=1e-5), name


def test_filter_retain_returns_the_kept_texts_as_one_type(tmp_path):
    """A list whether or not a row is dropped, so no caller branches on a path-or-list."""
    from obliviate.data import load_probes
    from obliviate.erasure.run import filter_retain

    corpus, tok = corpus_tokenizer()
    forget = load_probes(corpus.probes[:2], tok)
    probe_texts = {(r["prompt"] + r["completion"]).strip() for r in corpus.probes}
    texts = [r["text"] for r in corpus.retain if r["text"].strip() not in probe_texts][:3]
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert filter_retain(clean, forget, tok) == (texts, {"path": str(clean), "rows": 3, "dropped": 0})
    erased = corpus.probes[1]["prompt"] + corpus.probes[1]["completion"]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({"text": t}) + "\n" for t in [texts[0], erased, texts[1]]))
    assert filter_retain(mixed, forget, tok) == ([texts[0], texts[1]], {"path": str(mixed), "rows": 3, "dropped": 1})
