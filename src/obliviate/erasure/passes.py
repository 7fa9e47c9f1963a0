"""The loss and gradient passes of the erasure loop, as a mixin of :class:`~obliviate.erasure.eraser.Eraser`.

What one chunk's optimisation is made of: the shard of active sequences this process owns, the retain rows a loss
or selector draws, the ``{kind: scalar}`` loss terms per micro-batch (``_losses``), the selector's gradient streams,
the weight selection (``_select``) and one optimizer step (``_step``). Seeds come from ``_seeded``, so every draw
depends only on (seed, chunk, step), which keeps a resumed run bitwise equal to an uninterrupted one.

The mixin reads what ``Eraser.__init__`` and ``Eraser._prepare_model`` set: ``model``, ``tokenizer``, ``config``,
``accelerator``, ``loss``, ``selector``, ``retain_texts``, ``candidates``, ``all_params`` and ``log``.
"""

from __future__ import annotations

import time

import torch

from obliviate.callbacks.distributed import padded_shard
from obliviate.data.probes import ProbeSet
from obliviate.erasure.losses import forward_suffix, retain_nll_terms
from obliviate.erasure.memory import bound_heap_retention, release_freed_memory, rows_per_pass
from obliviate.erasure.selection import accumulate_streams
from obliviate.erasure.update import SelectedUpdate
from obliviate.metrics import context_length, score_probes


def _seeded(*parts: int) -> torch.Generator:
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


class EraserPasses:
    """Loss terms, gradients, weight selection and optimizer steps of :class:`~obliviate.erasure.eraser.Eraser`."""

    def _shard(self, active: list[int]) -> tuple[list[int], torch.Tensor | None]:
        """This process's contiguous slice of ``active``, padded to equal length on every rank (FSDP/ZeRO-3 need
        equal forward counts), and the per-sequence weights (0 for padding; None when there is none)."""
        positions, real = padded_shard(len(active), self.accelerator.num_processes, self.accelerator.process_index)
        weights = None
        if real < len(positions):
            weights = torch.tensor([1.0] * real + [0.0] * (len(positions) - real), device=self.accelerator.device)
        return [active[i] for i in positions], weights

    def _rows_per_pass(self, longest: int) -> int:
        return rows_per_pass(longest, self.model.get_input_embeddings().num_embeddings, self.config.batch_size)

    def _retain_pick(self, generator: torch.Generator) -> list[int]:
        """Indices of ``retain_batch_size`` retain texts (the loss split), drawn with ``generator``."""
        n = min(self.config.retain_batch_size, len(self.retain_texts))
        return torch.randperm(len(self.retain_texts), generator=generator)[:n].tolist()

    def _retain_ids(self, index: int) -> list[int]:
        limit = context_length(self.model)
        text = self.retain_texts[index]
        return list(self.tokenizer(text, truncation=bool(limit), max_length=limit or None)["input_ids"])

    def _retain_rows(self, generator: torch.Generator) -> list[list[int]]:
        """Token ids of one seeded draw of retain texts, each >= 2 tokens."""
        rows = [self._retain_ids(i) for i in self._retain_pick(generator)]
        return [r for r in rows if len(r) >= 2] or [rows[0] * 2]

    def _cache_retain_original(self) -> None:
        """Before the first step: the original's retain distributions, when the loss's retain term reads them."""
        self.retain_original = None
        from obliviate.erasure.retain_kl import CACHED_OBJECTIVES, OriginalRetainCache

        objective = getattr(self.loss, "retain_objective", "nll")
        if self.loss.needs_retain and objective in CACHED_OBJECTIVES and self.retain_texts:
            rows = [self._retain_ids(i) for i in range(len(self.retain_texts))]
            size = self._rows_per_pass(max(len(r) for r in rows))
            self.retain_original = OriginalRetainCache(self.model, rows, self.tokenizer.pad_token_id, size)

    def _use_reference_model(self) -> None:
        """Before any work: what the reference model is needed for, measured on it once (then it is freed).

        ga_to_reference's per-token floor and the controls' level before the fine-tuning; the gate's second
        anchor (``gate.reference``): its scores of the gate's text.
        """
        self.token_reference = None
        gate_band = self.gate is not None and self.gate.band is not None
        if not (self.loss.needs_token_reference or gate_band):
            return
        from obliviate.modeling import load_model

        reference = load_model(self.config.reference_model, device=str(self.accelerator.device)).eval()
        if gate_band:
            self.gate.measure_reference(reference)
        if self.loss.needs_token_reference:
            self._cache_token_reference(reference)
        del reference
        release_freed_memory()

    def _cache_token_reference(self, reference) -> None:
        """The reference model's score of every forget suffix token (ga_to_reference), and of the controls."""
        probes = list(self.forget)
        size = self._rows_per_pass(max(len(p.prefix_ids) + len(p.suffix_ids) for p in probes))
        self.token_reference = {}
        with torch.no_grad():
            for start in range(0, len(probes), size):
                part = probes[start : start + size]
                out = forward_suffix(
                    reference, [p.prefix_ids for p in part], [p.suffix_ids for p in part], self.tokenizer.pad_token_id
                )
                scores = self.loss.token_reference(out)  # log p, or log-odds: the loss's own space
                for b, probe in enumerate(part):
                    self.token_reference[probe.id] = scores[b][out.valid[b]].float().cpu()
        if self.controls:
            # Where the controls stood before the fine-tuning: a format the fine-tuning itself taught (their MA
            # above the reference's) goes back when it is reverted; the report says so beside "kept".
            self.log.scores.controls_reference = score_probes(
                reference,
                self.tokenizer,
                self.controls,
                batch_size=self.config.score_batch_size,
                sampling=self.sampling,
            )

    def _aligned_token_reference(self, probes: ProbeSet, batch: list[int], out) -> torch.Tensor:
        """The batch's reference token log-probs laid out as ``out``'s ``(B, S)`` suffix positions."""
        aligned = torch.zeros(out.valid.shape, device=out.valid.device)
        aligned[out.valid] = torch.cat([self.token_reference[probes[i].id] for i in batch]).to(out.valid.device)
        return aligned

    def _retain_loss_terms(self, generator: torch.Generator):
        """The shares of the loss's retain term on one seeded draw: its NLL, or its KL / NLL rise against the original."""
        if getattr(self, "retain_original", None) is None:
            yield from self._retain_nll_terms(generator)
            return
        picks = self._retain_pick(generator)
        size = self._rows_per_pass(max(len(self.retain_original.rows[i]) for i in picks))
        yield from self.retain_original.terms(
            self.model, picks, self.tokenizer.pad_token_id, size, self.loss.retain_objective
        )

    def _retain_nll_terms(self, generator: torch.Generator):
        """Token-bounded shares of the retain NLL of one seeded draw of retain rows (losses/base.py)."""
        rows = self._retain_rows(generator)
        return retain_nll_terms(
            self.model, rows, self.tokenizer.pad_token_id, self._rows_per_pass(max(len(r) for r in rows))
        )

    def _losses(
        self, probes: ProbeSet, active: list[int], reference: torch.Tensor | None, generator, kinds: tuple[str, ...]
    ):
        """Yield ``{kind: scalar}`` per micro-batch of this process's shard; each sums to the global mean."""
        total = len(active)
        local, weights = self._shard(active)
        size = self._rows_per_pass(
            max((len(probes[i].prefix_ids) + len(probes[i].suffix_ids) for i in active), default=1)
        )
        for start in range(0, len(local), size):
            batch = local[start : start + size]
            out = forward_suffix(
                self.model,
                [probes[i].prefix_ids for i in batch],
                [probes[i].suffix_ids for i in batch],
                self.tokenizer.pad_token_id,
            )
            keep = (lambda v: v) if weights is None else (lambda v, w=weights[start : start + size]: v * w)
            terms = {}
            if "loss" in kinds:
                ref = reference[batch] if reference is not None else None
                if self.loss.needs_token_reference:
                    ref = self._aligned_token_reference(probes, batch, out)
                terms["loss"] = keep(self.loss.sequence_losses(out, ref)).sum() / total
            if "nll" in kinds:
                terms["nll"] = keep(out.sequence_nll()).sum() / total
            yield terms
        if "loss" in kinds and self.loss.needs_retain:
            for share in self._retain_loss_terms(generator):
                retain = self.loss.retain_loss(share)
                if retain is not None:
                    yield {"loss": retain / self.accelerator.num_processes}
        if "retain_nll" in kinds:
            for share in self._retain_nll_terms(generator):
                yield {"retain_nll": share / self.accelerator.num_processes}

    def _gradients(self, probes, active, reference, generator, streams) -> dict[str, dict[str, torch.Tensor]]:
        """Each selector stream's gradient w.r.t. every candidate, summed over processes (see ``selection``)."""
        kinds = tuple(dict.fromkeys(kind for combo in streams.values() for kind in combo))
        grads = accumulate_streams(self._losses(probes, active, reference, generator, kinds), self.candidates, streams)
        if self.accelerator.num_processes > 1:
            for per_name in grads.values():
                for n in per_name:  # one tensor at a time: the reduce's copy is never more than one parameter
                    per_name[n] = self.accelerator.reduce(per_name[n], reduction="sum")
        return grads

    def _select(self, probes, active, reference, chunk: int, lr: float) -> SelectedUpdate:
        start = time.perf_counter()
        bound_heap_retention()  # once per process: freed gradients and activations leave the RSS (memory.py)
        generator = _seeded(self.config.seed, chunk, self.log.global_step, 1)
        streams = self.selector.streams
        grads = self._gradients(probes, active, reference, generator, streams) if streams else {}
        selection = self.selector.select(self.candidates, grads, generator)
        del grads
        release_freed_memory()  # the gradient streams are gone: hand their pages back before the steps
        update = SelectedUpdate(self.candidates, selection, self.config, lr, self.accelerator)
        update.enable_grads(self.all_params)
        self.log.touched.update(selection.indices)
        self.last_selection = selection
        self.log.selections += 1
        self.log.add_time("selection_s", time.perf_counter() - start)
        return update

    def _step(self, update: SelectedUpdate, probes, active, reference, chunk: int) -> tuple[float, float]:
        start = time.perf_counter()
        generator = _seeded(self.config.seed, chunk, self.log.global_step, 2)
        total = torch.zeros((), device=self.accelerator.device)
        for terms in self._losses(probes, active, reference, generator, ("loss",)):
            self.accelerator.backward(terms["loss"])
            total += terms["loss"].detach()
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(total, reduction="sum")
        norm = update.step()
        self.log.add_time("update_s", time.perf_counter() - start)
        return float(total), norm
