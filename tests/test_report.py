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
    rows = [{"id": f"canary-x{r}-{j}", "role": "canary", "repetitions": r} for r in REPS for j in range(2)]
    rows += [{"id": f"member-{i:03d}", "role": "member", "repetitions": 1} for i in range(24)]
    rows += [{"id": f"control-{i:03d}", "role": "control", "repetitions": 0} for i in range(12)]
    return rows


def _metrics(ma: float, i: int) -> dict:
    exact = int(ma >= 0.95)
    return {
        "loss": 3.0 * (1 - ma) + 0.01 * i,
        "memorization_accuracy": ma,
        "exact_extraction": exact,
        "prefix_match_length": int(round(12 * ma)) if not exact else 12,
        "extraction_probability": min(1.0, ma**6),
        "min_k": -5 * (1 - ma) - 0.01 * i,
        "min_k_plus_plus": 2 * ma - 1,
        "zlib_ratio": -(1 - ma) / 20,
        "suffix_length": 12,
    }


def _ma(probe: dict, step: int, i: int) -> float:
    if probe["role"] == "control":
        return 0.1 + 0.01 * (i % 5)
    return min(1.0, 0.1 + step * probe["repetitions"] / 160 + 0.005 * (i % 3))


def make_run_dir(root, erasure: dict | None = None, history: bool = True):
    """A run directory shaped like `obliviate demo`'s: track/memorization, erase/ (``erasure``, a real report), scores."""
    probes = _probes()
    mem = root / "track" / "memorization"
    mem.mkdir(parents=True)
    (root / "toy").mkdir()
    (root / "toy" / "probes.jsonl").write_text(
        "".join(json.dumps({**p, "prompt": "p", "completion": " c"}) + "\n" for p in probes)
    )
    last = []
    if history:
        with open(mem / "history.jsonl", "w") as f:
            for step in STEPS:
                for i, p in enumerate(probes):
                    row = {
                        "step": step,
                        "epoch": step / 20,
                        "id": p["id"],
                        "role": p["role"],
                        **_metrics(_ma(p, step, i), i),
                    }
                    f.write(json.dumps(row) + "\n")
                    if step == STEPS[-1]:
                        last.append(row)
            f.write('{"step": 50, "id": "torn')  # a run killed mid-write
    flagged = [p for p in probes if p["role"] == "canary" and p["repetitions"] >= 4]
    with open(mem / "flagged.jsonl", "w") as f:
        for i, p in enumerate(flagged):
            f.write(
                json.dumps(
                    {
                        "id": p["id"],
                        "role": "canary",
                        "prefix": "p",
                        "suffix": " c",
                        "prefix_ids": [1],
                        "suffix_ids": [2],
                        "step": 20 if p["repetitions"] == 8 else 30,
                        "reason": "exact_extraction",
                        "metrics": _metrics(1.0, i),
                        "meta": {"repetitions": p["repetitions"]},
                    }
                )
                + "\n"
            )
    with open(root / "scores.jsonl", "w") as f:
        for i, p in enumerate(probes):
            f.write(json.dumps({"id": p["id"], "role": p["role"], **_metrics(_ma(p, STEPS[-1], i), i)}) + "\n")
    if erasure is not None:
        (root / "erase").mkdir()
        (root / "erase" / "erasure_report.json").write_text(json.dumps(erasure))
    (root / "timings.json").write_text(json.dumps({"toy": 0.1, "track": 30.5, "erase": 12.25, "report": 1.0}))
    return root


@pytest.fixture(scope="module")
def erasure_report(memorized_gpt2) -> dict:
    """The report of a real short erasure of the flagged canaries (x4 and x8), built by ``build_report`` from the
    run's log: two chunks, a gate on retain perplexity and multiple choice that rejects the first steps (lr 1 is
    destructive; each retry backs off 100x) and accepts the backed-off ones."""
    from obliviate.benchmarks import UtilityGate
    from obliviate.erasure import EraseConfig, Eraser
    from obliviate.erasure.result import build_report
    from tests.helpers import corpus_tokenizer

    mem, corpus = memorized_gpt2, corpus_tokenizer()[0]
    gate = UtilityGate.from_config(
        {
            "every": 1,
            "backoff": 0.01,
            "max_retries": 3,
            "benchmarks": [
                {
                    "name": "perplexity",
                    "data": [{"text": r["text"]} for r in corpus.retain[:16]],
                    "label": "retain",
                    "max_relative_increase": 0.3,
                },
                {"name": "multiple_choice", "data": corpus.multiple_choice, "label": "mc", "max_absolute_drop": 0.5},
            ],
        },
        mem.tokenizer,
    )
    config = EraseConfig(
        method="ga", selector="all", learning_rate=1.0, max_steps=4, chunk_size=2, gate=None, min_group_controls=8
    )
    ids = [p["id"] for p in _probes() if p["role"] == "canary" and p["repetitions"] >= 4]
    eraser = Eraser(
        mem.fresh(), mem.tokenizer, mem.probes.subset(ids), config, gate=gate, controls=mem.probes.by_role("control")
    )
    eraser.erase()
    report = build_report(eraser.log)
    decisions = [d["decision"] for d in report["gate_decisions"]]
    # What the report tests below need to see: both gate outcomes and a sequence left unforgotten.
    assert "rejected" in decisions and "accepted" in decisions, decisions
    assert not all(s["forgotten"] for s in report["sequences"]), report["sequences"]
    return report


def _pngs(html: str) -> list[str]:
    return re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)


def test_full_report_has_every_section_and_embedded_plots(tmp_path, erasure_report):
    run = make_run_dir(tmp_path / "run", erasure_report)
    html_path = write_report(run)
    assert html_path == run / "report.html"
    md, html = (run / "report.md").read_text(), html_path.read_text()
    for title in (
        "Memorization during training",
        "Flagged sequences",
        "The tail of memorization",
        "Membership inference",
        "Erasure trajectory",
        "Per-sequence before and after",
        "What the gate saw, and what it did not",
        "Collateral: what erasure did to text it was not asked to erase",
        "Utility before and after",
        "Timings",
    ):
        assert f"## {title}" in md and f"<h2>{title}</h2>" in html
    names = {"memorization.png", "tail.png", "roc.png", "erasure_trajectory.png", "before_after.png"}
    assert {p.name for p in (run / "plots").iterdir()} == names
    for name in names:
        data = (run / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"(plots/{name})" in md
    assert len(_pngs(html)) == 5
    assert "src='plots/" not in html  # self-contained: nothing to fetch besides the file itself
    # flagged table joined with the probes' repetition counts
    assert re.search(r"\| canary-x8-0 +\| canary +\| 8 ", md)
    # every gate decision of the run, one row each
    decisions = [d["decision"] for d in erasure_report["gate_decisions"]]
    assert md.count("| rejected ") == decisions.count("rejected") > 0
    assert md.count("| accepted ") == decisions.count("accepted") > 0
    # the utility change in the gate's units, by hand: relative for perplexity, points for accuracy
    before, after = erasure_report["utility"]["before"], erasure_report["utility"]["after"]
    ppl = 100 * (after["retain"]["perplexity"] / before["retain"]["perplexity"] - 1)
    assert re.search(rf"\| retain/perplexity +\|[^\n]*\| {re.escape(f'{ppl:+.2f}% rel.')} +\|", md)
    acc = 100 * (after["mc"]["acc"] - before["mc"]["acc"])
    assert re.search(rf"\| mc/acc +\|[^\n]*\| {re.escape(f'{acc:+.2f} points')} +\|", md)
    # collateral per group, the report's own numbers: never-trained controls' MA before -> after
    for group, c in erasure_report["collateral"]["controls"].items():
        ma = f"{c['memorization_accuracy_before']:.3g} → {c['memorization_accuracy_after']:.3g}"
        assert re.search(rf"\| controls {group} +\| {c['count']} +\| {re.escape(ma)} +\|", md), (group, ma)
    # each sequence's row says whether it was forgotten (a NO among them: the not-forgotten one is visible)
    for seq in erasure_report["sequences"]:
        assert re.search(rf"\| {seq['id']} +\| canary +\|[^\n]*\| {'yes' if seq['forgotten'] else 'NO'} +\|", md), seq[
            "id"
        ]


def test_probe_meta_joins_from_probes_file_or_flagged_meta(tmp_path):
    run = make_run_dir(tmp_path / "run")
    files = collect_run(run)
    assert files.probe_meta["canary-x2-1"]["repetitions"] == 2
    assert len(files.history) == len(STEPS) * len(_probes())  # the torn last line is dropped
    shutil.rmtree(run / "toy")
    files = collect_run(run)
    assert files.probe_meta["canary-x8-0"]["repetitions"] == 8  # from flagged.jsonl's meta
    assert "canary-x2-1" not in files.probe_meta


def test_missing_inputs_are_skipped(tmp_path, erasure_report):
    run = make_run_dir(tmp_path / "run", history=False)
    (run / "scores.jsonl").unlink()
    md = write_report(run).with_name("report.md").read_text()
    assert "## Flagged sequences" in md and "## Timings" in md
    for absent in ("Memorization during training", "Erasure trajectory", "Membership inference", "Utility"):
        assert absent not in md
    assert not (run / "plots").exists() or not list((run / "plots").iterdir())

    only_erase = tmp_path / "erase-only"
    only_erase.mkdir()
    shutil.copy(tmp_path / "run" / "timings.json", only_erase)  # not needed, but harmless
    (only_erase / "erasure_report.json").write_text(json.dumps(erasure_report))
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
    run = make_run_dir(tmp_path / "run")
    assert main(["report", str(run), "--out", str(tmp_path / "rep"), "--title", "my run"]) == 0
    assert "<title>my run</title>" in (tmp_path / "rep" / "report.html").read_text()
    assert (tmp_path / "rep" / "plots" / "memorization.png").exists()
    assert "wrote" in capsys.readouterr().out
