"""``MemorizationCallback``: score, flag and budget memorization while a Trainer fine-tunes.

    trainer = SFTTrainer(model=model, args=SFTConfig(...), train_dataset=ds, processing_class=tokenizer)
    trainer.add_callback(MemorizationCallback(trainer, probes, every_n_steps=100))
    # or with the settings as one object, the way the trainer takes args=SFTConfig(...):
    #   MemorizationCallback(trainer, probes, config=TrackConfig(every_n_steps=100, batch_size=64))
    trainer.train()   # -> OUTPUT_DIR/memorization/{history.jsonl, flagged.jsonl, flagged.meta.json}

or end to end: ``obliviate track --config recipes/track-sft.yaml``.

Built the way TRL's ``LogCompletionsCallback`` is: it holds the trainer, works every N optimizer steps
(``state.global_step``, so gradient accumulation counts updates, not micro-batches), splits the probes
across processes, gathers the rows on every rank, and lets only the main process write. Scores come
from :func:`obliviate.metrics.score_probes` on the unwrapped model (PEFT or not) under inference mode;
every module's train/eval flag is put back exactly as it was. Set-level metrics go through
``trainer.log`` so they reach ``state.log_history`` and every ``report_to`` integration.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transformers import Trainer, TrainerCallback

from obliviate.callbacks.config import HISTORY_METRICS, UNSET, TrackConfig, TrackingError, track_config
from obliviate.callbacks.distributed import broadcast_from_main, gather_rows, shard_probes, sharded_parameters
from obliviate.callbacks.flagging import BASELINE_FIELDS, group_key
from obliviate.callbacks.history import MemorizationFiles
from obliviate.data.probes import ProbeSet, ensure_pad_token, load_probes
from obliviate.metrics import context_length, score_probes
from obliviate.metrics.sets import summarize_scores

logger = logging.getLogger(__name__)


def _find_tokenizer(trainer, probes, tokenizer=None):
    """The probes' tokenizer: given, the trainer's ``processing_class``, the ProbeSet's, or the collator's.

    A plain ``Trainer`` is often built without ``processing_class``, the tokenizer going only to the data
    collator (``DataCollatorForLanguageModeling(tokenizer)``); the callback finds it there.
    """
    candidates = (
        tokenizer,
        getattr(trainer, "processing_class", None),
        getattr(probes, "tokenizer", None),
        getattr(getattr(trainer, "data_collator", None), "tokenizer", None),
    )
    for found in candidates:
        found = getattr(found, "tokenizer", found)  # a processor wraps its tokenizer
        if found is not None and callable(found):
            return found
    raise TrackingError(
        "no tokenizer: the trainer has no processing_class and its data collator no tokenizer. "
        "Pass tokenizer=... to MemorizationCallback, or build the trainer with "
        "processing_class=tokenizer."
    )


class MemorizationCallback(MemorizationFiles, TrainerCallback):
    """Track memorization of ``probes`` during training (DESIGN §4).

    Args:
        trainer: the ``transformers.Trainer`` (or TRL ``SFTTrainer``) this callback is added to.
        probes: a :class:`~obliviate.data.ProbeSet`, or anything :func:`~obliviate.data.load_probes` reads.
            Build them with :func:`obliviate.data.sft.probes_from_sft_rows` to score exactly the trained ids.
        config: a :class:`~obliviate.callbacks.TrackConfig` (the ``tracking:`` recipe section), the way a TRL
            trainer takes ``args``. Without it the keywords below build one; giving both is an error.
        every_n_steps: score every this many optimizer steps; None for none (then only ``every_epoch``
            and the end of training). The default keeps scoring ~200 probes under 5% of the toy model's SFT
            time (``perf/callback_overhead.py``); the cost scales with probes x probe length / step cost.
        every_epoch: also score at the end of every epoch.
        metrics: per-probe metrics written to ``history.jsonl`` (default: all).
        flag_rule: the :class:`FlagRule` (default: exact extraction, extraction probability >= 0.5, or MA
            above the 99th percentile of the controls of the probe's own group *and* gained by >= 0.5 over
            the probe's baseline). When the rule needs a baseline, the probes are scored at train begin even
            without ``score_on_start`` (rows at step 0 in ``history.jsonl``; a resumed run reads them back).
        budget: a :class:`MemorizationBudget` whose limits stop training.
        batch_size: probes per forward pass.
        sampling: the attacker's sampling for ``extraction_probability`` (default n=100, plain sampling).
        min_k: fraction of tokens for Min-K% and Min-K%++.
        score_on_start: also score before the first step.
        output_dir: where ``memorization/`` goes (default: ``trainer.args.output_dir``).
        reference_model: optional model on the same device for ``reference_ratio`` (doubles the cost); it
            is also the flag rule's baseline (scored once at train begin) instead of the step-0 scores.
        tokenizer: the probes' tokenizer (default: ``trainer.processing_class``, else the tokenizer the
            ``ProbeSet`` was built with, else ``trainer.data_collator.tokenizer``).
        progress: show a progress bar while scoring (main process).

    Raises:
        TrackingError: bad settings, a keyword given with ``config``, or an unwritable output directory;
            ProbeError for probes with ids outside the vocabulary or longer than the model's context or the
            trainer's ``max_length``.
    """

    def __init__(
        self,
        trainer,
        probes,
        config: TrackConfig | None = None,
        *,
        every_n_steps=UNSET,
        every_epoch=UNSET,
        metrics=UNSET,
        flag_rule=UNSET,
        budget=UNSET,
        batch_size=UNSET,
        sampling=UNSET,
        min_k=UNSET,
        score_on_start=UNSET,
        prefix_cache_mb=UNSET,
        output_dir: str | None = None,
        reference_model=None,
        tokenizer=None,
        progress: bool = False,
    ):
        self.config = track_config(
            config,
            every_n_steps=every_n_steps,
            every_epoch=every_epoch,
            metrics=metrics,
            flag_rule=flag_rule,
            budget=budget,
            batch_size=batch_size,
            sampling=sampling,
            min_k=min_k,
            score_on_start=score_on_start,
            prefix_cache_mb=prefix_cache_mb,
        )
        cfg = self.config
        self.trainer = trainer
        self.every_n_steps, self.every_epoch = cfg.every_n_steps, cfg.every_epoch
        self.score_on_start = cfg.score_on_start
        self.metrics = tuple(cfg.metrics) if cfg.metrics else HISTORY_METRICS
        self.flag_rule, self.budget, self.sampling = cfg.flag_rule, cfg.budget, cfg.sampling
        self.batch_size, self.min_k, self.progress = cfg.batch_size, cfg.min_k, progress
        self.reference_model = reference_model
        self._set_probes(probes, tokenizer)
        self.dir = Path(output_dir or trainer.args.output_dir) / "memorization"
        self.is_main = trainer.is_world_process_zero()
        if self.is_main:
            self._check_writable()
        self._init_state()

    def _set_probes(self, probes, tokenizer) -> None:
        """The tokenizer (given, the trainer's or the probes') and the probes, checked against the model."""
        self.tokenizer = _find_tokenizer(self.trainer, probes, tokenizer)
        ensure_pad_token(self.tokenizer)
        self.probes = probes if isinstance(probes, ProbeSet) else load_probes(probes, self.tokenizer)
        if len(self.probes) == 0:
            raise TrackingError("no probes to track: give at least one probe (members, canaries and controls).")
        self._check_probes()

    def _init_state(self) -> None:
        """What the run fills in: flags, the last scores, the baselines, and the flag rule's plan per group."""
        self.flagged: dict[str, int | None] = {}
        self.stop_reason: str | None = None
        self.scoring_seconds = 0.0
        self.last_rows: list[dict] = []
        self.last_summary: dict = {}
        self._last_step: int | None = None
        self._prefix: tuple | None = None  # (FrozenPrefixCache or None, the trainable parameters' ids)
        # {probe id: baseline row}: the step-0 scores, or the reference model's (DESIGN §4 calibration).
        self.baselines: dict[str, dict] = {}
        self.baseline_source = "reference model" if self.reference_model is not None else "step 0"
        self.groups = self.flag_rule.plan((p.group, p.role) for p in self.probes)

    # -- checks -----------------------------------------------------------------------------------
    def _model(self):
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    def _check_probes(self) -> None:
        model = self._model()
        vocab = model.get_input_embeddings().num_embeddings
        self.probes.check_vocab(min(vocab, len(self.tokenizer)))
        self.probes.check_fits(context_length(model))
        max_length = getattr(self.trainer.args, "max_length", None)
        if isinstance(max_length, int):
            for p in self.probes:
                if len(p) > max_length:
                    raise TrackingError(
                        f"probe {p.id!r} is {len(p)} tokens, longer than the trainer's max_length={max_length}: "
                        "training truncates such rows, so its end is never trained on. Raise max_length "
                        "(SFTConfig) or shorten the probe."
                    )

    # -- trainer events ---------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        flagged = self._prepare_files(state.global_step) if self.is_main else None
        self.flagged = broadcast_from_main(flagged, self.trainer.accelerator) or {}
        self._load_baselines(state)
        self.groups = self.flag_rule.plan(
            ((p.group, p.role) for p in self.probes),
            bool(self.baselines) or (self.score_on_start and state.global_step == 0),
        )
        if self.is_main:
            self._warn_absolute_groups()
            self._write_meta()
        if self.score_on_start and state.global_step == 0:
            self.evaluate(state, control)

    def on_step_end(self, args, state, control, **kwargs):
        at_end = state.max_steps > 0 and state.global_step >= state.max_steps
        if at_end or (self.every_n_steps and state.global_step % self.every_n_steps == 0):
            self.evaluate(state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.every_epoch:
            self.evaluate(state, control)

    def on_train_end(self, args, state, control, **kwargs):
        self.evaluate(state, control)
        if self._prefix is not None and self._prefix[0] is not None:
            self._prefix[0].remove()  # the trained model leaves as a plain model
        self._prefix = None

    # -- the work ---------------------------------------------------------------------------------
    def _load_baselines(self, state) -> None:
        """Each probe's baseline: the reference model's scores, the step-0 scores, or (resumed) history's."""
        if not self.flag_rule.needs_baseline:
            return
        step = state.global_step
        if self.reference_model is not None:
            rows = self.score(self.reference_model, with_reference=False)
        elif step == 0:
            if self.score_on_start:
                return  # evaluate() at step 0 scores, writes and keeps them
            rows = self.score()
            if self.is_main:
                self._write_history(rows, 0, float(state.epoch or 0.0))
        else:
            rows = broadcast_from_main(self._history_baselines() if self.is_main else None, self.trainer.accelerator)
        self._keep_baselines(rows)

    def _keep_baselines(self, rows: list[dict]) -> None:
        self.baselines = {
            r["id"]: {k: r[k] for k in BASELINE_FIELDS if k in r} for r in rows if "memorization_accuracy" in r
        }

    def _warn_absolute_groups(self) -> None:
        rule = self.flag_rule
        for group, calibration in self.groups.items():
            if calibration.judged_by != "absolute" or rule.control_ma_percentile is None or not calibration.probes:
                continue
            advice = (
                f" Add at least {rule.min_controls} never-trained controls of this group (format) to calibrate it."
                if calibration.controls < rule.min_controls
                else ""
            )
            logger.warning(
                "probe group %s has %d controls: its %d probes are judged by absolute evidence only "
                "(exact extraction, extraction probability >= %s), not against controls: %s.%s",
                group_key(group),
                calibration.controls,
                calibration.probes,
                rule.min_extraction_probability,
                calibration.why,
                advice,
            )

    def score(self, model=None, with_reference: bool = True) -> list[dict]:
        """Score every probe on ``model`` (default: the current weights) -- this rank's shard, gathered.

        Returns:
            Rows in probe order, each with the probe's ``group``.
        """
        accelerator = self.trainer.accelerator
        # Padded to equal length on every rank: under FSDP/ZeRO-3 each forward is a collective.
        shard, real = shard_probes(self.probes, accelerator.num_processes, accelerator.process_index)
        trained = model is None
        model = model if model is not None else self._model()
        modes = [(m, m.training) for m in model.modules()]
        cache = None
        try:
            cache = self._frozen_prefix(model) if trained and len(shard) else None
            if cache is not None:
                cache.enabled = True
            rows = (
                score_probes(
                    model,
                    self.tokenizer,
                    shard,
                    batch_size=self.batch_size,
                    reference_model=self.reference_model if with_reference else None,
                    min_k=self.min_k,
                    sampling=self.sampling,
                    progress="memorization probes" if self.progress and self.is_main else False,
                )
                if len(shard)
                else []
            )
        finally:
            if cache is not None:
                cache.enabled = False  # the trainer's own passes run the whole model
            for module, training in modes:
                module.training = training
        rows = gather_rows(rows, accelerator, real)  # each rank's padding dropped before gathering
        for row in rows:
            row["group"] = self.probes[row["id"]].group
        return rows

    def _frozen_prefix(self, model):
        """The frozen-prefix cache (erasure/prefix_cache.py) on the trained model, or None where it is off.

        The blocks below the lowest one holding a trainable parameter never change while the trainer steps, so
        each probe's hidden states there are computed once, not at every scoring. Re-installed if the set of
        trainable parameters changes (a layer unfrozen mid-run); off under FSDP / DeepSpeed, whose forward
        passes are collectives over sharded weights.
        """
        from obliviate.erasure.prefix_cache import FrozenPrefixCache

        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        ids = frozenset(id(p) for p in trainable.values())
        if self._prefix is not None and self._prefix[1] == ids:
            return self._prefix[0]
        if self._prefix is not None and self._prefix[0] is not None:
            self._prefix[0].remove()
        kind = str(self.trainer.accelerator.distributed_type).split(".")[-1]
        sharded = kind in ("FSDP", "DEEPSPEED") or sharded_parameters(model) is not None
        if sharded or not trainable:
            self._prefix = (None, ids)
            return None
        model.eval()  # the exactness check compares two passes: no dropout between them
        sample = [list(p.prefix_ids) + list(p.suffix_ids) for p in list(self.probes)[:4]]
        budget = int(self.config.prefix_cache_mb * 2**20)
        cache, status = FrozenPrefixCache.install(model, trainable, sample, budget)
        if cache is not None:
            cache.enabled = False
        logger.info("memorization probes: frozen-prefix cache %s", status)
        self._prefix = (cache, ids)
        return cache

    def evaluate(self, state, control) -> dict | None:
        """Score, flag, write and log at ``state.global_step`` (once per step); returns the logged metrics."""
        step = state.global_step
        if step == self._last_step:
            return None
        self._last_step = step
        t0 = time.perf_counter()
        rows = self.score()
        if step == 0 and self.flag_rule.needs_baseline and self.reference_model is None:
            self._keep_baselines(rows)
        summary = summarize_scores(rows)
        result = self.flag_rule.apply(rows, self.baselines)
        self.groups = result.groups
        new = {pid: reason for pid, reason in result.flags.items() if pid not in self.flagged}
        for pid in new:
            self.flagged[pid] = step
        epoch = float(state.epoch or 0.0)
        if self.is_main:
            self._write(rows, summary, new, result, step, epoch)
        self.last_rows, self.last_summary = rows, summary
        elapsed = time.perf_counter() - t0
        self.scoring_seconds += elapsed
        logs = {f"memorization/{k}": float(v) for k, v in summary.items()}
        logs.update(
            {
                "memorization/flagged": float(len(self.flagged)),
                "memorization/new_flagged": float(len(new)),
                "memorization/seconds": elapsed,
            }
        )
        for group, calibration in result.groups.items():
            if calibration.control_ma_threshold is not None:
                logs[f"memorization/control_ma_threshold/{group_key(group)}"] = calibration.control_ma_threshold
        self._log(control, logs)
        reason = self.budget.check(summary, len(self.flagged)) if self.budget.active else None
        if reason is not None and self.stop_reason is None:
            self.stop_reason = f"memorization budget exceeded at step {step}: {reason}; stopping training."
            logger.warning(self.stop_reason)
            control.should_training_stop = True
            self._log(control, {"memorization/budget_exceeded": 1.0, "memorization/budget_stop_reason": reason})
        return logs

    def _log(self, control, logs: dict) -> None:
        # The base Trainer.log, not the trainer's own: SFTTrainer.log merges in and clears its running training
        # metrics (entropy, token accuracy), which belong to the trainer's next loss log, not to ours.
        # Trainer.log runs on_log, which clears control.should_log: restore it, or the trainer would drop its
        # own loss log whenever a scoring step is also a logging step.
        should_log = control.should_log
        Trainer.log(self.trainer, logs)
        control.should_log = should_log
