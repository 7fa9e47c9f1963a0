"""Study 4's runs: the long-trained toy model of each seed (cached), its forget sets, one erasure per arm.

    python -c "from obliviate.studies.erasure_runs import erase_one; help(erase_one)"

Everything is cached under the study's ``--out``: ``models/seed<S>/`` (corpus files and the tracked SFT run)
and ``runs/<run>.json`` (one measured erasure; its full erasure report in ``runs/<run>/erasure_report.json``),
each with the settings it was made with, so a rerun of the recipe reuses what is still valid and a changed
setting redoes only what it touches.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from obliviate.studies.common import TRAINED_ROLES, StudyError, probes_with_calibration, track_run, write_jsonl
from obliviate.studies.erasure import COLLAPSE_RATIO, ErasureStudyConfig, arm_name, gate_tag, split_method


def _key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(path: Path, key: str) -> dict | None:
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get("key") == key:
            return record
    return None


@dataclass
class SeedModel:
    """One seed's fine-tuned model, its data files and its trained sequences ranked by memorization."""

    dir: Path
    model: object
    tokenizer: object
    probes: object
    controls: object
    ranked: list[dict]
    record: dict

    def forget_set(self, size: int):
        """The ``size`` most memorized members/canaries (exactly extractable first, then MA, then extraction p)."""
        if size > len(self.ranked):
            raise StudyError(
                f"a forget set of {size} needs {size} trained sequences; seed model has {len(self.ranked)}: "
                "raise n_members."
            )
        return self.probes.subset([r["id"] for r in self.ranked[:size]])

    def others(self, size: int, limit: int):
        """Up to ``limit`` trained sequences outside the forget set of ``size`` (every k-th: all memorization levels)."""
        rest = self.ranked[size:]
        step = max(1, len(rest) // limit) if rest else 1
        return self.probes.subset([r["id"] for r in rest[::step][:limit]])


def sft_model(config: ErasureStudyConfig, base: Path, out: Path, model: tuple[int, int, int]) -> SeedModel:
    """Fine-tune the base on a corpus of ``n_members`` records for ``epochs`` (reused when already done).

    The never-trained controls the erasure reads (criterion thresholds, controls' MA change) are the corpus's
    and its ``calibration_controls``: 128 per group in ``controls.jsonl``, not the 16 per group SFT tracks.

    Args:
        model: ``(seed, n_members, epochs)``; the seed draws the corpus and trains.
    """
    from obliviate.data import load_probes
    from obliviate.data.synthetic import make_corpus
    from obliviate.metrics import score_probes
    from obliviate.modeling import load_model_and_tokenizer

    seed, n_members, epochs = model
    run_dir = out / "models" / model_name(model)
    base_key = {"base": config.model} if config.model else {}  # absent for the toy: cached runs stay valid
    key = _key({"toy": vars(config.toy), "model": model, "training": config.training, **base_key})
    record = _cached(run_dir / "model.json", key)
    if record is None:
        corpus = make_corpus(n_members=n_members, seed=seed)
        for name in ("retain", "heldout", "multiple_choice"):
            write_jsonl(run_dir / f"{name}.jsonl", getattr(corpus, name))
        run = track_run(
            run_dir,
            base,
            corpus.train,
            corpus.probes,
            config,
            seed,
            training={"num_train_epochs": epochs},
            tracking={"every_n_steps": None, "score_on_start": False},
        )
        record = {"key": key, "seed": seed, "n_members": n_members, "epochs": epochs, "train_rows": len(corpus.train)}
        record["sft_seconds"] = run.seconds
        (run_dir / "model.json").write_text(json.dumps(record, indent=1))
    if not (run_dir / "controls.jsonl").is_file():  # also for an SFT model cached before the file existed
        corpus = make_corpus(n_members=n_members, seed=seed)
        controls = [p for p in probes_with_calibration(corpus) if p["role"] == "control"]
        write_jsonl(run_dir / "controls.jsonl", controls)
    lm, tokenizer = load_model_and_tokenizer(run_dir / "track" / "model", device="cpu")
    probes = load_probes(run_dir / "probes.jsonl", tokenizer)
    controls = load_probes(run_dir / "controls.jsonl", tokenizer)
    rows = score_probes(lm, tokenizer, probes.by_role(*TRAINED_ROLES))
    rows.sort(
        key=lambda r: (-r["exact_extraction"], -r["memorization_accuracy"], -r["extraction_probability"], r["id"])
    )
    record = {**record, "trained": len(rows), "extractable": sum(r["exact_extraction"] for r in rows)}
    record["controls"] = len(controls)
    return SeedModel(run_dir, lm, tokenizer, probes, controls, rows, record)


def model_name(model: tuple[int, int, int]) -> str:
    seed, n_members, epochs = model
    return f"seed{seed}-n{n_members}-e{epochs}"


def erase_config(
    config: ErasureStudyConfig, method: str, selector: str, seed: int, data: Path, gate=None, reference: Path = None
):
    """The EraseConfig of one run: the recipe's ``erase`` section, the arm (``method`` may be ``emso:<variant>``),
    its lr, the block's gate (None: none) and the utility it reports. ``reference`` is the model SFT started
    from (``reference_model`` of ga_to_reference and of the report's controls line)."""
    from obliviate.erasure import EraseConfig

    lr = config.selector_learning_rates.get(selector, config.erase.get("learning_rate", 3e-4))
    utility = [
        {"name": "perplexity", "data": str(data / "heldout.jsonl"), "label": "heldout_ppl"},
        # The whole distribution (top_k null): exact KL on a toy vocabulary, not the top-64 lower bound.
        {"name": "kl_to_original", "data": str(data / "heldout.jsonl"), "label": "heldout_kl", "top_k": None},
        {"name": "multiple_choice", "data": str(data / "multiple_choice.jsonl"), "label": "mc"},
    ]
    settings = {**config.erase, "learning_rate": lr, "seed": seed, "gate": gate, "plots": False}
    method, variant = split_method(method)
    if variant is not None:
        settings["entropy_variant"] = variant
    if method == "ga_to_reference":
        if reference is None:
            raise StudyError("ga_to_reference needs the model SFT started from: pass reference.")
        settings["reference_model"] = str(reference)
    return EraseConfig(method=method, selector=selector, utility=utility, **settings)


def set_mean_check(config: ErasureStudyConfig, model, tokenizer, forget, controls) -> dict:
    """Jang et al.'s criterion on ``model``: the set's mean full-sequence MA and EL_n against the controls' means."""
    from obliviate.erasure.criterion import ForgettingCriterion

    absolute = {"memorization_accuracy": 0.5, "extraction_probability": 0.01, "extraction_likelihood": 0.05}
    criterion = ForgettingCriterion(
        "set_mean", controls, "controls", absolute, el_n=config.el_n, el_stride=config.el_stride, control_quantile=None
    )
    criterion.check(model, tokenizer, forget)
    last = criterion.last
    (threshold,) = last["groups"].values()
    return {
        "forgotten": bool(last["forgotten"]),
        "ma": last["set_memorization_accuracy"],
        "el": last["set_extraction_likelihood"],
        "threshold_ma": threshold["memorization_accuracy"],
        "threshold_el": threshold["extraction_likelihood"],
        "threshold_source": threshold["source"],
    }


def _pooled_ma_change(groups: dict | None) -> float | None:
    """After - before mean MA over every group's probes (groups weighted by their counts)."""
    if not groups:
        return None
    n = sum(g["count"] for g in groups.values())
    before = sum(g["memorization_accuracy_before"] * g["count"] for g in groups.values()) / n
    after = sum(g["memorization_accuracy_after"] * g["count"] for g in groups.values()) / n
    return after - before


def measures(report: dict, set_mean: dict) -> dict:
    """The study's per-run numbers from an erasure report and the set-mean check on the erased model."""
    s, before, after = report["summary"], report["utility"]["before"], report["utility"]["after"]
    ppl_before, ppl_after = before["heldout_ppl"]["perplexity"], after["heldout_ppl"]["perplexity"]
    return {
        "forgotten": s["forgotten_rate"],
        "set_mean": set_mean,
        "extraction_before": s["extraction_rate_before"],
        "extraction_after": s["extraction_rate_after"],
        "heldout_ppl_before": ppl_before,
        "heldout_ppl_after": ppl_after,
        "heldout_ppl_change": ppl_after / ppl_before - 1,
        "kl": after["heldout_kl"]["kl"],
        "mc_before": before["mc"]["acc"],
        "mc_after": after["mc"]["acc"],
        "controls_ma_change": _pooled_ma_change(report["collateral"]["controls"]),
        "others_ma_change": _pooled_ma_change(report["collateral"]["not_erased"]),
        "collapsed": ppl_after > COLLAPSE_RATIO * ppl_before,
        "steps": s["steps"],
        "chunk_status": sorted({c["status"] for c in report["chunks"]}),
        "chunks": s["chunks"],
        # Under a gate: how often it rolled a block back, and chunks it stopped (every retry of a block rejected).
        "gate_checks": len(report["gate_decisions"]),
        "gate_rejections": s["gate_rejections"],
        "chunks_gate_exhausted": s["chunks_gate_exhausted"],
        **forgetting_curve(report),
    }


def forgetting_curve(report: dict) -> dict:
    """When each forget-set sequence was forgotten: the optimizer step (counted over the run, chunks in turn,
    every attempt) from which the criterion held, None for one still memorized at the end; the curves plot
    reads it. The end state is the criterion on the erased model with the controls re-scored there; a sequence
    it calls forgotten that no check during the run did (the controls moved) counts from the last step."""
    last = report["summary"]["attempted_steps"]
    return {
        "forgotten_at": [
            (last if seq["forgotten_step"] is None else seq["forgotten_step"]) if seq["forgotten"] else None
            for seq in report["sequences"]
        ]
    }


def erase_one(
    config: ErasureStudyConfig,
    seed_model: SeedModel,
    size: int,
    method: str,
    selector: str,
    seed: int,
    gate=None,
    reference: Path | None = None,
):
    """Erase the forget set of ``size`` from a copy of the seed's model with one arm (under ``gate``, None: none);
    the measured row, the erased model and its erasure report.

    The retain text is the seed's ``retain.jsonl`` less the forget set; EraseConfig splits it (by hash) into the
    part a loss may read and the gate's part, so the gate reads only text no loss or selector trains on. The
    held-out perplexity and KL are on ``heldout.jsonl``, read by neither.
    """
    from obliviate.erasure import Eraser
    from obliviate.erasure.criterion import build_criterion
    from obliviate.erasure.run import filter_retain

    m = seed_model
    forget, others = m.forget_set(size), m.others(size, config.max_others)
    controls = m.controls
    retain, _ = filter_retain(m.dir / "retain.jsonl", forget, m.tokenizer)
    erase = erase_config(config, method, selector, seed, m.dir, gate, reference)
    # What the two criteria say before erasure: a request whose sequences already pass says nothing.
    forgotten_before, _ = build_criterion(erase, controls).check(m.model, m.tokenizer, forget)
    set_mean_before = set_mean_check(config, m.model, m.tokenizer, forget, controls)
    start = time.perf_counter()
    result = Eraser(
        copy.deepcopy(m.model), m.tokenizer, forget, erase, controls=controls, retain=retain, collateral=others
    ).erase()
    wall = time.perf_counter() - start
    row = {
        "seed": seed,
        "size": size,
        "method": method,
        "selector": selector,
        "arm": arm_name(method, selector),
        "gate": gate,
        "learning_rate": erase.learning_rate,
        "forget_ids": forget.ids,
        "forget_extractable": sum(r["exact_extraction"] for r in m.ranked[:size]),
        "memorized_before": 1 - float(forgotten_before.float().mean()),
        "set_mean_before": set_mean_before,
        **measures(result.report, set_mean_check(config, result.model, m.tokenizer, forget, controls)),
        "wall_s": wall,
    }
    return row, result.model, result.report


def erase_all(config: ErasureStudyConfig, base: Path, out: Path) -> tuple[list[dict], dict]:
    """Every run of the recipe's blocks (cached per run); the rows and each seed model's record."""
    runs, models, loaded = [], {}, {}
    todo = config.runs()  # block order: the recipe puts what matters most first
    reference = base  # the base every seed's SFT started from
    for i, (model, size, method, selector, gate) in enumerate(todo, 1):
        seed = model[0]
        name = f"{model_name(model)}-f{size}-{method.replace(':', '-')}-{selector}{gate_tag(gate)}"
        erase = erase_config(config, method, selector, seed, Path("."), gate, Path("reference"))
        path = out / "runs" / f"{name}.json"
        if model not in loaded:
            loaded.clear()  # one SFT model in memory at a time
            loaded[model] = sft_model(config, base, out, model)
            models[model_name(model)] = loaded[model].record
            print(f"{model_name(model)}: {loaded[model].record}", flush=True)
        record = models[model_name(model)]
        settings = {"erase": erase.to_dict(), "el": [config.el_n, config.el_stride, config.max_others]}
        key = _key({**settings, "controls": record["controls"]})
        row = _cached(path, key + record["key"])
        if row is not None and (out / "runs" / name / "erasure_report.json").is_file():
            # The curve from the run's own report (rows cached before rows carried it included), no rerun.
            row.update(forgetting_curve(json.loads((out / "runs" / name / "erasure_report.json").read_text())))
        if row is None:
            row, erased, report = erase_one(config, loaded[model], size, method, selector, seed, gate, reference)
            row.update(key=key + record["key"], n_members=model[1], epochs=model[2])
            (out / "runs" / name).mkdir(parents=True, exist_ok=True)
            (out / "runs" / name / "erasure_report.json").write_text(json.dumps(report, default=str))
            path.write_text(json.dumps(row, indent=1))
            if config.save_models:
                erased.save_pretrained(out / "runs" / name / "model")
        runs.append(row)
        print(
            f"  [{i}/{len(todo)}] {name}: forgotten {row['forgotten']:.2f} set-mean {row['set_mean']['forgotten']} "
            f"held-out ppl {100 * row['heldout_ppl_change']:+.1f}% KL {row['kl']:.3f} "
            f"MC {100 * (row['mc_after'] - row['mc_before']):+.1f} pts {row['steps']} steps "
            f"{row.get('gate_rejections', 0)} rejected {row['wall_s']:.0f}s",
            flush=True,
        )
    return runs, models
