"""The demo's stages, each timed and printed: toy, track, before, erase, after, report.

    obliviate demo --quick --out /tmp/demo
    python -c "from obliviate.demo import load_demo_recipe, run_demo; run_demo('/tmp/demo', load_demo_recipe(quick=True))"

Every stage writes under OUT/ (see :mod:`obliviate.demo`); an earlier demo's stages there are
replaced, its toy build reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from obliviate.demo.recipe import DemoError, DemoSettings
from obliviate.demo.summary import summary_record, summary_text
from obliviate.demo.toycache import prepare_toy

MARKER = "demo.json"


def _prepare_out(out: Path) -> None:
    """Create OUT, or clear the stages of an earlier demo there; refuse a directory the demo did not write."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise FileExistsError(
            f"{out} exists and was not written by `obliviate demo`; choose another --out "
            "(nothing there is overwritten)."
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in ("track", "erase", "erase.partial", "data", "plots"):
        if (out / name).exists():
            shutil.rmtree(out / name)
    (out / MARKER).write_text(json.dumps({"started": time.strftime("%Y-%m-%d %H:%M:%S")}))


def resolve_data(entries: list, dirs: list[Path]) -> list:
    """Relative ``data:`` paths looked up in ``dirs`` in order (OUT/data, then the toy build)."""
    out = []
    for entry in entries:
        if not isinstance(entry, dict):  # `default`: the eraser's own gate-only split
            out.append(entry)
            continue
        entry = dict(entry)
        data = entry.get("data")
        if isinstance(data, str) and not Path(data).is_absolute():
            for d in dirs:
                if (d / data).is_file():
                    entry["data"] = str(d / data)
                    break
        out.append(entry)
    return out


class _Stages:
    def __init__(self, total: int):
        self.total, self.index, self.seconds = total, 0, {}

    @contextlib.contextmanager
    def __call__(self, name: str, what: str):
        self.index += 1
        print(f"\n[{self.index}/{self.total}] {what}", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        print(f"      done in {self.seconds[name]:.1f}s", flush=True)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


@contextlib.contextmanager
def _quiet(threads: int | None):
    """Hide dataset/weight-loading bars and cap torch's threads, restoring both after."""
    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    previous_threads, bars = torch.get_num_threads(), datasets.is_progress_bar_enabled()
    hf_bars = hf_logging.is_progress_bar_enabled()
    if threads:
        torch.set_num_threads(threads)
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if bars:
            datasets.enable_progress_bars()


def run_demo(
    out: str | os.PathLike, settings: DemoSettings, toy_dir: str | os.PathLike | None = None, threads: int | None = 1
) -> dict:
    """Run every stage of the demo into ``out``; returns the summary also written to ``OUT/demo.json``.

    Args:
        out: the demo directory (created; an earlier demo's stages there are replaced, ``toy/`` reused).
        settings: from :func:`~obliviate.demo.load_demo_recipe`.
        toy_dir: use this existing ``obliviate toy`` build instead of building or reusing one.
        threads: torch intra-op threads during the demo (restored after); None leaves torch's default.
            The toy model's matrices are too small for threads to pay, and on a busy machine spinning
            threads make it many times slower.
    """
    out = Path(out)
    _prepare_out(out)
    with _quiet(threads):
        return _run(out, settings, toy_dir)


def _track(out: Path, settings: DemoSettings, toy: Path) -> tuple[Path, Path, list[dict]]:
    """SFT with the memorization callback; the run directory, its flagged.jsonl and the flagged rows."""
    from obliviate.callbacks import run_track
    from obliviate.data.probes import read_jsonl
    from obliviate.demo.logs import TrainerLogDigest

    recipe = {
        "model": str(toy / "base"),
        "train_file": str(toy / "train.jsonl"),
        "probes": str(toy / "probes.jsonl"),
        "output_dir": str(out / "track"),
        "training": settings.training,
        "tracking": dataclasses.asdict(settings.tracking),
    }
    track = run_track(recipe, callbacks=[TrainerLogDigest()])  # one line per log, not the trainer's dicts
    flagged_path = track / "memorization" / "flagged.jsonl"
    flagged = read_jsonl(flagged_path) if flagged_path.is_file() else []
    if not any(r["role"] != "control" for r in flagged):
        raise DemoError(
            "fine-tuning memorized nothing the flag rule catches, so there is nothing to erase; "
            "train longer (--set training.num_train_epochs=12) or loosen tracking.flag_rule."
        )
    print(
        f"      flagged {len(flagged)} sequences: {', '.join(r['id'] for r in flagged[:8])}"
        f"{' …' if len(flagged) > 8 else ''}",
        flush=True,
    )
    return track, flagged_path, flagged


def _split_retain(out: Path, toy: Path, track: Path, flagged_path: Path, probe_rows: list[dict]) -> None:
    """OUT/data: retain.jsonl without the flagged rows (one cannot keep and forget a row), and the controls."""
    from obliviate.data.flagged import read_flagged
    from obliviate.erasure.run import filter_retain
    from obliviate.modeling import load_tokenizer

    tokenizer = load_tokenizer(track / "model")
    kept, _ = filter_retain(toy / "retain.jsonl", read_flagged(flagged_path, tokenizer), tokenizer)
    _write_jsonl(out / "data" / "retain.jsonl", [{"text": t} for t in kept])
    _write_jsonl(out / "data" / "controls.jsonl", [r for r in probe_rows if r.get("role") == "control"])


def _evaluate(model_dir: Path, probe_rows: list[dict], utility: list[dict]) -> tuple[list[dict], dict]:
    """Every probe's scores and the utility suite on one model."""
    from obliviate.benchmarks import UtilitySuite
    from obliviate.data.sft import probes_from_sft_rows
    from obliviate.metrics import score_probes
    from obliviate.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_dir)
    # The tracker's own probe builder, so these are the very token ids the callback scored.
    probes = probes_from_sft_rows(probe_rows, tokenizer)
    rows = score_probes(model, tokenizer, probes, batch_size=64, progress="scoring probes")
    results = UtilitySuite.from_config(utility, tokenizer).run(model, progress=True)
    return rows, results


def resolve_erase_config(config, toy: Path, data_dirs: list[Path]):
    """The recipe's erase section with its toy-relative paths made absolute: the gate's ``data:`` files (looked
    up in ``data_dirs``) and ``reference_model: base`` (the toy's base model)."""
    reference = config.reference_model
    if reference and not Path(reference).is_absolute() and (toy / reference).is_dir():
        config = dataclasses.replace(config, reference_model=str(toy / reference))
    if isinstance(config.gate, dict):
        config = dataclasses.replace(
            config, gate={**config.gate, "benchmarks": resolve_data(config.gate["benchmarks"], data_dirs)}
        )
    return config


def _erase(out: Path, settings: DemoSettings, toy: Path, track: Path, flagged_path: Path, data_dirs: list[Path]):
    """The recipe's method under the gate, its relative paths resolved first."""
    from obliviate.erasure import run_erase

    config = resolve_erase_config(settings.erase, toy, data_dirs)
    # Controls from the whole probe file: its unflagged members are reported as collateral. The held-out
    # text (never trained, never read by the gate or a loss) is scored before/after in the erasure report.
    return run_erase(
        track / "model",
        flagged_path,
        out / "erase",
        config,
        controls_path=toy / "probes.jsonl",
        retain_path=out / "data" / "retain.jsonl",
        heldout_path=toy / "heldout.jsonl",
    )


def _run(out: Path, settings: DemoSettings, toy_dir) -> dict:
    from obliviate.data.probes import read_jsonl

    stage = _Stages(6)
    wall = time.perf_counter()
    with stage("toy", "toy model: the built-in ~1M-parameter GPT-2 and its synthetic SFT corpus"):
        toy, origin = prepare_toy(out / "toy", settings.toy, toy_dir)
        print(f"      {origin}: {toy}", flush=True)
    with stage("track", "fine-tune with TRL SFTTrainer, MemorizationCallback scoring every probe as it trains"):
        track, flagged_path, flagged = _track(out, settings, toy)
    probe_rows = read_jsonl(toy / "probes.jsonl")
    data_dirs = [out / "data", toy]
    with stage("before", "measure the fine-tuned model: every probe, and the utility suite"):
        _split_retain(out, toy, track, flagged_path, probe_rows)
        utility = resolve_data(settings.utility, data_dirs)  # after the split: OUT/data/retain.jsonl first
        scores_before, utility_before = _evaluate(track / "model", probe_rows, utility)
    with stage("erase", f"erase the flagged sequences with {settings.erase.method.upper()} under the utility gate"):
        erased = _erase(out, settings, toy, track, flagged_path, data_dirs)
    with stage("after", "measure the erased model: every probe, and the utility suite"):
        scores_after, utility_after = _evaluate(erased, probe_rows, utility)

    _write_jsonl(out / "scores_before.jsonl", scores_before)
    _write_jsonl(out / "scores_after.jsonl", scores_after)
    (out / "utility_before.json").write_text(json.dumps(utility_before, indent=2))
    (out / "utility_after.json").write_text(json.dumps(utility_after, indent=2))
    (out / "timings.json").write_text(json.dumps(stage.seconds, indent=2))
    with stage("report", "write report.md and report.html with plots"):
        from obliviate.report import write_report

        html = write_report(out, title="obliviate demo")
    stage.seconds["total"] = time.perf_counter() - wall
    (out / "timings.json").write_text(json.dumps(stage.seconds, indent=2))
    report = json.loads((erased / "erasure_report.json").read_text())
    summary = summary_record(
        out,
        settings,
        toy,
        origin,
        track,
        flagged_path,
        flagged,
        erased,
        report,
        html,
        utility_before,
        utility_after,
        stage.seconds,
    )
    (out / MARKER).write_text(json.dumps(summary, indent=2))
    meta = {str(r["id"]): r for r in probe_rows}
    print(summary_text(out, meta, scores_before, scores_after, utility_before, utility_after, report, stage.seconds))
    return summary
