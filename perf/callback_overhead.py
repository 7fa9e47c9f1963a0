"""Wall-time overhead of MemorizationCallback on SFT of the toy model, side by side.

    python perf/callback_overhead.py                        # builds the toy model in a temp dir
    python perf/callback_overhead.py --toy runs/toy --repeats 5 --every-n-steps 25 50 100 --threads 1

Runs TRL SFTTrainer on the toy corpus with and without the callback at its default settings (every 100
optimizer steps plus once at the end, all 208 toy probes, batch 32), same seed and same steps,
interleaved (without, with, without, with ...) so load changes on a shared machine hit both alike, and
prints medians with the overhead as a ratio. ``--every-n-steps`` takes several values to compare.
Target (DESIGN §8): at most 5% extra wall time at the default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def timed_callback_class():
    from obliviate.callbacks import MemorizationCallback

    class TimedCallback(MemorizationCallback):
        """Also counts the process CPU time of each scoring (wall time is counted by the callback itself)."""

        cpu_seconds = 0.0

        def evaluate(self, state, control):
            start = time.process_time()
            try:
                return super().evaluate(state, control)
            finally:
                self.cpu_seconds += time.process_time() - start

    return TimedCallback


def one_run(toy: Path, out: Path, steps: int, every_n_steps: int | None, probes) -> dict:
    """One SFT run; ``every_n_steps=None`` means without the callback."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    TimedCallback = timed_callback_class()
    tokenizer = AutoTokenizer.from_pretrained(toy / "base")
    model = AutoModelForCausalLM.from_pretrained(toy / "base")
    data = load_dataset("json", data_files=str(toy / "train.jsonl"), split="train").select_columns(
        ["prompt", "completion"]
    )
    args = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        per_device_train_batch_size=16,
        weight_decay=0.0,
        seed=0,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    callback = None
    if every_n_steps is not None:
        callback = TimedCallback(trainer, probes, every_n_steps=every_n_steps)
        trainer.add_callback(callback)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    scoring, scoring_cpu = (callback.scoring_seconds, callback.cpu_seconds) if callback else (0.0, 0.0)
    return {
        "wall": wall,
        "cpu": cpu,
        "scoring": scoring,
        "scoring_cpu": scoring_cpu,
        # The same run's own split: load changes during a run hit its training and its scoring alike.
        "in_run": scoring / (wall - scoring),
        "in_run_cpu": scoring_cpu / (cpu - scoring_cpu),
        "scorings": len({e["step"] for e in trainer.state.log_history if "memorization/flagged" in e}),
        "loss": trainer.state.log_history[-1].get("train_loss"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", help="an existing `obliviate toy` directory (default: build one in a temp dir)")
    parser.add_argument("--steps", type=int, default=170, help="optimizer steps (170 = the recipe's 10 epochs)")
    parser.add_argument(
        "--every-n-steps", type=int, nargs="+", help="the callback's trigger(s) to compare (default: its own default)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind, interleaved")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()

    import torch

    from obliviate.callbacks import TrackConfig
    from obliviate.data import load_probes
    from obliviate.report.tables import format_table

    default_every = TrackConfig().every_n_steps  # the callback's default is its config's
    args.every_n_steps = args.every_n_steps or [default_every]
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="obliviate-perf-"))
    toy = Path(args.toy) if args.toy else None
    if toy is None:
        from obliviate.toy import build_toy

        toy = build_toy(work / "toy")
    from transformers import AutoTokenizer

    probes = load_probes(toy / "probes.jsonl", AutoTokenizer.from_pretrained(toy / "base"))
    settings = [None, *args.every_n_steps]
    runs: dict = {k: [] for k in settings}
    for i in range(args.repeats):
        for every in settings:
            r = one_run(toy, work / f"run-{i}-{every}", args.steps, every, probes)
            runs[every].append(r)
            label = "without callback" if every is None else f"callback every {every}"
            print(
                f"repeat {i} {label}: wall {r['wall']:.2f} s, cpu {r['cpu']:.2f} s, scoring {r['scoring']:.2f} s",
                flush=True,
            )
    assert len({r["loss"] for v in runs.values() for r in v[:1]}) == 1, "the callback changed training"
    metrics = ("wall", "cpu", "scoring", "scoring_cpu", "in_run", "in_run_cpu")
    med = {k: {m: statistics.median(r[m] for r in v) for m in metrics} for k, v in runs.items()}
    base = med[None]
    rows = [["SFT alone", f"{base['wall']:.2f}", f"{base['cpu']:.2f}", "-", 0, "1.000", "1.000", "-", "-"]]
    for every in args.every_n_steps:
        m = med[every]
        rows.append(
            [
                f"SFT + callback, every {every}" + (" (default)" if every == default_every else ""),
                f"{m['wall']:.2f}",
                f"{m['cpu']:.2f}",
                f"{m['scoring']:.2f}",
                runs[every][0]["scorings"],
                f"{m['wall'] / base['wall']:.3f}",
                f"{m['cpu'] / base['cpu']:.3f}",
                f"{100 * m['in_run']:.1f}%",
                f"{100 * m['in_run_cpu']:.1f}%",
            ]
        )
    print(
        f"\n{args.steps} steps of toy SFT (batch 16), {len(probes)} probes, {torch.get_num_threads()} thread(s), "
        f"median of {args.repeats} interleaved runs"
    )
    print(
        format_table(
            rows,
            [
                "run",
                "wall s",
                "cpu s",
                "scoring s",
                "scorings",
                "wall ratio",
                "cpu ratio",
                "overhead (wall, in-run)",
                "overhead (cpu, in-run)",
            ],
        )
    )
    print(
        "\nwall/cpu ratio: A/B against the runs without the callback (noisy on a shared machine); in-run: "
        "scoring time / the same run's training time without it."
    )
    print("\ntarget: <= 5% extra wall time at the default (DESIGN §8)")


if __name__ == "__main__":
    main()
