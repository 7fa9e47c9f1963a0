"""The end-to-end demo: tiny model -> SFT with tracking -> flag -> erase under the gate -> report.

    obliviate demo --out runs/demo            # what `make demo` runs (recipes/demo.yaml)
    obliviate demo --quick --out /tmp/demo    # the reduced run the tests use

Stages, each timed and written under OUT/:
  toy/      the built-in base model and corpus (reused from OUT/toy or ~/.cache/obliviate when built before)
  track/    TRL SFTTrainer + MemorizationCallback (`run_track`): history, flagged.jsonl, the fine-tuned model
  data/     retain.jsonl without the flagged rows, controls.jsonl (the never-trained control probes)
  erase/    EMSO under the utility gate (`run_erase`): erased model, erasure_report.json
  scores_{before,after}.jsonl, utility_{before,after}.json, timings.json, report.md, report.html, plots/
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from obliviate.config import RecipeError, apply_overrides, check_keys, from_dict, read_yaml

SECTIONS = ("toy", "training", "tracking", "erase", "utility", "quick")
MARKER = "demo.json"


class DemoError(ValueError):
    """The demo cannot run as asked; the message says what to change."""


def default_recipe() -> Path:
    """The shipped ``recipes/demo.yaml`` (package data: an installed copy finds it too)."""
    from obliviate.recipes import path as recipe_path

    return recipe_path("demo")


@dataclass
class DemoSettings:
    """A checked demo recipe: every section built from its dataclass, nothing loaded yet."""

    toy: Any
    training: dict
    tracking: Any
    erase: Any
    utility: list[dict]
    recipe: str = ""
    quick: bool = False
    raw: dict = field(default_factory=dict)


def _check_benchmark_entries(entries: Any, where: str, gate: bool = False) -> list[dict]:
    from obliviate.benchmarks.gate import DEFAULT_ENTRY, TOLERANCE_KEYS
    from obliviate.benchmarks.registry import get_benchmark
    from obliviate.benchmarks.suite import check_entries

    if gate and isinstance(entries, list) and DEFAULT_ENTRY in entries:  # the default gate on the gate-only split
        entries = [e for e in entries if e != DEFAULT_ENTRY]
        if not entries:
            return []
    entries = check_entries(entries, where)
    for i, entry in enumerate(entries):
        klass = get_benchmark(entry["name"])
        valid = set(klass.config_class.__dataclass_fields__) | {"name"}
        if gate:
            valid |= set(TOLERANCE_KEYS) | {"score"}
        check_keys(entry, valid, f"{where}[{i}] ({entry['name']})")
    return entries


def load_demo_recipe(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                     quick: bool = False) -> DemoSettings:
    """Read and check the demo recipe before anything heavy runs.

    Args:
        path: the YAML recipe (default: ``recipes/demo.yaml``).
        overrides: dotted keys set over the recipe (``{"training.num_train_epochs": 4}``); CLI flags.
        quick: apply the recipe's ``quick:`` overrides first (CLI overrides still win).

    Returns:
        DemoSettings.

    Raises:
        RecipeError: a missing file, an unknown section or key (naming the nearest valid one), a bad value.
    """
    path = Path(path) if path is not None else default_recipe()
    data = read_yaml(path)
    where = f"recipe {path}"
    check_keys(data, SECTIONS, where)
    quick_overrides = dict(data.pop("quick", None) or {})
    for key in quick_overrides:
        if key.split(".", 1)[0] not in SECTIONS[:-1] or "." not in key:
            raise RecipeError(f"quick: key {key!r} in {where} must be a dotted key into one of "
                              f"{', '.join(SECTIONS[:-1])} (e.g. training.num_train_epochs).")
    if quick:
        data = apply_overrides(data, quick_overrides)
    data = apply_overrides(data, overrides or {})
    check_keys(data, SECTIONS, f"{where} (with the command-line overrides)")

    from obliviate.callbacks.config import TrackConfig
    from obliviate.erasure.config import EraseConfig
    from obliviate.toy import ToyConfig

    toy = from_dict(ToyConfig, data.get("toy"), f"section 'toy' of {where}")
    tracking = from_dict(TrackConfig, data.get("tracking"), f"section 'tracking' of {where}")
    erase = from_dict(EraseConfig, data.get("erase"), f"section 'erase' of {where}")
    if isinstance(erase.gate, dict):
        _check_benchmark_entries(erase.gate.get("benchmarks"), f"erase.gate.benchmarks of {where}", gate=True)
    utility = _check_benchmark_entries(data.get("utility"), f"section 'utility' of {where}")
    training = dict(data.get("training") or {})
    if "output_dir" in training:
        raise RecipeError(f"{where}: the demo sets training.output_dir itself (OUT/track); remove it and pass --out.")
    from trl import SFTConfig

    check_keys(training, {f.name for f in dataclasses.fields(SFTConfig) if f.init}, f"section 'training' of {where}")
    return DemoSettings(toy, training, tracking, erase, utility, str(path), quick, data)


# ---------------------------------------------------------------------------------------------- toy
def cache_root() -> Path:
    """``$OBLIVIATE_CACHE``, else ``$XDG_CACHE_HOME/obliviate``, else ``~/.cache/obliviate``."""
    if os.environ.get("OBLIVIATE_CACHE"):
        return Path(os.environ["OBLIVIATE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "obliviate"


def toy_key(config) -> str:
    """Changes whenever the toy's settings or the code that builds it change."""
    import obliviate.data.synthetic as synthetic
    import obliviate.toy as toy

    h = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    for module in (toy, synthetic):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:12]


def _is_toy(path: Path) -> bool:
    return (path / "toy_config.json").is_file() and (path / "base" / "config.json").is_file() and \
        (path / "probes.jsonl").is_file()


def prepare_toy(dest: Path, config, given: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The toy build to use and where it came from (``given``, ``reused``, ``cache`` or ``built``)."""
    if given is not None:
        given = Path(given)
        if not _is_toy(given):
            raise DemoError(f"--toy {given} is not a toy build (no base/ and probes.jsonl); write one with "
                            f"`obliviate toy --out {given}`, or drop --toy.")
        return given, "given"
    key = toy_key(config)
    if _is_toy(dest) and (dest / ".toy-key").is_file() and (dest / ".toy-key").read_text() == key:
        return dest, "reused"
    if dest.exists():
        shutil.rmtree(dest)
    cached = cache_root() / f"toy-{key}"
    if _is_toy(cached):
        shutil.copytree(cached, dest)
        return dest, "cache"
    from obliviate.toy import build_toy

    build_toy(dest, config)
    (dest / ".toy-key").write_text(key)
    with contextlib.suppress(OSError):  # a read-only home only costs the next run a rebuild
        tmp = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
        shutil.copytree(dest, tmp)
        tmp.rename(cached)
    return dest, "built"


# ---------------------------------------------------------------------------------------------- run
def _prepare_out(out: Path) -> None:
    """Create OUT, or clear the stages of an earlier demo there; refuse a directory the demo did not write."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise FileExistsError(f"{out} exists and was not written by `obliviate demo`; choose another --out "
                              "(nothing there is overwritten).")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("track", "erase", "erase.partial", "data", "plots"):
        if (out / name).exists():
            shutil.rmtree(out / name)
    (out / MARKER).write_text(json.dumps({"started": time.strftime("%Y-%m-%d %H:%M:%S")}))


def _resolve_data(entries: list[dict], dirs: list[Path]) -> list[dict]:
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


class _TrainerLogDigest:
    """Stand-in for stdout during training: the Trainer prints every log as a dict (the callback's hold
    ~50 keys); the demo shows one line per log instead. Everything else passes through unchanged."""

    KEYS = (("memorization/extraction_rate", "extraction rate"), ("memorization/canary/extraction_rate", "canaries"),
            ("memorization/mean_memorization_accuracy", "mean MA"), ("memorization/flagged", "flagged"))

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        if text.startswith("{'") and text.rstrip().endswith("}"):
            import ast

            with contextlib.suppress(ValueError, SyntaxError):
                logs = ast.literal_eval(text.strip())
                text = self.digest(logs) + "\n" if isinstance(logs, dict) else text
        return self.stream.write(text)

    def digest(self, logs: dict) -> str:
        epoch = logs.get("epoch")
        head = f"      epoch {float(epoch):5.2f}" if epoch is not None else "     "
        if "memorization/extraction_rate" in logs:
            parts = [f"{label} {float(logs[k]):.3g}" for k, label in self.KEYS if k in logs]
            return f"{head}  memorization: {', '.join(parts)}"
        if "train_runtime" in logs:
            return f"{head}  training done in {float(logs['train_runtime']):.1f}s, mean loss {float(logs['train_loss']):.3f}"
        if "loss" in logs:
            return f"{head}  loss {float(logs['loss']):.3f}"
        return f"{head}  {logs}"

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def _quiet(threads: int | None):
    """Digest trainer logs, hide dataset/weight-loading bars, and cap torch's threads, restoring all after."""
    import sys

    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    previous_threads, bars = torch.get_num_threads(), datasets.is_progress_bar_enabled()
    hf_bars = hf_logging.is_progress_bar_enabled()
    stdout = sys.stdout
    if threads:
        torch.set_num_threads(threads)
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    sys.stdout = _TrainerLogDigest(stdout)
    try:
        yield
    finally:
        sys.stdout = stdout
        torch.set_num_threads(previous_threads)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if bars:
            datasets.enable_progress_bars()


def run_demo(out: str | os.PathLike, settings: DemoSettings, toy_dir: str | os.PathLike | None = None,
             threads: int | None = 1) -> dict:
    """Run every stage of the demo into ``out``; returns the summary also written to ``OUT/demo.json``.

    Args:
        out: the demo directory (created; an earlier demo's stages there are replaced, ``toy/`` reused).
        settings: from :func:`load_demo_recipe`.
        toy_dir: use this existing ``obliviate toy`` build instead of building or reusing one.
        threads: torch intra-op threads during the demo (restored after); None leaves torch's default.
            The toy model's matrices are too small for threads to pay, and on a busy machine spinning
            threads make it many times slower.
    """
    out = Path(out)
    _prepare_out(out)
    with _quiet(threads):
        return _run(out, settings, toy_dir)


def _run(out: Path, settings: DemoSettings, toy_dir) -> dict:
    from obliviate.data.probes import read_jsonl

    stage = _Stages(6)
    wall = time.perf_counter()

    with stage("toy", "toy model: the built-in ~1M-parameter GPT-2 and its synthetic SFT corpus"):
        toy, origin = prepare_toy(out / "toy", settings.toy, toy_dir)
        print(f"      {origin}: {toy}", flush=True)

    with stage("track", "fine-tune with TRL SFTTrainer, MemorizationCallback scoring every probe as it trains"):
        from obliviate.callbacks import run_track

        recipe = {"model": str(toy / "base"), "train_file": str(toy / "train.jsonl"),
                  "probes": str(toy / "probes.jsonl"), "output_dir": str(out / "track"),
                  "training": settings.training, "tracking": asdict(settings.tracking)}
        track = run_track(recipe)
        flagged_path = track / "memorization" / "flagged.jsonl"
        flagged = read_jsonl(flagged_path) if flagged_path.is_file() else []
        if not any(r["role"] != "control" for r in flagged):
            raise DemoError("fine-tuning memorized nothing the flag rule catches, so there is nothing to erase; "
                            "train longer (--set training.num_train_epochs=12) or loosen tracking.flag_rule.")
        print(f"      flagged {len(flagged)} sequences: {', '.join(r['id'] for r in flagged[:8])}"
              f"{' …' if len(flagged) > 8 else ''}", flush=True)

    probe_rows = read_jsonl(toy / "probes.jsonl")
    with stage("before", "measure the fine-tuned model: every probe, and the utility suite"):
        from obliviate.data.flagged import read_flagged
        from obliviate.erasure.run import filter_retain
        from obliviate.modeling import load_tokenizer

        tokenizer = load_tokenizer(track / "model")
        kept, _ = filter_retain(toy / "retain.jsonl", read_flagged(flagged_path, tokenizer), tokenizer)
        texts = kept if isinstance(kept, list) else [r["text"] for r in read_jsonl(kept)]
        _write_jsonl(out / "data" / "retain.jsonl", [{"text": t} for t in texts])
        _write_jsonl(out / "data" / "controls.jsonl", [r for r in probe_rows if r.get("role") == "control"])
        data_dirs = [out / "data", toy]
        utility = _resolve_data(settings.utility, data_dirs)
        scores_before, utility_before = _evaluate(track / "model", probe_rows, utility)

    with stage("erase", f"erase the flagged sequences with {settings.erase.method.upper()} under the utility gate"):
        from obliviate.erasure import run_erase

        config = settings.erase
        if isinstance(config.gate, dict):
            config = dataclasses.replace(config, gate={
                **config.gate, "benchmarks": _resolve_data(config.gate["benchmarks"], data_dirs)})
        # Controls from the whole probe file: its unflagged members are reported as collateral. The held-out
        # text (never trained, never read by the gate or a loss) is scored before/after in the erasure report.
        erased = run_erase(track / "model", flagged_path, out / "erase", config,
                           controls_path=toy / "probes.jsonl", retain_path=out / "data" / "retain.jsonl",
                           heldout_path=toy / "heldout.jsonl")

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
    summary = {"out": str(out), "toy": str(toy), "toy_origin": origin, "recipe": settings.recipe,
               "quick": settings.quick, "tracked_model": str(track / "model"), "flagged": str(flagged_path),
               "erased_model": str(Path(erased).resolve()), "flagged_ids": [r["id"] for r in flagged], "timings": stage.seconds,
               "erasure": report.get("summary"), "report": str(html),
               "utility_before": utility_before, "utility_after": utility_after}
    (out / MARKER).write_text(json.dumps(summary, indent=2))
    meta = {str(r["id"]): r for r in probe_rows}
    print(summary_text(out, meta, scores_before, scores_after, utility_before, utility_after, report, stage.seconds))
    return summary


def summary_text(out: Path, meta: dict[str, dict], before: list[dict], after: list[dict], utility_before: dict,
                 utility_after: dict, report: dict, seconds: dict) -> str:
    """The before/after tables printed at the end of the demo (``meta``: probe rows by id, for repetitions)."""
    from obliviate.report import group_table, utility_rows
    from obliviate.report.tables import format_table

    groups = group_table(before, after, meta)
    text = "\n" + "=" * 78 + "\nobliviate demo: before -> after erasure\n\n"
    text += format_table([[g, n, f"{eb} -> {ea}", f"{mb} -> {ma}"] for g, n, eb, ea, mb, ma in groups],
                         ["group", "probes", "extracted", "mean MA"])
    text += "\n\n" + format_table(utility_rows(utility_before, utility_after), ["utility", "before", "after", "change"])
    s = report.get("summary") or {}
    if s:
        text += (f"\n\nerased {s.get('forgotten')}/{s.get('sequences')} flagged sequences in {s.get('steps')} steps; "
                 f"gate: {len(report.get('gate_decisions') or [])} checks, {s.get('gate_rejections')} rejected")
    collateral = report.get("collateral") or {}
    rows = []
    for key, label in (("controls", "controls"), ("not_erased", "unflagged")):
        for g, c in (collateral.get(key) or {}).items():
            rows.append([f"{label} {g}", c["count"],
                         f"{c['memorization_accuracy_before']:.3f} -> {c['memorization_accuracy_after']:.3f}",
                         f"{c['loss_before']:.3f} -> {c['loss_after']:.3f}"])
    if rows:
        text += "\n\n" + format_table(rows, ["collateral (never erased)", "n", "mean MA", "mean loss"])
    text += "\n\n" + format_table([[k, f"{v:.1f}"] for k, v in seconds.items()], ["stage", "seconds"])
    text += f"\n\nreport: {out / 'report.html'} (and report.md, plots/)\n"
    if s:
        from obliviate.erasure.result import last_line

        text += last_line(report) + "\n"  # the verdict, in words, on the last line
    return text
