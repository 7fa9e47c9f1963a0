"""``obliviate erase`` then ``obliviate report`` through the CLI (issue 14 items 1, 4, 7)."""

from __future__ import annotations

import json

import pytest

from obliviate.cli import main

CANARIES = ("canary-x8-0", "canary-x8-1")


def _erase_argv(toy_dir, out, *extra):
    return [
        "erase",
        "--model",
        str(toy_dir / "base"),
        "--forget",
        str(toy_dir / "probes.jsonl"),
        "--ids",
        ",".join(CANARIES),
        "--chunk-size",
        "1",
        "--max-steps",
        "2",
        "--no-progress",
        "--set",
        "extraction_samples=8",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def default_gate_run(toy_dir, tmp_path_factory):
    """An erase run with --retain and no recipe `gate:` section: config.gate is the string "default"."""
    out = tmp_path_factory.mktemp("erase") / "erased"
    assert main(_erase_argv(toy_dir, out, "--retain", str(toy_dir / "retain.jsonl"))) == 0
    return out


def test_report_of_an_erase_run_with_the_default_gate(default_gate_run, capsys):
    from obliviate.report.plots import _gate_tolerances

    report = json.loads((default_gate_run / "erasure_report.json").read_text())
    assert report["config"]["gate"] == "default"
    assert main(["report", str(default_gate_run)]) == 0
    assert (default_gate_run / "report.html").is_file()
    assert (default_gate_run / "plots" / "erasure_trajectory.png").is_file()
    # The default gate's two-sided perplexity bound (+2% / -10%) is drawn, not silently dropped.
    lines = _gate_tolerances(report)
    assert [round(change, 6) for change, _ in lines] == [2.0, -10.0]
    assert [label for _, label in lines] == ["gate_ppl: max +2%", "gate_ppl: max −10%"]
    assert "No utility gate" not in (default_gate_run / "report.md").read_text()


def test_report_reads_the_tolerances_the_run_recorded(default_gate_run):
    """A report with the gate's resolved tolerances (``gate.tolerances``) is read as written, not re-derived."""
    from obliviate.report.collect import gate_tolerances
    from obliviate.report.plots import _gate_tolerances

    report = json.loads((default_gate_run / "erasure_report.json").read_text())
    report["gate"] = {
        "every": 1,
        "tolerances": [
            {"benchmark": "retain", "score": "perplexity", "kind": "max_relative_increase", "value": 0.05},
            {"benchmark": "facts", "score": "acc", "kind": "max_absolute_drop", "value": 0.07},
        ],
    }
    assert [t["value"] for t in gate_tolerances(report)] == [0.05, 0.07]
    assert _gate_tolerances(report) == [
        (pytest.approx(5.0), "retain: max +5%"),
        (pytest.approx(-7.0), "facts: max −7 points"),
    ]
    report["gate"] = None  # an ungated run's record
    report["config"]["gate"] = None
    assert gate_tolerances(report) == []


def test_erase_without_retain_or_controls_says_so_loudly(toy_dir, tmp_path, capsys):
    rows = [json.loads(line) for line in (toy_dir / "probes.jsonl").read_text().splitlines()]
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] in CANARIES))
    out = tmp_path / "erased"
    argv = _erase_argv(toy_dir, out)
    argv[argv.index("--forget") + 1] = str(forget)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "WARNING: no utility gate" in captured.err and "WARNING: no controls" in captured.err
    *closing, verdict = captured.out.strip().splitlines()[-3:]  # the warnings, then the verdict last
    assert "erased" in verdict.lower()
    assert closing[0].startswith("warning: no utility gate") and closing[1].startswith("warning: no controls")
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "**No utility gate**" in text and "**No controls**" in text


def test_no_gate_on_purpose_is_a_note_not_a_warning(toy_dir, tmp_path, capsys):
    assert main(_erase_argv(toy_dir, tmp_path / "erased", "--no-gate")) == 0
    captured = capsys.readouterr()
    assert "WARNING: no utility gate" not in captured.err
    assert "note: no utility gate (--no-gate" in captured.err


def test_ctrl_c_says_how_to_resume_and_the_rerun_says_it_resumed(toy_dir, tmp_path, capsys, monkeypatch):
    import obliviate.erasure.eraser as eraser

    real = eraser.save_checkpoint

    def save_then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(eraser, "save_checkpoint", save_then_interrupt)
    out = tmp_path / "erased"
    argv = _erase_argv(toy_dir, out, "--no-gate")
    try:
        rc = main(argv)
    except KeyboardInterrupt:
        pytest.fail("a raw KeyboardInterrupt reached the caller instead of a message")
    assert rc == 130
    err = capsys.readouterr().err
    assert "interrupted after chunk 1;" in err and "Rerun the same command to resume" in err
    assert "Traceback" not in err and not out.exists()
    monkeypatch.setattr(eraser, "save_checkpoint", real)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "resuming the interrupted run" in captured.err and "1 chunk already done" in captured.err
    assert "resumed from chunk 1 of an interrupted run" in captured.out
    assert json.loads((out / "erasure_report.json").read_text())["resumed_from_chunk"] == 1
