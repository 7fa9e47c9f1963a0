"""The erasure loop: chunked, selected-weight, gated (DESIGN §5).

    obliviate erase --model runs/toy/base --forget runs/toy/probes.jsonl --retain runs/toy/retain.jsonl \\
        --config recipes/erase-emso.yaml --out runs/toy/erased

Per chunk of ``chunk_size`` sequences: score them; select weights on the not-yet-forgotten ones;
then blocks of ``gate.every`` optimizer steps, each run by the gate (``UtilityGate.run_block``):
snapshot -> steps -> gate check -> accept, or restore + lr *= backoff + retry (at most
``max_retries``; then the chunk is ``gate_exhausted`` and its weights are those before that block).
A sequence stops contributing to the loss once the forgetting criterion holds; the chunk stops when
all do or after ``max_steps`` kept steps. Everything the run records goes into an ``ErasureLog``,
from which the report is built.

Dropout is off throughout (the model stays in eval mode): the loop is deterministic, which is
what makes a resumed run end bitwise where an uninterrupted one does.

The loss, gradient, selection and step passes are :class:`~obliviate.erasure.passes.EraserPasses` (passes.py),
which ``Eraser`` inherits; ``_seeded`` is re-exported from there.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from obliviate.benchmarks.block import GateBlock, ungated_block
from obliviate.callbacks.distributed import sharded_parameters
from obliviate.data.probes import ProbeError, ProbeSet, ensure_pad_token
from obliviate.erasure.chunk import ChunkState, attempt_records
from obliviate.erasure.config import EraseConfig, EraseConfigError
from obliviate.erasure.criterion import build_criterion
from obliviate.erasure.inputs import (
    RetainSplit,
    audit_suite,
    build_gate,
    read_heldout,
    read_neighbors,
    read_retain,
    split_retain,
)
from obliviate.erasure.log import ErasureLog
from obliviate.erasure.losses import get_loss
from obliviate.erasure.passes import EraserPasses
from obliviate.erasure.passes import _seeded as _seeded
from obliviate.erasure.prefix_cache import FrozenPrefixCache
from obliviate.erasure.result import ErasureResult, build_report
from obliviate.erasure.selectors import get_selector
from obliviate.erasure.state import fingerprint, resume, save_checkpoint
from obliviate.erasure.target import prepare_target
from obliviate.erasure.update import SelectedUpdate
from obliviate.metrics import SamplingConfig, context_length, score_probes
from obliviate.metrics.sets import set_statistics


class Eraser(EraserPasses):
    """Erase ``forget`` sequences from ``model`` with the loss, selector and gate of ``config``.

    Args:
        model: a causal LM (moved to the accelerator's device; changed in place, or wrapped in a new
            LoRA adapter with ``target: lora``).
        tokenizer: its tokenizer.
        forget: the sequences to erase (a :class:`~obliviate.data.ProbeSet`; roles member/canary).
        config: the :class:`EraseConfig`.
        gate: a :class:`~obliviate.benchmarks.UtilityGate`; None builds one from ``config.gate`` (a mapping, or
            ``"default"``: two-sided perplexity and ``kl_to_original`` on the gate-only split of ``retain``).
        controls: control probes (never trained on): per group, their mean MA / extraction probability on the
            current model are the forgetting thresholds (erasure/criterion.py); their MA change is reported.
        retain: retained text (a ``{"text"}`` JSONL path or a list of strings), split by
            :func:`~obliviate.erasure.inputs.split_retain` into the part a loss may use (graddiff's retain term,
            the contrastive_retain selector), the gate's part and an audit part.
        heldout: held-out text (a ``{"text"}`` JSONL path or strings) neither the gate nor a loss reads: the gate's
            text scores are measured on it before/after for the report (replaces the audit split). Rows holding a
            forget sequence are an error.
        collateral: trained probes NOT being erased (e.g. unflagged members): their MA / loss change per group is
            reported.
        neighbors: records of the forget set's format that are kept (a ``{"text"}`` JSONL path or strings, e.g.
            other customers' records): added to the retain term's rows, read by no gate (see
            :func:`~obliviate.erasure.inputs.read_neighbors`). Needs a loss or selector that reads retain text.
        checkpoint_dir: where to keep the resume state after every chunk (resumed from when it holds one).
        progress: show progress bars.
        accelerator: an ``accelerate.Accelerator`` (default: a new one).

    Attributes:
        log: the :class:`~obliviate.erasure.log.ErasureLog` the run fills (steps, chunks, gate record, scores,
            timings); ``erase()``'s report is ``build_report(eraser.log)``.
    """

    def __init__(
        self,
        model,
        tokenizer,
        forget: ProbeSet,
        config: EraseConfig | None = None,
        gate=None,
        controls: ProbeSet | None = None,
        retain=None,
        checkpoint_dir=None,
        progress: bool = False,
        accelerator=None,
        heldout=None,
        collateral: ProbeSet | None = None,
        neighbors=None,
    ):
        from accelerate import Accelerator

        self.config = config = config or EraseConfig()
        if kind := sharded_parameters(model):  # selection, update and rollback index whole tensors
            raise EraseConfigError(
                f"the model's parameters are sharded across processes ({kind}); erasure needs every weight whole "
                "on every process: erase the unwrapped model (obliviate.modeling.load_model) on one process or "
                "under DDP (`accelerate launch`). Tracking and scoring do run on sharded models."
            )
        self.model, self.tokenizer, self.progress = model, tokenizer, progress
        ensure_pad_token(tokenizer)
        self._set_probes(forget, controls, collateral)
        uses_retain = self._set_components(retain)
        self._set_retain(retain, heldout, uses_retain, neighbors)
        self._set_gate(gate)
        self.checkpoint_dir = checkpoint_dir
        self.accelerator = accelerator or Accelerator()
        self.sampling = SamplingConfig(n=config.extraction_samples)
        self.log = ErasureLog(
            config=config.to_dict(),
            retain_contrast=getattr(self.selector, "retain_contrast", 0.0),
            groups={p.id: p.group for s in (self.forget, self.controls, self.collateral) if s for p in s},
            retain_split=self._split_record(),
        )
        self._use_reference_model()  # here, so a bad reference_model fails before any work

    def _set_probes(self, forget: ProbeSet, controls: ProbeSet | None, collateral: ProbeSet | None) -> None:
        """Check the forget set and the controls against the model; drop collateral rows that are being erased."""
        if forget is None or len(forget) == 0:
            raise ProbeError("the forget set is empty: there is nothing to erase. Check --forget (and --ids).")
        if controls is not None and len(controls) == 0:
            controls = None
        limit = context_length(self.model)
        self.forget = forget.check_fits(limit)  # a sequence longer than the context is an error naming it
        self.forget.check_vocab(self.model.get_input_embeddings().num_embeddings)
        if controls is not None:
            controls.check_fits(limit)
        self.controls = controls
        self.collateral = ProbeSet(p for p in collateral if p.id not in self.forget) if collateral else None

    def _set_components(self, retain) -> bool:
        """The loss and the selector of the config; whether either uses retain text (an error when none is given)."""
        config = self.config
        self.loss = get_loss(config)
        # `contrastive` is EMSO's forget-only metric (lambda = 0, the paper's "no data but the forget set");
        # `contrastive_retain` is obliviate's extension with lambda = retain_contrast.
        self.selector = get_selector(config)
        if "retain_nll" in self.selector.needs and not retain:
            raise ValueError(
                f"selector {config.selector} contrasts with the retain NLL: pass --retain FILE, or use "
                "selector contrastive (forget set only)."
            )
        uses_retain = self.loss.needs_retain or "retain_nll" in self.selector.needs
        if uses_retain and not retain:
            raise ValueError(f'method {config.method!r} needs retained text: pass --retain FILE ({{"text"}} JSONL).')
        return uses_retain

    def _set_retain(self, retain, heldout, uses_retain: bool, neighbors=None) -> None:
        """The held-out texts, the retain split (loss / gate / audit parts; no audit part beside held-out text) and
        the neighbors, which join the loss part."""
        config = self.config
        if neighbors is not None and not uses_retain:
            raise ValueError(
                f"--neighbors are read only by a retain term, and method {config.method!r} with selector "
                f"{config.selector!r} reads none: use a method with one (graddiff, npo_rt, ga_to_reference, "
                "unlikelihood), or the contrastive_retain selector, or drop --neighbors."
            )
        self.neighbor_texts = read_neighbors(neighbors, self.forget, self.tokenizer) if neighbors is not None else []
        self.heldout_texts = read_heldout(heldout, self.forget, self.tokenizer) if heldout is not None else None
        texts = read_retain(retain)
        self.split = (
            split_retain(
                texts, config.gate_fraction, 0.0 if heldout is not None else config.audit_fraction, uses_retain
            )
            if texts
            else None
        )
        # Losses and the selector see only their part and the neighbors; the gate and the audit never see them.
        self.retain_texts = (self.split.loss if self.split is not None else []) + self.neighbor_texts

    def _split_record(self) -> dict | None:
        """The report's ``retain_split``: row counts of each part, and the neighbors the loss part also reads."""
        if self.split is None:  # neighbors come with retain text: they need a retain term
            return None
        return {**self.split.to_dict(), "neighbor_rows": len(self.neighbor_texts)}

    def _set_gate(self, gate) -> None:
        """The gate (built from the config unless given) and the audit suite scored before/after."""
        if gate is None:
            gate = build_gate(self.config, self.tokenizer, self.split or RetainSplit([], [], []))
        self.gate = gate
        split_audit = self.split.audit if self.split is not None else []
        texts = self.heldout_texts if self.heldout_texts is not None else split_audit
        self.audit = audit_suite(self.gate, texts, self.tokenizer)

    # ---------------------------------------------------------------- setup
    def _prepare_model(self) -> None:
        self.model, self.candidates, self._requires_grad = prepare_target(
            self.model, self.config, self.accelerator.device
        )
        self.all_params = dict(self.model.named_parameters())
        self.last_selection = None

    def _install_prefix_cache(self) -> None:
        """Serve the blocks below the lowest one the erasure may write from cached hidden states (prefix_cache.py)."""
        sample = [list(p.prefix_ids) + list(p.suffix_ids) for p in list(self.forget)[:2]]
        sample += [ids for ids in (self._retain_ids(i) for i in range(min(2, len(self.retain_texts)))) if len(ids) > 1]
        budget = int(self.config.prefix_cache_mb * 2**20)
        self.prefix_cache, reason = FrozenPrefixCache.install(self.model, self.candidates, sample, budget)
        self.log.prefix_cache = {"status": reason}

    @property
    def selections_made(self) -> int:
        return self.log.selections

    def _judge(self, probes: ProbeSet) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forgotten flags of ``probes`` and their scores, against the controls scored on the model as it is now."""
        start = time.perf_counter()
        forgotten, scores = self.criterion.check(self.model, self.tokenizer, probes)
        self.log.add_time("scoring_s", time.perf_counter() - start)
        return forgotten, scores

    def _score_rows(self, probes: ProbeSet) -> list[dict]:
        start = time.perf_counter()
        rows = score_probes(
            self.model, self.tokenizer, probes, batch_size=self.config.score_batch_size, sampling=self.sampling
        )
        self.log.add_time("scoring_s", time.perf_counter() - start)
        return rows

    # ---------------------------------------------------------------- the chunk loop
    def _erase_chunk(self, index: int, ids: list[str], reference_all: dict[str, float] | None) -> dict:
        config = self.config
        probes = self.forget.subset(ids)
        reference = torch.tensor([reference_all[i] for i in ids]) if reference_all is not None else None
        state = ChunkState(ids, self._judge(probes)[0], self.log.global_step)
        record = {
            "index": index,
            "ids": list(ids),
            "status": None,
            "steps": 0,
            "attempted_steps": 0,
            "rejections": 0,
            "optimizer_state_bytes": 0,
            "selected": 0,
            "candidates": 0,
        }
        lr, since_select, update = config.learning_rate, 0, None
        bar = tqdm(total=config.max_steps, desc=f"chunk {index}", disable=not self.progress, leave=False)
        while record["status"] is None:
            if state.all_forgotten or record["steps"] >= config.max_steps:
                record["status"] = "erased" if state.all_forgotten else "max_steps"
                break
            if update is None or (config.reselect_every and since_select >= config.reselect_every):
                update, since_select = self._select(probes, state.active, reference, index, lr), 0
                record["selected"] = max(record["selected"], update.selection.selected)
                record["candidates"] = update.selection.candidates
            block = self._block(update, probes, reference, index, state, lr, self._block_length(record, since_select))
            record["attempted_steps"] += block.attempted_steps
            record["rejections"] += block.rejections
            record["optimizer_state_bytes"] = max(record["optimizer_state_bytes"], state.state_bytes)
            lr = block.lr
            if block.exhausted:
                record["status"] = "gate_exhausted"
            record["steps"] += len(block.kept)
            since_select += len(block.kept)
            bar.update(len(block.kept))
        bar.close()
        record["final_learning_rate"] = lr
        self.log.forgotten_steps.update(state.first)
        return record

    def _block_length(self, record: dict, since_select: int) -> int:
        """Steps in the next block: to the next gate check, reselection or ``max_steps``, whichever comes first."""
        n = self.config.max_steps - record["steps"]
        if self.gate is not None:
            n = min(n, self.gate.every)
        if self.config.reselect_every:
            n = min(n, self.config.reselect_every - since_select)
        return n

    def _block(
        self, update: SelectedUpdate, probes, reference, index: int, state: ChunkState, lr: float, n_steps: int
    ) -> GateBlock:
        """``n_steps`` optimizer steps, run by the gate (rolled back and retried at a lower lr when it rejects them).

        Each step's record goes into the log, rolled-back ones marked; the last of each attempt carries the
        gate's decision. A rollback restores the trainable copies bitwise, so they are scattered into the
        weights again (``write_back``) and the chunk's forgotten flags go back to where the block began.
        """

        def step(lr: float) -> dict:
            active = state.active
            loss, norm = self._step(update, probes, active, reference, index)
            self.log.global_step += 1
            state.state_bytes = max(state.state_bytes, update.state_bytes())
            return {
                "step": self.log.global_step,
                "chunk": index,
                "loss": loss,
                "learning_rate": lr,
                "grad_norm": norm,
                "active": len(active),
                "selected": dict(update.selection.counts),
                "forget": None,
                "gate": None,
                "rolled_back": False,
            }

        def judge(step_record: dict) -> bool:
            forgotten, scores = self._judge(probes)
            state.update(forgotten, self.log.global_step)
            step_record["forget"] = {**set_statistics(scores), "forgotten": int(forgotten.sum())}
            return state.all_forgotten

        saved = state.save()
        if self.gate is None:
            block = ungated_block(n_steps, step, judge, lr, self.config.score_every)
        else:
            block = self.gate.run_block(
                self.model,
                n_steps,
                step,
                judge,
                lr,
                update.trainables,
                update.optimizer,
                judge_every=self.config.score_every,
                after_restore=lambda: (update.write_back(), state.load(saved)),
                position=lambda: self.log.global_step,
                chunk=index,
                lr_ceiling=self.config.learning_rate,
                lr_recovery=self.config.lr_recovery,
            )
        self.log.steps.extend(attempt_records(block))
        return block

    # ---------------------------------------------------------------- driver
    def _elapsed(self, start: float) -> dict[str, float]:
        gate = (self.gate.total_seconds + self.gate.rollback_seconds) if self.gate is not None else 0.0
        prior = self.log.prior
        return {"total_s": prior["total_s"] + time.perf_counter() - start, "gate_s": prior["gate_s"] + gate}

    def _resume(self, key: str) -> int:
        """The chunk to start at: past those whose state ``checkpoint_dir`` holds (weights and log loaded)."""
        if self.checkpoint_dir is None:
            return 0
        return resume(self.checkpoint_dir, key, self.all_params, self.log, self.gate)

    def _checkpoint(self, key: str, next_chunk: int, start: float) -> None:
        log = self.log
        save_checkpoint(
            self.checkpoint_dir,
            {n: self.all_params[n] for n in sorted(log.touched)},
            {
                "fingerprint": key,
                "next_chunk": next_chunk,
                **log.checkpoint(),
                "gate_decisions": self.gate.decisions if self.gate is not None else [],
                "timings": {**log.timings, **self._elapsed(start)},
            },
        )

    def _measure(self, when: str, extra) -> None:
        """Score every probe set and the utility suites on the model as it is now (``when``: before/after)."""
        log = self.log
        for name, probes in (("forget", self.forget), ("controls", self.controls), ("collateral", self.collateral)):
            setattr(log.scores, f"{name}_{when}", self._score_rows(probes) if probes else None)
        utility = {}
        if self.gate is not None:
            utility = self.gate.measure_baseline(self.model) if when == "before" else self.gate.suite.run(self.model)
        log.heldout[when] = self.audit.run(self.model) if self.audit is not None else {}
        extra_scores = extra.run(self.model) if extra is not None else {}
        utility = {**utility, **extra_scores}
        # Each score's direction as its benchmark declares it: the report's units, never guessed from a name.
        for suite, results in (
            (self.gate and self.gate.suite, utility),
            (self.audit, log.heldout[when]),
            (extra, extra_scores),
        ):
            if suite is not None:
                own = {label: results[label] for label in suite.labels if label in results}
                log.utility["directions"].update(suite.directions(own))
        log.utility[when] = utility

    def erase(self) -> ErasureResult:
        """Run the erasure (resuming from ``checkpoint_dir`` when it holds a state) and return the result."""
        start = time.perf_counter()
        self._prepare_model()
        self._install_prefix_cache()
        try:
            return self._erase(start)
        finally:
            self._remove_prefix_cache()  # also when the run fails: the model computes as a plain model again

    def _remove_prefix_cache(self) -> None:
        if getattr(self, "prefix_cache", None) is not None:  # None, or never installed (install itself failed)
            self.log.prefix_cache.update(self.prefix_cache.summary())
            self.prefix_cache.remove()
            self.prefix_cache = None

    def _erase(self, start: float) -> ErasureResult:
        config, log = self.config, self.log
        extra = None
        if config.utility:
            from obliviate.benchmarks import UtilitySuite

            extra = UtilitySuite.from_config(config.utility, self.tokenizer)
        self._measure("before", extra)
        self._cache_retain_original()  # the model is still the original here
        self.criterion = build_criterion(config, self.controls)
        reference = (
            {r["id"]: r["suffix_log_prob"] for r in log.scores.forget_before} if self.loss.needs_reference else None
        )
        chunks = [self.forget.ids[i : i + config.chunk_size] for i in range(0, len(self.forget), config.chunk_size)]
        name = getattr(getattr(self.model, "config", None), "_name_or_path", None)
        key = fingerprint(log.config, self.forget.ids, name, sum(p.numel() for p in self.all_params.values()))
        first_chunk = self._resume(key)
        for index in tqdm(
            range(first_chunk, len(chunks)),
            desc="erasing",
            disable=not self.progress,
            initial=first_chunk,
            total=len(chunks),
        ):
            log.chunks.append(self._erase_chunk(index, chunks[index], reference))
            if self.checkpoint_dir is not None and self.accelerator.is_main_process:
                self._checkpoint(key, index + 1, start)
            self.accelerator.wait_for_everyone()
        self._measure("after", extra)
        final, _ = self._judge(self.forget)  # the criterion on the erased model, controls re-scored
        log.final_forgotten = dict(zip(self.forget.ids, final.tolist()))
        log.thresholds = self.criterion.to_dict()
        log.gate = self.gate.summary() if self.gate is not None else None
        log.heldout_source = "--heldout" if self.heldout_texts is not None else "retain audit split"
        for n, p in self.all_params.items():
            p.requires_grad_(self._requires_grad[n])
        self._remove_prefix_cache()  # before the report: it records what the cache did
        log.timings.update(self._elapsed(start))
        return ErasureResult(self.model, self.tokenizer, build_report(log), config)
