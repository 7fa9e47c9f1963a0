"""Several erasure runs side by side: a recipe with ``runs:`` (``recipes/erase-compare.yaml``).

    obliviate erase --config recipes/erase-compare.yaml --out runs/erase-compare

Top-level keys are shared by every run; each entry of ``runs:`` is ``{name: ..., <keys that differ>}``
and is written to ``OUT/<name>``. Each run is as atomic and resumable as a single erase; running the
comparison again on the same OUT reuses finished runs and resumes the interrupted one. At the end
``OUT/comparison.json`` and ``OUT/comparison.md`` hold the table printed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from obliviate.tables import format_table

HEADERS = [
    "run",
    "method",
    "selector",
    "forgotten %",
    "steps",
    "rejected",
    "gate exhausted",
    "retain ppl Δ%",
    "other utility Δ",
    "time s",
    "gate %",
    "opt state B",
]


def _delta(before: dict, after: dict) -> dict[str, float]:
    """Relative change (%) of every utility score, keyed ``bench/score``."""
    out = {}
    for bench, scores in before.items():
        for name, value in scores.items():
            new = after.get(bench, {}).get(name)
            if new is not None and value:
                out[f"{bench}/{name}"] = 100.0 * (new - value) / abs(value)
    return out


def comparison_row(name: str, report: dict) -> dict:
    """One line of the comparison from a run's ``erasure_report.json``."""
    s, t, cfg = report["summary"], report["timings"], report["config"]
    deltas = _delta(report["utility"]["before"], report["utility"]["after"])
    ppl = next((v for k, v in deltas.items() if k.endswith("/perplexity")), float("nan"))
    others = {k: v for k, v in deltas.items() if not k.endswith(("/perplexity", "/loss"))}
    return {
        "run": name,
        "method": cfg["method"],
        "selector": cfg["selector"],
        "select_fraction": cfg["select_fraction"],
        "forgotten_pct": 100.0 * s["forgotten_rate"],
        "steps": s["steps"],
        "rejected": s["gate_rejections"],
        "gate_exhausted": s["chunks_gate_exhausted"],
        "retain_ppl_delta_pct": ppl,
        "utility_delta_pct": others,
        "total_s": t["total_s"],
        "gate_share_pct": 100.0 * t["gate_s"] / max(t["total_s"], 1e-9),
        "optimizer_state_bytes": s["optimizer_state_bytes"],
    }


def format_comparison(rows: list[dict], markdown: bool = False) -> str:
    cells = [
        [
            r["run"],
            r["method"],
            r["selector"],
            r["forgotten_pct"],
            r["steps"],
            r["rejected"],
            r["gate_exhausted"],
            r["retain_ppl_delta_pct"],
            ", ".join(f"{k} {v:+.1f}%" for k, v in r["utility_delta_pct"].items()) or "-",
            r["total_s"],
            r["gate_share_pct"],
            r["optimizer_state_bytes"],
        ]
        for r in rows
    ]
    return format_table(cells, HEADERS, markdown=markdown)


def run_comparison(base: dict, runs, out: Path, split, erase, progress: bool, where: str = "the recipe") -> list[dict]:
    """Check every run's config first, then run (or reuse) each into ``out/<name>``; returns the rows.

    Args:
        base: shared recipe keys (CLI flags already applied).
        runs: the ``runs:`` list.
        out: the comparison directory.
        split: ``(mapping, where) -> (paths, EraseConfig)``.
        erase: ``(paths, config, out_dir, progress) -> report``.
        progress: progress bars.
        where: names the recipe in errors.
    """
    if not isinstance(runs, list) or not runs:
        raise ValueError(f"{where}: `runs:` must be a non-empty list of {{name: ..., <keys>}} mappings.")
    plans, names = [], set()
    for i, entry in enumerate(runs):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"{where}: runs[{i}] must be a mapping with a `name:` string.")
        name = entry["name"]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in names:
            raise ValueError(f"{where}: runs[{i}] name {name!r} must be unique and use only letters, digits, . _ -")
        names.add(name)
        merged = {**base, **{k: v for k, v in entry.items() if k != "name"}}
        plans.append((name, *split(merged, f"{where} runs[{i}] ({name})")))
    if (out / "comparison.json").exists():
        raise FileExistsError(f"{out}/comparison.json exists: this comparison is complete. Choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, paths, config in plans:
        report_file = out / name / "erasure_report.json"
        if report_file.is_file():
            print(f"[{name}] already done; reusing {report_file}")
            report = json.loads(report_file.read_text())
        else:
            print(f"[{name}] method={config.method} selector={config.selector}")
            report = erase(paths, config, out / name, progress)
        rows.append(comparison_row(name, report))
    table = format_comparison(rows)
    tmp = out / "comparison.json.tmp"
    (out / "comparison.md").write_text(format_comparison(rows, markdown=True) + "\n")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(out / "comparison.json")
    print("\n" + table)
    print(f"\nwrote {out}/comparison.json and comparison.md; each run in {out}/<run>/")
    return rows
