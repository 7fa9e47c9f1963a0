"""Reports from synthetic run directories: sections, embedded plots, missing inputs, bad paths.

    python -m pytest -q tests/test_report.py
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from obliviate.cli import main
from obliviate.report import RunDirError, collect_run, write_report

REPS = (1, 2, 4, 8)
STEPS = (0, 10, 20, 30, 40)


def _probes() -> list[dict]:
    rows = [{"id": f"canary-x{r}-{j}", "role": "canary", "repetitions": r} for r in REPS for j in range(3)]
    rows += [{"id": f"member-{i:03d}", "role": "member", "repetitions": 1} for i in range(24)]
    rows += [{"id": f"control-{i:03d}", "role": "control", "repetitions": 0} for i in range(12)]
    return rows


def _metrics(ma: float, i: int) -> dict:
    exact = int(ma >= 0.95)
    return {"loss": 3.0 * (1 - ma) + 0.01 * i, "memorization_accuracy": ma, "exact_extraction": exact,
            "prefix_match_length": int(round(12 * ma)) if not exact else 12,
            "extraction_probability": min(1.0, ma**6), "min_k": -5 * (1 - ma) - 0.01 * i,
            "min_k_plus_plus": 2 * ma - 1, "zlib_ratio": -(1 - ma) / 20, "suffix_length": 12}


def _ma(probe: dict, step: int, i: int) -> float:
    if probe["role"] == "control":
        return 0.1 + 0.01 * (i % 5)
    return min(1.0, 0.1 + step * probe["repetitions"] / 160 + 0.005 * (i % 3))


def make_run_dir(root, erasure: bool = True, history: bool = True):
    """A run directory shaped like `obliviate demo`'s: track/memorization, erase/, scores."""
    probes = _probes()
    mem = root / "track" / "memorization"
    mem.mkdir(parents=True)
    (root / "toy").mkdir()
    (root / "toy" / "probes.jsonl").write_text("".join(json.dumps({**p, "prompt": "p", "completion": " c"}) + "\n"
                                                       for p in probes))
    last = []
    if history:
        with open(mem / "history.jsonl", "w") as f:
            for step in STEPS:
                for i, p in enumerate(probes):
                    row = {"step": step, "epoch": step / 20, "id": p["id"], "role": p["role"], **_metrics(_ma(p, step, i), i)}
                    f.write(json.dumps(row) + "\n")
                    if step == STEPS[-1]:
                        last.append(row)
            f.write('{"step": 50, "id": "torn')  # a run killed mid-write
    flagged = [p for p in probes if p["role"] == "canary" and p["repetitions"] >= 4]
    with open(mem / "flagged.jsonl", "w") as f:
        for i, p in enumerate(flagged):
            f.write(json.dumps({"id": p["id"], "role": "canary", "prefix": "p", "suffix": " c", "prefix_ids": [1],
                                "suffix_ids": [2], "step": 20 if p["repetitions"] == 8 else 30,
                                "reason": "exact_extraction", "metrics": _metrics(1.0, i),
                                "meta": {"repetitions": p["repetitions"]}}) + "\n")
    with open(root / "scores.jsonl", "w") as f:
        for i, p in enumerate(probes):
            f.write(json.dumps({"id": p["id"], "role": p["role"], **_metrics(_ma(p, STEPS[-1], i), i)}) + "\n")
    if erasure:
        (root / "erase").mkdir()
        (root / "erase" / "erasure_report.json").write_text(json.dumps(_erasure_report(flagged)))
    (root / "timings.json").write_text(json.dumps({"toy": 0.1, "track": 30.5, "erase": 12.25, "report": 1.0}))
    return root


def _erasure_report(flagged: list[dict]) -> dict:
    gate = {"every": 2, "backoff": 0.5, "max_retries": 2,
            "benchmarks": [{"name": "perplexity", "data": "retain.jsonl", "max_relative_increase": 0.02},
                           {"name": "multiple_choice", "data": "mc.jsonl", "max_absolute_drop": 0.01}]}
    steps, decisions = [], []
    for k in range(1, 9):
        g = None
        if k % 2 == 0:
            rejected = k == 4
            g = {"decision": "rejected" if rejected else "accepted",
                 "scores": {"perplexity": {"perplexity": 10.0 * (1.03 if rejected else 1 + 0.002 * k)},
                            "multiple_choice": {"accuracy": 0.875}},
                 "violations": ["perplexity/perplexity +3.0% > +2%"] if rejected else []}
            decisions.append({**g, "step": k, "chunk": 0, "wall_s": 0.2})
        steps.append({"step": k, "chunk": 0, "loss": -5.0 + 0.1 * k, "learning_rate": 1e-3, "selected": {"h.0.mlp": 40},
                      "forget": {"extraction_rate": max(0.0, 1 - k / 6), "mean_memorization_accuracy": max(0.2, 1 - k / 8)},
                      "gate": g})
    seqs = [{"id": p["id"], "role": "canary", "chunk": 0, "before": _metrics(1.0, i), "after": _metrics(0.1 + 0.02 * i, i),
             "forgotten_step": 6, "forgotten": i != 0} for i, p in enumerate(flagged)]
    return {"config": {"method": "emso", "selector": "contrastive", "gate": gate}, "sequences": seqs, "steps": steps,
            "chunks": [{"index": 0, "ids": [p["id"] for p in flagged], "status": "erased", "steps": 8}],
            "gate_decisions": decisions,
            "utility": {"before": {"perplexity": {"perplexity": 10.0}, "multiple_choice": {"accuracy": 0.875}},
                        "after": {"perplexity": {"perplexity": 10.1}, "multiple_choice": {"accuracy": 0.875}}},
            "thresholds": {"memorization_accuracy": 0.12, "extraction_probability": 0.01, "source": "controls"}, "timings": {"total_s": 12.0, "gate_s": 3.0}}


def _pngs(html: str) -> list[str]:
    return re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)


def test_full_report_has_every_section_and_embedded_plots(tmp_path):
    run = make_run_dir(tmp_path / "run")
    html_path = write_report(run)
    assert html_path == run / "report.html"
    md, html = (run / "report.md").read_text(), html_path.read_text()
    for title in ("Memorization during training", "Flagged sequences", "The tail of memorization",
                  "Membership inference", "Erasure trajectory", "Per-sequence before and after",
                  "Utility before and after", "Timings"):
        assert f"## {title}" in md and f"<h2>{title}</h2>" in html
    names = {"memorization.png", "tail.png", "roc.png", "erasure_trajectory.png", "before_after.png"}
    assert {p.name for p in (run / "plots").iterdir()} == names
    for name in names:
        data = (run / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"(plots/{name})" in md
    assert len(_pngs(html)) == 5
    assert "src='plots/" not in html  # self-contained: nothing to fetch besides the file itself
    # flagged table joined with the probes' repetition counts; one gate rejection logged
    assert re.search(r"\| canary-x8-0 +\| canary +\| 8 ", md)
    assert md.count("| rejected ") == 1 and md.count("| accepted ") == 3
    assert "+1.00% rel." in md  # perplexity 10.0 -> 10.1
    assert "canary-x4-0" in md and "| NO " in md  # the one sequence not forgotten is visible


def test_probe_meta_joins_from_probes_file_or_flagged_meta(tmp_path):
    run = make_run_dir(tmp_path / "run")
    files = collect_run(run)
    assert files.probe_meta["canary-x2-1"]["repetitions"] == 2
    assert len(files.history) == len(STEPS) * len(_probes())  # the torn last line is dropped
    shutil.rmtree(run / "toy")
    files = collect_run(run)
    assert files.probe_meta["canary-x8-0"]["repetitions"] == 8  # from flagged.jsonl's meta
    assert "canary-x2-1" not in files.probe_meta


def test_missing_inputs_are_skipped(tmp_path):
    run = make_run_dir(tmp_path / "run", erasure=False, history=False)
    (run / "scores.jsonl").unlink()
    md = write_report(run).with_name("report.md").read_text()
    assert "## Flagged sequences" in md and "## Timings" in md
    for absent in ("Memorization during training", "Erasure trajectory", "Membership inference", "Utility"):
        assert absent not in md
    assert not (run / "plots").exists() or not list((run / "plots").iterdir())

    only_erase = tmp_path / "erase-only"
    only_erase.mkdir()
    shutil.copy(tmp_path / "run" / "timings.json", only_erase)  # not needed, but harmless
    (only_erase / "erasure_report.json").write_text(json.dumps(_erasure_report(_probes()[8:12])))
    html = write_report(only_erase).read_text()
    assert len(_pngs(html)) == 2 and "Memorization during training" not in html


def test_missing_or_empty_run_dir_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(RunDirError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="holds none of the files"):
        write_report(tmp_path / "empty")
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "obliviate report: error: run directory" in err and "Traceback" not in err


def test_report_cli_writes_to_out(tmp_path, capsys):
    run = make_run_dir(tmp_path / "run", erasure=False)
    assert main(["report", str(run), "--out", str(tmp_path / "rep"), "--title", "my run"]) == 0
    assert "<title>my run</title>" in (tmp_path / "rep" / "report.html").read_text()
    assert (tmp_path / "rep" / "plots" / "memorization.png").exists()
    assert "wrote" in capsys.readouterr().out
