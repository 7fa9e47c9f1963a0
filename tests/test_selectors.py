"""Streaming selection: the histogram threshold takes exactly what a stable best-first sort takes.

python -m pytest -q tests/test_selectors.py
"""

from __future__ import annotations

import math

import pytest
import torch

from obliviate.callbacks.distributed import padded_shard, shard_probes
from obliviate.data.probes import Probe, ProbeSet
from obliviate.erasure import EraseConfig
from obliviate.erasure.selection import accumulate_streams, order_keys_
from obliviate.erasure.selectors import get_selector, select_top


def reference_select(
    scores: dict[str, torch.Tensor], params: dict[str, torch.Tensor], fraction: float, granularity: str
) -> dict[str, list[int]]:
    """The definition, by hand: units (element / row / tensor) in candidate order, stable-sorted by score
    descending (NaN last, -0 == +0), taken best-first until they hold ceil(fraction * elements) elements."""
    units = []  # (score, order, name, element indices)
    for name, p in params.items():
        s = scores[name].double()
        if granularity == "tensor":
            groups = [(float(s.sum()), list(range(p.numel())))]
        elif granularity == "row" and p.dim() > 1:
            width = p[0].numel()
            groups = [
                (float(s.reshape(p.shape[0], -1)[r].sum()), list(range(r * width, (r + 1) * width)))
                for r in range(p.shape[0])
            ]
        else:
            groups = [(float(v), [i]) for i, v in enumerate(s.reshape(-1).tolist())]
        units += [(-math.inf if math.isnan(v) else v, len(units) + k, name, idx) for k, (v, idx) in enumerate(groups)]
    units.sort(key=lambda u: (-u[0], u[1]))
    target = math.ceil(fraction * sum(p.numel() for p in params.values()))
    chosen: dict[str, list[int]] = {}
    held = 0
    for _, _, name, idx in units:
        if held >= target:
            break
        chosen.setdefault(name, []).extend(idx)
        held += len(idx)
    return {n: sorted(v) for n, v in chosen.items()}


def as_lists(selection, params) -> dict[str, list[int]]:
    return {n: list(range(params[n].numel())) if i is None else i.tolist() for n, i in selection.indices.items()}


def tie_heavy_scores(params, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, p in params.items():
        s = torch.randint(-3, 4, p.shape, generator=g).float() * 0.5  # 7 distinct values: ties everywhere
        s[torch.rand(p.shape, generator=g) < 0.1] = -0.0
        out[n] = s
    return out


PARAMS = {"emb": torch.zeros(13, 5), "w": torch.zeros(7, 3, 2), "bias": torch.zeros(9), "norm": torch.zeros(4)}


@pytest.mark.parametrize("granularity", ["element", "row", "tensor"])
@pytest.mark.parametrize("fraction", [0.003, 0.1, 0.37, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_top_equals_the_stable_sort_definition(granularity, fraction, seed):
    scores = tie_heavy_scores(PARAMS, seed)
    units = {
        n: (
            s.reshape(PARAMS[n].shape[0], -1).sum(-1)
            if granularity == "row" and s.dim() > 1
            else s.sum().reshape(1)
            if granularity == "tensor"
            else s.reshape(-1)
        )
        for n, s in scores.items()
    }
    selection = select_top(units, PARAMS, fraction, granularity)
    assert as_lists(selection, PARAMS) == reference_select(scores, PARAMS, fraction, granularity)
    assert selection.candidates == sum(p.numel() for p in PARAMS.values())


def test_continuous_scores_select_exactly_the_target_count():
    g = torch.Generator().manual_seed(3)
    params = {f"t{i}": torch.zeros(50 + 17 * i) for i in range(6)}
    scores = {n: torch.randn(p.shape, generator=g) * 10 ** (i - 3) for i, (n, p) in enumerate(params.items())}
    selection = select_top(dict(scores), params, 0.05, "element")
    target = math.ceil(0.05 * sum(p.numel() for p in params.values()))
    assert selection.selected == target
    flat = torch.cat([s for s in scores.values()])
    cut = flat.topk(target).values.min()
    for n, idx in selection.indices.items():
        assert (scores[n][idx] >= cut).all()
        assert (scores[n][[i for i in range(params[n].numel()) if i not in set(idx.tolist())]] < cut).all()


def test_nan_and_signed_zero_and_infinities_order():
    params = {"a": torch.zeros(8)}
    scores = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), -float("inf"), 1e-45, -1e-45, 3.0])
    keys = order_keys_(scores.clone())
    # keys sort like the floats; NaN ranks as -inf and both zeros are one value
    assert keys[1] == keys[2] and keys[0] == keys[4] < keys[6] < keys[1] < keys[5] < keys[7] < keys[3]
    sel = select_top({"a": scores.clone()}, params, 3 / 8, "element")
    assert sel.indices["a"].tolist() == [3, 5, 7]
    everything = select_top({"a": scores.clone()}, params, 1.0, "element")
    assert everything.indices == {"a": None}


def test_select_top_leaves_caller_scores_alone_unless_consumed():
    scores = {"a": torch.tensor([-1.0, 2.0, -0.0])}
    select_top(scores, {"a": torch.zeros(3)}, 0.5, "element")
    assert torch.equal(scores["a"], torch.tensor([-1.0, 2.0, -0.0])) and str(scores["a"][2].item()) == "-0.0"
    select_top(scores, {"a": torch.zeros(3)}, 0.5, "element", consume=True)
    assert scores == {}  # popped: the buffer became the keys and was freed


def test_per_tensor_scope_takes_the_fraction_of_each_tensor():
    scores = tie_heavy_scores(PARAMS, 5)
    selection = select_top({n: s.reshape(-1) for n, s in scores.items()}, PARAMS, 0.25, "element", "per_tensor")
    for n, p in PARAMS.items():
        assert as_lists(selection, PARAMS).get(n) == reference_select({n: scores[n]}, {n: p}, 0.25, "element").get(n)


def _tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))


def test_streams_are_the_coefficient_weighted_sum_of_every_micro_batch_gradient():
    model = _tiny()
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(False)
    xs = [torch.randn(5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]

    def terms():
        for x in xs:
            y = model(x)
            yield {"loss": y.pow(2).mean(), "nll": y.sin().sum()}
        yield {"retain_nll": model(torch.ones(2, 4)).mean()}

    grads = accumulate_streams(terms(), params, {"a": {"loss": 1.0}, "d": {"nll": 1.0, "retain_nll": -0.5}})
    # by hand: autograd.grad of each summed scalar separately, combined afterwards
    for p in params.values():
        p.requires_grad_(True)
    loss = sum(model(x).pow(2).mean() for x in xs)
    direction = sum(model(x).sin().sum() for x in xs) - 0.5 * model(torch.ones(2, 4)).mean()
    want_a = torch.autograd.grad(loss, list(params.values()))
    want_d = torch.autograd.grad(direction, list(params.values()))
    for n, a, d in zip(params, want_a, want_d):
        assert torch.allclose(grads["a"][n], a, atol=1e-6) and torch.allclose(grads["d"][n], d, atol=1e-6)
        assert params[n].grad is None
    with pytest.raises(ValueError, match="feeds two streams"):
        accumulate_streams(iter(()), params, {"a": {"nll": 1.0}, "b": {"nll": 2.0}})


@pytest.mark.parametrize("method", ["emso", "ga"])
@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_contrastive_scores_are_minus_gloss_times_gnll_minus_lambda_gretain(method, lam):
    """The folded streams equal the DESIGN formula s = -g_L * (g_NLL - lambda g_R), also for GA's one-stream shortcut."""
    # lambda = 0 is EMSO's forget-only `contrastive`; lambda > 0 is obliviate's `contrastive_retain`.
    name = "contrastive_retain" if lam else "contrastive"
    selector = get_selector(EraseConfig(method=method, selector=name, retain_contrast=lam))
    g = torch.Generator().manual_seed(7)
    g_nll, g_r = torch.randn(10, generator=g), torch.randn(10, generator=g)
    g_loss = -g_nll if method == "ga" else torch.randn(10, generator=g)  # GA: L = -NLL exactly
    pool = {"loss": g_loss, "nll": g_nll, "direction": g_nll - lam * g_r, "retain": g_r}
    score = selector.element_score("w", {s: pool[s].clone() for s in selector.streams})
    assert torch.allclose(score, -g_loss * (g_nll - lam * g_r), atol=1e-6)
    if method == "ga":
        assert "loss" not in selector.needs  # one backward pass of the forget batch, not two


def test_padded_shards_have_equal_length_and_cover_each_position_once_in_order():
    for n, world in [(5, 2), (1, 3), (7, 3), (8, 4), (0, 2), (3, 1)]:
        shards = [padded_shard(n, world, r) for r in range(world)]
        assert len({len(pos) for pos, _ in shards}) == 1
        assert len(shards[0][0]) == -(-n // world)
        assert [i for pos, real in shards for i in pos[:real]] == list(range(n))
        assert all(0 <= i < max(n, 1) for pos, _ in shards for i in pos)


def test_shard_probes_pads_with_unique_ids():
    probes = ProbeSet([Probe(f"p{i}", "member", [1, 2], [3]) for i in range(5)])
    shard, real = shard_probes(probes, 2, 1)
    assert real == 2 and shard.ids == ["p3", "p4", "p4#pad0"]
    shard, real = shard_probes(ProbeSet(probes.probes[:1]), 3, 2)
    assert real == 0 and shard.ids == ["p0#pad0"]


def test_token_bounded_passes_give_the_whole_batch_gradients(monkeypatch):
    """Splitting forget and retain batches into smaller forward passes (MICRO_BATCH_LOGITS) changes no gradient."""
    import obliviate.erasure.memory as memory_module
    from obliviate.erasure import Eraser
    from obliviate.erasure.eraser import _seeded
    from tests.ddp_worker import fresh_model, sft_probes
    from tests.helpers import corpus_tokenizer

    corpus, tokenizer = corpus_tokenizer()
    probes = sft_probes(tokenizer)
    forget = probes.subset(probes.ids[:6])
    retain = [r["text"] for r in corpus.retain][:8]
    results, passes = [], []
    for budget in (memory_module.MICRO_BATCH_LOGITS, 1):  # 1: every pass holds a single sequence
        monkeypatch.setattr(memory_module, "MICRO_BATCH_LOGITS", budget)
        # contrastive_retain: the selection reads a retain batch too, so both kinds of pass are split.
        config = EraseConfig(gate=None, selector="contrastive_retain")
        eraser = Eraser(fresh_model(tokenizer).eval(), tokenizer, forget, config, retain=retain)
        eraser._prepare_model()
        count = [0]
        eraser.model.register_forward_pre_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        results.append(eraser._gradients(forget, list(range(6)), None, _seeded(0), eraser.selector.streams))
        passes.append(count[0])
    # The selection's retain rows are the loss split of `retain` (the gate's and the audit's rows are not read).
    assert passes[0] == 2 and passes[1] == 6 + min(len(eraser.retain_texts), config.retain_batch_size)
    for stream, grads in results[0].items():
        for name, g in grads.items():
            assert torch.allclose(results[1][stream][name], g, atol=1e-6, rtol=1e-4), (stream, name)
