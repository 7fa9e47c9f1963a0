"""False-positive rate of the flag rule on the toy: members flagged without absolute evidence.

    OMP_NUM_THREADS=1 python perf/flag_rule_fpr.py --settings demo --seeds 0 1 2 --out /tmp/flag-fpr

For each toy seed: build the toy (``obliviate.toy.build_toy``), fine-tune it with ``run_track`` (the demo's
training settings, or ``recipes/track-sft.yaml`` as written) with the default flag rule, then replay
``history.jsonl`` through several rules side by side. A member flagged by the rule is a false positive when
it has no absolute evidence at any scored step: never exactly extracted by greedy decoding and its
(n=100)-extraction probability always below the rule's ``min_extraction_probability``. DESIGN §8 asks
for at most 10% of members. Canaries flagged and controls flagged are shown beside it.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from obliviate.callbacks import FlagRule
from obliviate.data import read_jsonl

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "track-sft.yaml"
DEMO_TRAINING = {
    "training.learning_rate": 3e-3,
    "training.lr_scheduler_type": "linear",
    "training.num_train_epochs": 8,
    "training.per_device_train_batch_size": 16,
    "training.logging_steps": 17,
    "tracking.every_n_steps": 17,
}


def track(seed: int, settings: str, out: Path, p: float) -> Path:
    from obliviate.callbacks import run_track
    from obliviate.toy import ToyConfig, build_toy

    toy = out / f"toy-{seed}"
    if not (toy / "base" / "config.json").exists():
        build_toy(toy, ToyConfig(pretrain_steps=300, seed=seed))
    overrides = {
        "model": str(toy / "base"),
        "train_file": str(toy / "train.jsonl"),
        "probes": str(toy / "probes.jsonl"),
        "output_dir": str(out / f"{settings}-{seed}"),
        "training.disable_tqdm": True,
        "training.seed": seed,
        "tracking.max_probes": None,
        "tracking.batch_size": 64,
        "tracking.flag_rule.min_extraction_probability": p,
        **(DEMO_TRAINING if settings == "demo" else {"tracking.every_n_steps": 17}),
    }
    return run_track(RECIPE, overrides)


def replay(history: list[dict], rule: FlagRule, grouped: bool) -> dict[str, tuple[int, str]]:
    """``{id: (step, reason)}`` of the first flag per probe, as the callback makes them."""
    by_step = defaultdict(list)
    for row in history:
        by_step[row["step"]].append(row if grouped else {**row, "group": None})
    baselines = {r["id"]: r for r in by_step.get(0, [])}
    flags: dict[str, tuple[int, str]] = {}
    for step in sorted(s for s in by_step if s > 0):
        for pid, reason in rule.apply(by_step[step], baselines).flags.items():
            flags.setdefault(pid, (step, reason))
    return flags


def table(run: Path, p: float) -> list[list]:
    history = read_jsonl(run / "memorization" / "history.jsonl")
    roles = {r["id"]: r["role"] for r in history}
    members = [i for i, r in roles.items() if r == "member"]
    evidence = {
        r["id"] for r in history if r["step"] > 0 and (r["exact_extraction"] == 1 or r["extraction_probability"] >= p)
    }
    rules = [
        ("default (group controls, MA gain >= 0.5)", FlagRule(min_extraction_probability=p), True),
        ("MA gain >= 0.4", FlagRule(min_extraction_probability=p, min_ma_gain=0.4), True),
        ("group controls, no baseline", FlagRule(min_extraction_probability=p, min_ma_gain=None), True),
        ("old: pooled controls, no baseline", FlagRule(min_extraction_probability=p, min_ma_gain=None), False),
        ("absolute evidence only", FlagRule(min_extraction_probability=p, control_ma_percentile=None), True),
    ]
    out = []
    for name, rule, grouped in rules:
        flags = replay(history, rule, grouped)
        flagged_members = [i for i in members if i in flags]
        fp = [i for i in flagged_members if i not in evidence]
        canaries = sum(roles[i] == "canary" for i in flags)
        controls = sum(roles[i] == "control" for i in flags)
        out.append([name, len(flagged_members), len(fp), f"{len(fp) / len(members):.1%}", canaries, controls])
    callback_flags = {r["id"] for r in read_jsonl(run / "memorization" / "flagged.jsonl")}
    assert callback_flags == set(replay(history, FlagRule(min_extraction_probability=p), True)), (
        "the replay disagrees with the callback's own flags"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", choices=("demo", "track-sft"), default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--min-extraction-probability", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("/tmp/flag-fpr"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    p = args.min_extraction_probability
    for seed in args.seeds:
        run = track(seed, args.settings, args.out, p)
        rows = table(run, p)
        print(
            f"\n{args.settings} settings, toy seed {seed}, min_extraction_probability {p} "
            f"(160 members, 16 canaries, 16+16 controls)"
        )
        print("| rule | members flagged | without absolute evidence | share of members | canaries | controls |")
        print("|---|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
