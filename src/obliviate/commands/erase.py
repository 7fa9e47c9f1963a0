"""``obliviate erase --model PATH --forget FILE --out DIR``: erase flagged sequences under the utility gate.

obliviate erase --config recipes/erase-emso.yaml --out runs/erase
obliviate erase --config recipes/erase-compare.yaml --out runs/erase-compare
"""

from __future__ import annotations

DESCRIPTION = """Erase sequences (a flagged.jsonl from `obliviate track`, or any probes file) from a model with
EMSO (entropy maximization on the selected weights) or a baseline (ga, graddiff, npo), chunk by
chunk, gated by utility benchmarks when there is a gate: the default gate (retain perplexity +2%
at most, checked every step) needs --retain, a recipe `gate:` section sets its own; without
either the run is ungated and says so (--no-gate: ungated on purpose). Forgetting is judged
against the never-trained --controls (or the forget file's control rows); without them against
absolute thresholds, with a warning. Writes a NEW directory DIR (an existing one is an
error): the model (or LoRA adapter) and tokenizer, erasure_report.json and plots/. A killed run
resumes from its last finished chunk when run again with the same --out.

Recipe keys are the fields of EraseConfig (method, selector, select_fraction, granularity,
learning_rate, max_steps, chunk_size, target, gate, ...) plus model/forget/controls/retain/ids
paths; flags override them. A recipe with `runs:` (a list of {name, ...overrides}) runs each
into DIR/<name> and prints a comparison table.

  obliviate erase --model runs/track/model --forget runs/track/memorization/flagged.jsonl \\
      --controls runs/toy/probes.jsonl --retain runs/toy/retain.jsonl --out runs/erase
  obliviate erase --config recipes/erase-emso.yaml --method ga --selector all --out runs/erase-ga"""

PATH_KEYS = ("model", "forget", "controls", "retain", "heldout", "neighbors", "ids", "roles")
FLAGS = {  # flag -> EraseConfig field, for the most used keys (any other: --set KEY=VALUE)
    "method": str,
    "selector": str,
    "select_fraction": float,
    "granularity": str,
    "learning_rate": float,
    "max_steps": int,
    "chunk_size": int,
    "target": str,
    "entropy_variant": str,
    "reselect_every": int,
    "batch_size": int,
    "thresholds": str,
    "seed": int,
}


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="model directory or hub name (recipe key `model`)")
    parser.add_argument("--forget", help="flagged.jsonl or probes JSONL to erase; its control rows become controls")
    parser.add_argument("--controls", help="probes whose role=control rows set the forgetting thresholds")
    parser.add_argument(
        "--retain", help='{"text"} JSONL, split: rows graddiff may train on, rows only the gate reads, audit rows'
    )
    parser.add_argument(
        "--heldout", help='{"text"} JSONL no loss and no gate reads: scored before/after for the report'
    )
    parser.add_argument(
        "--neighbors",
        help="{\"text\"} JSONL of records of the forget set's format to keep (other customers' records): the retain "
        "term reads them all, no gate does (their completions should lose what leaked from the secrets)",
    )
    parser.add_argument("--ids", help="comma-separated ids: erase only these rows of --forget")
    parser.add_argument("--roles", help="comma-separated roles: erase only these (e.g. canary)")
    parser.add_argument("--config", help="erase recipe YAML (e.g. recipes/erase-emso.yaml)")
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    for name, kind in FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=f"recipe key `{name}`")
    parser.add_argument("--no-gate", action="store_true", help="erase without a utility gate (recipe `gate: null`)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other EraseConfig key (dotted for nested, e.g. gate.every=2); repeatable",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _recipe(args) -> dict:
    """The recipe's mapping with the flags and --set applied once (a `runs:` recipe is split later)."""
    import yaml

    from obliviate.config import RecipeError, read_recipe

    # An unset flag keeps the recipe's value; --set KEY=null and --no-gate set null.
    overrides = {key: getattr(args, key) for key in (*FLAGS, *PATH_KEYS) if getattr(args, key) is not None}
    for item in args.set:
        if "=" not in item:
            raise RecipeError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    if args.no_gate:
        overrides["gate"] = None
    data = read_recipe(args.config, overrides)
    for key in ("ids", "roles"):
        if isinstance(data.get(key), str):
            data[key] = [i.strip() for i in data[key].split(",") if i.strip()]
    return data


def _split(data: dict, where: str):
    """Paths and the EraseConfig of one run; unknown keys name the nearest valid one."""
    import dataclasses

    from obliviate.config import check_keys, from_dict
    from obliviate.erasure import EraseConfig

    valid = {f.name for f in dataclasses.fields(EraseConfig)} | set(PATH_KEYS)
    check_keys(data, valid, where)
    paths = {k: data.get(k) for k in PATH_KEYS}
    config = from_dict(EraseConfig, {k: v for k, v in data.items() if k not in PATH_KEYS}, where)
    for key in ("model", "forget"):
        if not paths[key]:
            raise ValueError(f"no {key} given: pass --{key} or set `{key}:` in the recipe.")
    return paths, config


def _erase(paths: dict, config, out, progress: bool) -> dict:
    import json

    from obliviate.erasure import run_erase
    from obliviate.erasure.result import REPORT_NAME

    out = run_erase(
        paths["model"],
        paths["forget"],
        out,
        config,
        controls_path=paths["controls"],
        retain_path=paths["retain"],
        ids=paths["ids"],
        roles=paths["roles"],
        progress=progress,
        heldout_path=paths["heldout"],
        neighbors_path=paths["neighbors"],
    )
    return json.loads((out / REPORT_NAME).read_text())


def run(args) -> int:
    import sys
    from pathlib import Path

    from obliviate.commands import _erase_notes as notes
    from obliviate.commands._paths import check_output_dir
    from obliviate.erasure import format_summary
    from obliviate.erasure.result import last_line

    data = _recipe(args)
    runs = data.pop("runs", None)
    progress = not args.no_progress
    check_output_dir(Path(args.out).parent, f"--out {args.out}: its parent")  # before any model loads
    if runs is None:
        paths, config = _split(data, f"recipe {args.config}" if args.config else "the options")
        warnings = notes.run_notes(paths, config)
        for line in [*warnings, notes.resume_note(args.out)]:
            if line:
                print(line, file=sys.stderr)
        try:
            report = _erase(paths, config, args.out, progress)
        except KeyboardInterrupt:
            print(f"\nobliviate erase: {notes.interrupted_note(args.out)}", file=sys.stderr)
            return 130
        print(format_summary(report))
        print(f"\nwrote {args.out} (model, erasure_report.json, plots/)")
        for line in notes.closing_notes(report, warnings):
            print(line)
        print(last_line(report))  # the verdict, in words, last
        return 0
    from obliviate.erasure.compare import run_comparison

    run_comparison(
        data, runs, Path(args.out), lambda d, where: _split(d, where), _erase, progress, where=f"recipe {args.config}"
    )
    return 0
