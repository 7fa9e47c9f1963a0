"""Frozen-prefix cache: the hidden states entering the lowest block an erasure can change, computed once per text.

    python -c "from obliviate.erasure.prefix_cache import FrozenPrefixCache; help(FrozenPrefixCache.install)"

An erasure with ``target_modules: ['layers\\.(2[6-9])\\.']`` changes 4 of SmolLM2's 30 blocks, yet every pass it
makes (the forget batch at each step, the retain draw, the gate's texts, the criterion's controls) runs all 30,
and the 26 below compute exactly what they computed before the first step: their weights and the embeddings
never change. This cache keeps, per text, the hidden states entering block ``L`` (the lowest that holds a weight
the erasure may write) and, while installed, runs only blocks ``L..N-1``, the final norm and the head.

Why it is exact. A row's hidden states below ``L`` depend on its own tokens only when attention is causal, its
positions are ``0..n-1`` and its pads are masked: right padding with default positions, or left padding with
positions counted from the row's first token (how the scorer collates). Each row is computed
alone and unpadded, so its cached value does not depend on the batch it first arrived in (a resumed run ends
bitwise where an uninterrupted one does). Any call the cache cannot serve that way (shifted positions, a KV
cache, ``inputs_embeds``, hidden states asked for, a full cache) runs the whole model as before.
``install`` checks the cached path against the full one on the model's own rows and refuses, with the reason,
when they differ: a decoder that does something between its blocks that the cache does not know of.
"""

from __future__ import annotations

import torch

from obliviate.erasure.memory import release_freed_memory
from obliviate.metrics.teacher_forced import collate


class _Captured(BaseException):
    """Raised by the capture hook: block ``L``'s input is all that was wanted from this forward pass.

    A control-flow signal, not an error (as ``GeneratorExit`` is): a ``BaseException``, so no ``except Exception``
    in the model's own code can swallow it, and it never leaves this module.
    """


class _SkipBlock(torch.nn.Module):
    """Stands in for a frozen block while its output is served from the cache: returns its input unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def decoder_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList] | None:
    """The decoder's block list (``model.layers``, GPT-2's ``transformer.h``, under any PEFT wrapper) and its name."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = getattr(text, "num_hidden_layers", None)
    best = None
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0 or len(module) != n_layers:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[2]:
            best = (name, module, size)
    return None if best is None else (best[0], best[1])


class FrozenPrefixCache:
    """Serve blocks ``0..frozen-1`` of ``model`` from per-text cached hidden states (see the module docstring).

    Build it with :meth:`install`; :meth:`remove` puts the model back as it was.
    """

    def __init__(self, model: torch.nn.Module, blocks_name: str, blocks: torch.nn.ModuleList, frozen: int, max_bytes):
        self.model, self.blocks, self.frozen, self.max_bytes = model, blocks, frozen, max_bytes
        self.decoder = model.get_submodule(blocks_name.rpartition(".")[0]) if "." in blocks_name else model
        self.rows: dict[tuple[int, ...], torch.Tensor] = {}
        self.bytes, self.hits, self.computed, self.bypassed = 0, 0, 0, 0
        self.enabled = True  # off only inside ``_check``, for its full-model reference pass
        self._pending: torch.Tensor | None = None
        self._capturing = False
        self._captured: torch.Tensor | None = None
        self._originals: list[torch.nn.Module] | None = None
        self._skip = _SkipBlock()
        self._hooks = [
            self.decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True),
            self.decoder.register_forward_hook(self._after_decoder, always_call=True),
            blocks[frozen].register_forward_pre_hook(self._before_first_live_block, with_kwargs=True),
        ]

    # ---------------------------------------------------------------- building
    @classmethod
    def install(
        cls, model: torch.nn.Module, candidates: dict[str, torch.nn.Parameter], sample: list[list[int]], max_bytes: int
    ) -> tuple[FrozenPrefixCache | None, str]:
        """Install the cache on ``model`` when it is exact there; ``(cache, reason)``, cache None when refused.

        Args:
            model: the model being erased (eval mode, every parameter frozen but those an erasure selects).
            candidates: the parameters the erasure may write (the selector's candidates).
            sample: token ids of a few of the erasure's own texts (>= 2 tokens each): the exactness check's rows.
            max_bytes: the most the cached hidden states may hold; rows past it run the whole model.
        """
        if max_bytes <= 0:
            return None, "off (prefix_cache_mb: 0)"
        found = decoder_blocks(model)
        if found is None:
            return None, "off: no decoder block list with num_hidden_layers blocks was found"
        name, blocks = found
        frozen = _lowest_written_block(model, blocks, candidates, sample[0])
        if frozen < 1:
            return (
                None,
                "off: a weight that may change is used before block 1 (the embeddings, a head tied to them, or block 0)",
            )
        cache = cls(model, name, blocks, frozen, max_bytes)
        try:
            difference = cache._check(sample)
        except Exception as error:  # a decoder the stand-in blocks do not fit (e.g. blocks returning tuples)
            cache.remove()
            return None, f"off: the cached path fails on this decoder ({type(error).__name__}: {error})"
        if difference > (1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2):
            cache.remove()
            return None, f"off: the cached path differs from the full model by {difference:.2g} nats on its own rows"
        return cache, f"on: blocks 0-{frozen - 1} of {len(blocks)} served from the cache"

    @torch.no_grad()
    def _check(self, sample: list[list[int]]) -> float:
        """Largest |log-prob| difference, cached path against the full model, on ``sample`` padded both ways.

        Right padding with default positions (HF's collation) and left padding with positions counted from each
        row's first token (the scorer's): the two layouts the cache serves.
        """
        rows = sample[:4]
        device = next(self.model.parameters()).device
        worst = 0.0
        for side in ("right", "left"):
            ids, mask, positions, _ = collate(rows, [[] for _ in rows], 0, side)  # pad id 0: masked, never read
            inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            if side == "left":  # the scorer's layout; right padding is HF's, with default positions
                inputs["position_ids"] = positions.to(device)
            self.enabled = False
            full = torch.log_softmax(self.model(**inputs).logits.float(), -1)
            self.enabled = True
            cached = torch.log_softmax(self.model(**inputs).logits.float(), -1)
            valid = inputs["attention_mask"].bool()
            worst = max(worst, float((full[valid] - cached[valid]).abs().max()))
        return worst

    def remove(self) -> None:
        """Take every hook off and free the cached rows: the model computes as it did before ``install``."""
        for hook in self._hooks:
            hook.remove()
        self._restore_blocks()
        self.rows.clear()
        release_freed_memory()

    def summary(self) -> dict:
        """What the cache did: blocks served, rows held and their bytes, calls served and bypassed."""
        return {
            "frozen_blocks": self.frozen,
            "blocks": len(self.blocks),
            "rows": len(self.rows),
            "bytes": self.bytes,
            "rows_served": self.hits,
            "rows_computed": self.computed,
            "calls_bypassed": self.bypassed,
        }

    # ---------------------------------------------------------------- the hooks
    def _before_decoder(self, module, args, kwargs):
        if self._capturing or not self.enabled:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        spans = _row_spans(ids, mask, kwargs.get("position_ids")) if self._servable(args, kwargs) else None
        hidden = self._batch(ids, spans) if spans is not None else None
        if hidden is None:
            self.bypassed += 1
            return None
        self._pending = hidden
        self._originals = [self.blocks[i] for i in range(self.frozen)]
        for i in range(self.frozen):
            self.blocks[i] = self._skip
        return None

    def _after_decoder(self, module, args, kwargs_or_output, output=None):
        self._restore_blocks()
        self._pending = None

    def _before_first_live_block(self, module, args, kwargs):
        if self._capturing:
            hidden = args[0] if args else kwargs["hidden_states"]
            self._captured = hidden[0].detach().clone()
            raise _Captured
        if self._pending is None:
            return None
        hidden, self._pending = self._pending, None
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def _restore_blocks(self) -> None:
        if self._originals is not None:
            for i, block in enumerate(self._originals):
                self.blocks[i] = block
            self._originals = None

    # ---------------------------------------------------------------- rows
    @staticmethod
    def _servable(args, kwargs) -> bool:
        """A plain forward over token ids: nothing that makes a row's prefix depend on more than its tokens."""
        if kwargs.get("inputs_embeds") is not None or kwargs.get("past_key_values") is not None or len(args) > 2:
            return False
        return not (kwargs.get("output_hidden_states") or kwargs.get("output_attentions"))

    def _batch(self, ids: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor | None:
        """The ``(B, S, H)`` hidden states entering block ``frozen`` (zeros at the pads), or None past the budget."""
        keys = [tuple(ids[b, start : start + n].tolist()) for b, (start, n) in enumerate(spans)]
        for key in dict.fromkeys(k for k in keys if k not in self.rows):
            if not self._compute(key, ids.device):
                return None
        first = self.rows[keys[0]]
        hidden = torch.zeros(ids.shape[0], ids.shape[1], first.shape[-1], dtype=first.dtype, device=first.device)
        for b, (key, (start, n)) in enumerate(zip(keys, spans)):
            hidden[b, start : start + n] = self.rows[key]
        self.hits += len(keys)
        return hidden

    @torch.no_grad()
    def _compute(self, key: tuple[int, ...], device) -> bool:
        """Run blocks ``0..frozen-1`` on one unpadded row and keep block ``frozen``'s input; False past the budget."""
        self._capturing = True
        try:
            ids = torch.tensor([key], device=device)
            self.decoder(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        except _Captured:
            pass
        finally:
            self._capturing = False
        row, self._captured = self._captured, None
        size = row.numel() * row.element_size()
        if self.bytes + size > self.max_bytes:
            return False
        self.rows[key], self.bytes = row, self.bytes + size
        self.computed += 1
        return True


def _row_spans(ids, mask, position_ids) -> list[tuple[int, int]] | None:
    """Each row's ``(start, length)`` when its tokens are one unbroken run at positions ``0..length-1``.

    That is right padding (or none) with default positions, or left padding with the positions counted from
    each row's first token (the scorer's collation): either way a row's prefix is that of its tokens alone.
    None for anything else (holes in the mask, shifted positions, an empty row).
    """
    if ids is None or ids.dim() != 2:
        return None
    if mask is None:
        mask = torch.ones_like(ids)
    if mask.shape != ids.shape:
        return None
    lengths = mask.sum(-1)
    if bool((lengths == 0).any()):
        return None
    starts = mask.long().argmax(-1)  # the first real token
    columns = torch.arange(mask.shape[1], device=mask.device)[None, :]
    inside = (columns >= starts[:, None]) & (columns < (starts + lengths)[:, None])
    if not torch.equal(mask.bool(), inside):
        return None
    expected = (columns - starts[:, None])[inside]
    if position_ids is None:
        if bool(starts.any()):
            return None  # left padding with default positions: each row is shifted by its padding
    elif position_ids.shape[-1] != ids.shape[1] or not torch.equal(position_ids.expand_as(ids)[inside], expected):
        return None
    return list(zip(starts.tolist(), lengths.tolist()))


def _lowest_written_block(model, blocks: torch.nn.ModuleList, candidates, sample_row: list[int]) -> int:
    """The number of blocks that run before any module holding a candidate weight is first called.

    Found by running the model once and watching the call order, so it needs no naming convention: a weight in
    block ``i`` gives ``i``; one used after every block (final norm, an untied head) gives ``N - 1`` (the last
    block then runs uncached); an input embedding (or a head tied to it) gives 0.
    """
    wanted = {id(p) for p in candidates.values()}
    holders = [m for m in model.modules() if any(id(p) in wanted for p in m.parameters(recurse=False))]
    started, first = [0], []
    hooks = [b.register_forward_pre_hook(lambda *_: started.__setitem__(0, started[0] + 1)) for b in blocks]
    hooks += [m.register_forward_pre_hook(lambda *_: first.append(started[0])) for m in holders]
    try:
        with torch.no_grad():
            ids = torch.tensor([sample_row], device=next(model.parameters()).device)
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for hook in hooks:
            hook.remove()
    if not first:
        return len(blocks) - 1
    return max(0, min(min(first), len(blocks)) - 1)
