"""The frozen-prefix cache (erasure/prefix_cache.py) computes what the whole model computes, skips the frozen
blocks while doing so, refuses where it would be wrong, and leaves the model as it found it.

    python -m pytest -q tests/test_prefix_cache.py
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from obliviate.erasure import EraseConfig, Eraser
from obliviate.erasure.prefix_cache import FrozenPrefixCache, decoder_blocks

LENGTHS = (7, 12, 5, 9)


def tiny(arch: str, tie: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=4, n_head=4, n_positions=64))
    else:
        config = LlamaConfig(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=tie,
        )
        model = LlamaForCausalLM(config)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def rows(seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 97, (n,), generator=generator).tolist() for n in LENGTHS]


def padded(batch: list[list[int]], side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(r) for r in batch)
    ids = torch.zeros(len(batch), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(batch):
        span = slice(0, len(row)) if side == "right" else slice(longest - len(row), longest)
        ids[b, span], mask[b, span] = torch.tensor(row), 1
    return ids, mask


def top_blocks(model, first: int) -> dict[str, torch.nn.Parameter]:
    _, blocks = decoder_blocks(model)
    return {n: p for n, p in model.named_parameters() if any(p is q for b in blocks[first:] for q in b.parameters())}


def counting(model) -> list[int]:
    """Calls of each block, counted on the block modules themselves (a skipped block is never called)."""
    _, blocks = decoder_blocks(model)
    calls = [0] * len(blocks)
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_cached_path_is_the_full_model_without_its_frozen_blocks(arch):
    model = tiny(arch)
    calls = counting(model)
    cache, status = FrozenPrefixCache.install(model, top_blocks(model, 2), rows(), 2**20)
    assert status == "on: blocks 0-1 of 4 served from the cache" and cache.frozen == 2
    ids, mask = padded(rows(2)[:3])
    model(input_ids=ids, attention_mask=mask)  # new rows: their prefixes are computed, one unpadded row each
    before = list(calls)
    for p in top_blocks(model, 3).values():
        p.requires_grad_(True)
    logits = model(input_ids=ids, attention_mask=mask).logits
    assert calls[:2] == before[:2] and calls[2:] == [c + 1 for c in before[2:]]  # blocks 0-1 skipped, 2-3 ran
    logits[mask.bool()].logsumexp(-1).sum().backward()
    cached_grads = {n: p.grad.clone() for n, p in top_blocks(model, 3).items()}
    assert cache.summary()["rows_served"] >= 6 and cache.summary()["calls_bypassed"] == 0
    cache.remove()
    for p in top_blocks(model, 3).values():
        p.grad = None
    full = model(input_ids=ids, attention_mask=mask).logits
    assert calls[0] == before[0] + 1  # removed: the whole model runs again
    torch.testing.assert_close(logits[mask.bool()], full[mask.bool()], atol=1e-5, rtol=1e-5)
    full[mask.bool()].logsumexp(-1).sum().backward()
    for n, p in top_blocks(model, 3).items():
        torch.testing.assert_close(cached_grads[n], p.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_left_padding_with_positions_from_each_rows_first_token_is_served(arch):
    """The scorer's collation (teacher_forced.collate): left padding, positions counted from the first token."""
    model = tiny(arch)
    ids, mask = padded(rows(6), side="left")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    cache, _ = FrozenPrefixCache.install(model, top_blocks(model, 2), rows(), 2**20)
    calls = counting(model)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=positions)
        served = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert calls[0] == len(LENGTHS) and calls[2] == 2  # one unpadded pass per new row, then none
    assert cache.summary()["calls_bypassed"] == 0
    torch.testing.assert_close(served[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)
    cache.remove()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_calls_it_cannot_serve_run_the_whole_model(arch):
    model = tiny(arch)
    ids, mask = padded(rows(3), side="left")
    with torch.no_grad():
        expected_left = model(input_ids=ids, attention_mask=mask).logits
        prompt = torch.tensor([rows(4)[1]])
        expected_greedy = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6)
    cache, _ = FrozenPrefixCache.install(model, top_blocks(model, 2), rows(), 2**20)
    calls = counting(model)
    with torch.no_grad():
        left = model(input_ids=ids, attention_mask=mask).logits  # left padding shifts positions: not servable
        greedy = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6)  # a KV cache
        shifted = torch.arange(ids.shape[1])[None].expand_as(ids) + 3
        model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=shifted)
    assert cache.summary()["calls_bypassed"] >= 3 and calls[0] >= 3
    assert torch.equal(left, expected_left) and torch.equal(greedy, expected_greedy)
    cache.remove()


def test_it_refuses_where_a_written_weight_feeds_the_frozen_blocks():
    tied = tiny("llama")
    named = dict(tied.named_parameters())
    embeddings = {"model.embed_tokens.weight": named["model.embed_tokens.weight"]}
    assert FrozenPrefixCache.install(tied, embeddings, rows(), 2**20) == (None, _EMBEDDINGS)
    block0 = {n: p for n, p in named.items() if ".layers.0." in n}
    assert FrozenPrefixCache.install(tied, block0, rows(), 2**20) == (None, _EMBEDDINGS)
    assert FrozenPrefixCache.install(tied, top_blocks(tied, 2), rows(), 0) == (None, "off (prefix_cache_mb: 0)")
    # An untied head is used after every block: all but the last block are served.
    untied = tiny("llama", tie=False)
    head = {"lm_head.weight": untied.lm_head.weight}
    cache, status = FrozenPrefixCache.install(untied, head, rows(), 2**20)
    assert status == "on: blocks 0-2 of 4 served from the cache"
    cache.remove()


_EMBEDDINGS = "off: a weight that may change is used before block 1 (the embeddings, a head tied to them, or block 0)"


class TupleBlocks(torch.nn.Module):
    """A decoder whose blocks return tuples: the stand-in blocks do not fit it, and the check must say so."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(num_hidden_layers=3)
        self.embed = torch.nn.Embedding(97, 16)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(3))
        self.head = torch.nn.Linear(16, 97)

    def forward(self, input_ids, attention_mask=None):
        hidden = self.embed(input_ids)
        for layer in self.layers:
            hidden = self._block(layer, hidden)[0]
        return SimpleNamespace(logits=self.head(hidden))

    @staticmethod
    def _block(layer, hidden):
        return (torch.tanh(layer(hidden)), None)


def test_a_decoder_it_does_not_fit_is_refused_and_left_untouched():
    model = TupleBlocks().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ids, mask = padded(rows()[:2])
    expected = model(input_ids=ids, attention_mask=mask).logits
    top = {n: p for n, p in model.named_parameters() if n.startswith("layers.2.")}
    cache, status = FrozenPrefixCache.install(model, top, rows(), 2**20)
    assert cache is None and status.startswith("off: the cached path")
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert all(isinstance(layer, torch.nn.Linear) for layer in model.layers)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, expected)


def test_rows_past_the_budget_run_the_whole_model_and_remove_frees_everything():
    model = tiny("llama")
    budget = sum(LENGTHS) * 32 * 4  # float32 hidden states of the check's own rows: they fill it
    cache, _ = FrozenPrefixCache.install(model, top_blocks(model, 2), rows(), budget)
    assert cache.bytes == budget and len(cache.rows) == 4
    ids, mask = padded(rows(5)[:2])
    with torch.no_grad():
        over = model(input_ids=ids, attention_mask=mask).logits
    assert cache.summary()["calls_bypassed"] == 1 and len(cache.rows) == 4
    _, blocks = decoder_blocks(model)
    originals = list(blocks)
    cache.remove()
    assert not cache.rows and list(blocks) == originals
    assert not model.model._forward_pre_hooks and not model.model._forward_hooks
    assert not any(b._forward_pre_hooks for b in blocks)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, over)


def test_an_erasure_with_the_cache_takes_the_steps_one_without_takes(memorized_llama):
    """Top block only (target_modules): the cache serves block 0, and the run's losses are the uncached run's."""
    mem = memorized_llama
    runs = {}
    for budget in (512, 0):
        config = EraseConfig(
            method="ga",
            max_steps=4,
            learning_rate=3e-3,
            target_modules=[r"layers\.1\."],
            gate=None,
            prefix_cache_mb=budget,
        )
        eraser = Eraser(mem.fresh(), mem.tokenizer, mem.probes.subset(["canary-x8-0", "member-0000"]), config)
        runs[budget] = eraser.erase()
    cached, plain = runs[512].report, runs[0].report
    assert cached["prefix_cache"]["status"] == "on: blocks 0-0 of 2 served from the cache"
    assert cached["prefix_cache"]["rows_served"] > 0 and plain["prefix_cache"] == {"status": "off (prefix_cache_mb: 0)"}
    losses = [[s["loss"] for s in r["steps"]] for r in (cached, plain)]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-4)
    for (name, p), q in zip(runs[512].model.named_parameters(), runs[0].model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4, msg=name)
    assert not runs[512].model.model._forward_pre_hooks  # the model handed back is a plain model


def test_the_callback_scores_a_partly_frozen_model_as_without_the_cache(tmp_path, caplog):
    """SFT of GPT-2's top block only: the callback's scores over training equal the uncached ones, and the frozen
    block ran once per probe, not at every scoring."""
    import logging

    from obliviate.callbacks import MemorizationCallback
    from obliviate.data import read_jsonl
    from tests.ddp_worker import fresh_model, sft_data, sft_probes, sft_trainer

    histories, block0_calls = {}, {}
    for budget in (256, 0):
        model = fresh_model(sft_data()[0])
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("transformer.h.1."))
        calls = [0]  # rows through block 0
        model.transformer.h[0].register_forward_hook(lambda m, i, out, c=calls: c.__setitem__(0, c[0] + out.shape[0]))
        trainer = sft_trainer(tmp_path / f"run{budget}", model=model, max_steps=12)
        out = tmp_path / f"track{budget}"
        callback = MemorizationCallback(
            trainer, sft_probes(), every_n_steps=4, prefix_cache_mb=budget, output_dir=str(out)
        )
        trainer.add_callback(callback)
        with caplog.at_level(logging.INFO, logger="obliviate.callbacks.memorization"):
            trainer.train()
        histories[budget] = read_jsonl(out / "memorization" / "history.jsonl")
        block0_calls[budget] = calls[0]
        assert callback._prefix is None and not model.transformer._forward_pre_hooks  # removed at train end
    assert "frozen-prefix cache on: blocks 0-0 of 2 served from the cache" in caplog.text
    cached, plain = histories[256], histories[0]
    assert len(cached) == len(plain) > 3 * len(sft_probes())  # steps 0, 4, 8, 12
    for a, b in zip(cached, plain):
        assert (a["id"], a["step"], a["exact_extraction"]) == (b["id"], b["step"], b["exact_extraction"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    # Uncached, every scoring runs every probe through block 0; cached, each probe once (and the check's rows).
    scorings = len(plain) // len(sft_probes())
    assert block0_calls[0] - block0_calls[256] >= (scorings - 2) * len(sft_probes())
