"""Every erasure method x selector side by side on the same forget sets of 8, 32 and 128 memorized sequences.

    python perf/erasure_bench.py                                   # everything (~15-30 min on 2 CPU cores)
    python perf/erasure_bench.py --sizes 8 32 --methods emso ga --selectors contrastive all --gate off
    python perf/erasure_bench.py --demo-only --demo-dir runs/demo  # each method on a `make demo` run's flagged set

Setup, cached under ``--work`` (default ``runs/erasure-bench``):

1. the demo's flagged set: a finished ``obliviate demo`` run (``--demo-dir``; ``WORK/demo`` is run first when
   absent). Each of ``--demo-methods`` erases it with the demo recipe's erase settings and gate, only the
   method swapped, judged by greedy ``generate()`` (``greedy still``), held-out perplexity and KL on the toy's
   ``heldout.jsonl``, the controls' MA kept (the lower of the two groups) and the facts' multiple choice;
2. the toy build (``obliviate.toy.build_toy``);
3. large requests: ``recipes/track-sft.yaml`` through ``obliviate.callbacks.run_track`` (TRL SFTTrainer),
   trained ``--epochs`` epochs (default 30) so that >= 128 members and canaries are memorized. Forget sets are the N most memorized (exactly extractable first, then by MA),
   the same sets for every method.

Each run erases a fresh copy of the model with :class:`obliviate.erasure.Eraser` (``chunk_size`` 32,
``max_steps`` 200 per chunk; with the gate on, the default gate's benchmark checked every
``--gate-every`` steps, 5 by default to keep the grid affordable) and reports forgotten %, retain perplexity change (retain.jsonl minus the
forget set; graddiff and the contrastive selector's retain term train on / look at that text, so
held-out perplexity on toy ``heldout.jsonl`` — never trained — is reported too), collateral damage
on the trained members/canaries that were NOT asked to be forgotten (their mean suffix loss change and how
many of the exactly extractable ones stopped being so), multiple-choice accuracy change (toy ``multiple_choice.jsonl``), kept steps, wall time, the
share of it spent in the gate, peak memory and optimizer-state bytes. Peak memory: on CUDA
``torch.cuda.max_memory_allocated``; on CPU the peak resident set size above the run's starting RSS,
sampled every 5 ms from /proc/self/statm (tracemalloc does not see torch's allocations), with
``malloc_trim`` between runs so freed memory does not hide the next run's growth.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import json
import os
import platform
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from obliviate.data import ProbeSet, load_probes
from obliviate.data.flagged import read_flagged
from obliviate.erasure import LOSSES, SELECTORS, EraseConfig, Eraser
from obliviate.erasure.run import filter_retain
from obliviate.metrics import score_probes
from obliviate.modeling import load_model_and_tokenizer
from obliviate.report.tables import format_table

ROOT = Path(__file__).resolve().parents[1]


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, else sampled RSS growth (bytes)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.peak = 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        with contextlib.suppress(OSError):  # not glibc: then RSS may keep earlier runs' freed memory
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.start = self.rss()
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, self.rss() - self.start)
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss() - self.start)


def setup(work: Path, epochs: int) -> dict:
    """Toy build and the long-trained model (each built once, then reused)."""
    from obliviate.callbacks import run_track
    from obliviate.toy import build_toy

    toy = work / "toy"
    if not (toy / "base").is_dir():
        build_toy(toy)
    recipe = str(ROOT / "recipes" / "track-sft.yaml")
    common = {"model": str(toy / "base"), "train_file": str(toy / "train.jsonl"), "probes": str(toy / "probes.jsonl")}
    out = work / f"track-long-{epochs}"
    if not (out / "model").is_dir():
        run_track(
            recipe,
            {**common, "output_dir": str(out), "training.num_train_epochs": epochs, "tracking.every_n_steps": 10**6},
        )
    runs = {"long": out}
    return {"toy": toy, **runs}


def still_extracted(model, tokenizer, forget: ProbeSet, before: dict[str, bool] | None = None) -> dict[str, bool]:
    """Unpadded greedy ``generate()`` from each prefix (one row at a time): does it reproduce the suffix?"""
    from obliviate.metrics.generation import greedy_continuations

    probes = [p for p in forget if before is None or before[p.id]]
    out = greedy_continuations(
        model, [p.prefix_ids for p in probes], [len(p.suffix_ids) for p in probes], tokenizer.pad_token_id, batch_size=1
    )
    return {p.id: g == p.suffix_ids for p, g in zip(probes, out)}


def run_one(
    model,
    tokenizer,
    forget: ProbeSet,
    controls: ProbeSet,
    toy: Path,
    config: EraseConfig,
    others: tuple[ProbeSet, list[dict]] | None = None,
) -> dict:
    retain, info = filter_retain(toy / "retain.jsonl", forget, tokenizer)
    rows = [{"text": t} for t in retain]
    config.utility = [
        {"name": "perplexity", "data": rows, "label": "retain_ppl"},
        {"name": "perplexity", "data": str(toy / "heldout.jsonl"), "label": "heldout_ppl"},
        {"name": "multiple_choice", "data": str(toy / "multiple_choice.jsonl"), "label": "mc"},
    ]
    work = copy.deepcopy(model)
    device = next(work.parameters()).device
    extracted = still_extracted(work, tokenizer, forget)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        result = Eraser(
            work, tokenizer, forget, config, controls=controls, retain=retain, heldout=str(toy / "heldout.jsonl")
        ).erase()
        wall = time.perf_counter() - start
    after_greedy = still_extracted(result.model, tokenizer, forget, extracted)
    r = result.report
    before, after = r["utility"]["before"], r["utility"]["after"]
    collateral = {}
    if others is not None:  # the trained sequences NOT asked to be forgotten: what selective erasure must keep
        probes, rows_before = others
        rows_after = score_probes(result.model, tokenizer, probes)
        loss_before = sum(x["loss"] for x in rows_before) / len(rows_before)
        collateral = {
            "others_loss_pct": 100 * (sum(x["loss"] for x in rows_after) / len(rows_after) / loss_before - 1),
            "others_lost": sum(
                b["exact_extraction"] and not a["exact_extraction"] for b, a in zip(rows_before, rows_after)
            ),
            "others_extractable": sum(b["exact_extraction"] for b in rows_before),
        }
    held = r["heldout"]["after"] or {}
    kl = next((v["kl"] for k, v in held.items() if "kl" in v), float("nan"))
    kept = [
        c["memorization_accuracy_kept"]
        for c in (r["collateral"]["controls"] or {}).values()
        if c["memorization_accuracy_kept"] is not None
    ]
    return {
        **collateral,
        "forgotten_pct": 100 * r["summary"]["forgotten_rate"],
        "greedy_still": sum(after_greedy.values()),
        "greedy_before": sum(extracted.values()),
        "heldout_kl": kl,
        "controls_ma_kept_min": min(kept) if kept else float("nan"),
        "ppl_pct": 100 * (after["retain_ppl"]["perplexity"] / before["retain_ppl"]["perplexity"] - 1),
        "heldout_pct": 100 * (after["heldout_ppl"]["perplexity"] / before["heldout_ppl"]["perplexity"] - 1),
        "mc_points": 100 * (after["mc"]["acc"] - before["mc"]["acc"]),
        "steps": r["summary"]["steps"],
        "attempted": r["summary"]["attempted_steps"],
        "exhausted": r["summary"]["chunks_gate_exhausted"],
        "wall_s": wall,
        "gate_pct": 100 * r["timings"]["gate_s"] / max(r["timings"]["total_s"], 1e-9),
        "peak_mb": memory.peak / 2**20,
        "opt_bytes": r["summary"]["optimizer_state_bytes"],
        "selected": r["summary"]["selected_weights"],
        "retain_dropped": info["dropped"],
    }


def gate_section(toy: Path, forget: ProbeSet, tokenizer, every: int) -> dict:
    """The default gate (two-sided perplexity + kl_to_original on the gate-only split of the retain text), checked
    every ``every`` steps; the rest of its schedule as GateConfig's defaults."""
    return {"every": every, "benchmarks": ["default"]}


def most_memorized(model, tokenizer, probes: ProbeSet, n: int) -> tuple[ProbeSet, int]:
    rows = score_probes(model, tokenizer, probes.by_role("member", "canary"))
    rows.sort(
        key=lambda r: (-r["exact_extraction"], -r["memorization_accuracy"], -r["extraction_probability"], r["id"])
    )
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} members/canaries; lower --sizes")
    return probes.subset([r["id"] for r in rows[:n]]), sum(r["exact_extraction"] for r in rows[:n])


def demo_rows(demo_dir: Path, methods: list[str]) -> list[dict]:
    """Each method on the flagged set of a ``make demo`` run (``obliviate demo --out DIR``): the demo recipe's
    erase settings and gate, only ``method`` swapped, judged by greedy ``generate()`` and held-out text."""
    from obliviate.demo.recipe import load_demo_recipe
    from obliviate.demo.run import resolve_erase_config

    summary = json.loads((demo_dir / "demo.json").read_text())
    toy = Path(summary["toy"])
    model, tokenizer = load_model_and_tokenizer(summary["tracked_model"], device="cpu")
    flagged = read_flagged(summary["flagged"], tokenizer)
    forget = ProbeSet(p for p in flagged if p.role != "control")
    controls = load_probes(toy / "probes.jsonl", tokenizer, roles=("control",))
    rows = []
    for method in methods:
        recipe = load_demo_recipe(summary["recipe"], {"erase.method": method})
        config = resolve_erase_config(recipe.erase, toy, [demo_dir / "data", toy])
        row = {"method": method, **run_one(model, tokenizer, forget, controls, toy, config)}
        rows.append(row)
        print(
            f"  demo {method:12s} greedy still {row['greedy_still']}/{row['greedy_before']} forgotten "
            f"{row['forgotten_pct']:5.1f}% heldout {row['heldout_pct']:+6.2f}% KL {row['heldout_kl']:.3f} controls MA "
            f"kept {row['controls_ma_kept_min']:.2f} mc {row['mc_points']:+5.1f} {row['wall_s']:6.1f}s",
            flush=True,
        )
    return rows


DEMO_HEADERS = ["method", "greedy still", "forgotten %", "heldout ppl Δ%", "heldout KL", "controls MA kept"]
DEMO_HEADERS += ["MC Δ pts", "steps (attempted)", "wall s"]


def demo_cells(rows: list[dict]) -> list[list]:
    return [
        [
            r["method"],
            f"{r['greedy_still']}/{r['greedy_before']}",
            r["forgotten_pct"],
            r["heldout_pct"],
            r["heldout_kl"],
            r["controls_ma_kept_min"],
            r["mc_points"],
            f"{r['steps']} ({r['attempted']})",
            r["wall_s"],
        ]
        for r in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/erasure-bench", help="cache of the toy build and SFT models")
    parser.add_argument("--epochs", type=int, default=30, help="SFT epochs of the large-request model")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--methods", nargs="+", default=sorted(LOSSES), choices=sorted(LOSSES))
    parser.add_argument("--selectors", nargs="+", default=sorted(SELECTORS), choices=sorted(SELECTORS))
    parser.add_argument(
        "--gate",
        choices=["on", "off", "both"],
        default="both",
        help="on: the default gate (retain perplexity +2%%); off: run to the forgetting criterion",
    )
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate (every selector but `all`)")
    parser.add_argument("--lr-all", type=float, default=1e-4, help="learning rate with selector `all`")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--gate-every", type=int, default=5, help="gate check every N steps (the default gate: 1)")
    parser.add_argument("--tag", default="all", help="results file suffix (results-TAG.json / .md)")
    parser.add_argument("--demo-only", action="store_true")
    parser.add_argument(
        "--demo-dir", default=None, help="a finished `obliviate demo --out DIR` run (default: WORK/demo)"
    )
    parser.add_argument(
        "--demo-methods",
        nargs="+",
        default=["emso", "ga", "graddiff", "npo", "npo_rt", "unlikelihood", "ga_to_reference"],
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    demo_dir = Path(args.demo_dir) if args.demo_dir else work / "demo"
    if not (demo_dir / "demo.json").is_file():
        from obliviate.cli import main as cli

        cli(["demo", "--out", str(demo_dir)])
    print(f"\nthe demo's flagged set ({demo_dir}), each method under the demo's gate:")
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} {'CUDA' if torch.cuda.is_available() else 'CPU'}",
        "demo": demo_rows(demo_dir, args.demo_methods),
        "runs": [],
    }
    demo_table = format_table(demo_cells(results["demo"]), DEMO_HEADERS)
    (work / f"results-{args.tag}.json").write_text(json.dumps(results, indent=1))
    (work / f"results-{args.tag}-demo.md").write_text(
        format_table(demo_cells(results["demo"]), DEMO_HEADERS, markdown=True) + "\n"
    )
    print("\n" + demo_table)
    if args.demo_only:
        return
    paths = setup(work, args.epochs)
    model, tokenizer = load_model_and_tokenizer(paths["long"] / "model")
    probes = load_probes(paths["toy"] / "probes.jsonl", tokenizer)
    controls = probes.by_role("control")
    gates = ["on", "off"] if args.gate == "both" else [args.gate]
    table = []
    for size in args.sizes:
        forget, extractable = most_memorized(model, tokenizer, probes, size)
        kept = ProbeSet(p for p in probes.by_role("member", "canary") if p.id not in forget)
        others = (kept, score_probes(model, tokenizer, kept))
        print(f"\nforget set of {size}: {extractable} exactly extractable, the rest the most memorized by MA")
        for gate in gates:
            group = []
            for method in args.methods:
                for selector in args.selectors:
                    config = EraseConfig(
                        method=method,
                        selector=selector,
                        max_steps=args.max_steps,
                        learning_rate=args.lr_all if selector == "all" else args.lr,
                        gate=gate_section(paths["toy"], forget, tokenizer, args.gate_every) if gate == "on" else None,
                        reference_model=str(paths["toy"] / "base"),  # ga_to_reference's; the others ignore it
                    )
                    row = {
                        "size": size,
                        "extractable": extractable,
                        "gate": gate,
                        "method": method,
                        "selector": selector,
                        **run_one(model, tokenizer, forget, controls, paths["toy"], config, others),
                    }
                    group.append(row)
                    results["runs"].append(row)
                    (work / f"results-{args.tag}.json").write_text(json.dumps(results, indent=1))
                    print(
                        f"  {size:4d} gate {gate:3s} {method:8s} {selector:11s} forgotten {row['forgotten_pct']:5.1f}% "
                        f"greedy still {row['greedy_still']}/{row['greedy_before']} KL {row['heldout_kl']:.3f} "
                        f"controls MA kept {row['controls_ma_kept_min']:.2f} "
                        f"ppl {row['ppl_pct']:+6.2f}% heldout {row['heldout_pct']:+6.2f}% others loss "
                        f"{row['others_loss_pct']:+6.1f}% lost {row['others_lost']:3d}/{row['others_extractable']} mc {row['mc_points']:+5.1f} steps {row['steps']:4d} "
                        f"{row['wall_s']:6.1f}s",
                        flush=True,
                    )
            ref = next((r for r in group if r["method"] == "emso" and r["selector"] == "contrastive"), group[0])
            for row in group:
                row["time_x"] = row["wall_s"] / max(ref["wall_s"], 1e-9)
                row["opt_x"] = row["opt_bytes"] / max(ref["opt_bytes"], 1)
            table += group
    headers = [
        "size",
        "gate",
        "method",
        "selector",
        "forgotten %",
        "greedy still",
        "heldout KL",
        "controls MA kept",
        "retain ppl Δ%",
        "heldout ppl Δ%",
        "others loss Δ%",
        "others lost",
        "MC Δ pts",
        "steps",
        "wall s",
        "× time",
        "gate %",
        "peak MB",
        "opt state KB",
        "× opt",
    ]
    cells = [
        [
            r["size"],
            r["gate"],
            r["method"],
            r["selector"],
            r["forgotten_pct"],
            f"{r['greedy_still']}/{r['greedy_before']}",
            r["heldout_kl"],
            r["controls_ma_kept_min"],
            r["ppl_pct"],
            r["heldout_pct"],
            r["others_loss_pct"],
            f"{r['others_lost']}/{r['others_extractable']}",
            r["mc_points"],
            r["steps"],
            r["wall_s"],
            r["time_x"],
            r["gate_pct"],
            r["peak_mb"],
            r["opt_bytes"] / 1024,
            r["opt_x"],
        ]
        for r in table
    ]
    print("\n" + format_table(cells, headers))
    print("\n× columns: ratio to emso/contrastive at the same size and gate setting.")
    print(f"machine: {results['machine']}")
    (work / f"results-{args.tag}.json").write_text(json.dumps(results, indent=1))
    (work / f"results-{args.tag}.md").write_text(format_table(cells, headers, markdown=True) + "\n")
    print(f"wrote {work / f'results-{args.tag}.json'} and {work / f'results-{args.tag}.md'}")


if __name__ == "__main__":
    main()
