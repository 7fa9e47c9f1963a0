"""GGUF models: loading a .gguf file or a directory holding one, saving the result, and the bad inputs.

Every file here is written by the ``gguf`` package's own writer: a 2-layer Llama with float32 tensors and
a 64-token vocabulary (transformers loads it as it loads SmolLM2's GGUF), a file of an architecture
transformers has no GGUF loader for, and damaged copies.
"""

from __future__ import annotations

import json

import gguf  # in the `test` extra: these tests run in every tier
import numpy as np
import pytest
import torch

from obliviate.modeling import ModelLoadError, find_gguf, freeze_except, load_model, load_tokenizer
from obliviate.real import RealModelError, ensure_real_model, is_converted

DIM, FF, LAYERS, VOCAB = 16, 32, 2, 64


def write_tiny_llama(path, seed: int = 0) -> None:
    """A 2-layer Llama GGUF (llama.cpp tensor names, byte-level-BPE-style tokenizer fields)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("tiny")
    w.add_context_length(64)
    w.add_embedding_length(DIM)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(DIM // 2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    tokens = ["<s>", "</s>", "<pad>"] + [chr(ord("a") + i) for i in range(26)] + [f"t{i}" for i in range(VOCAB - 29)]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3] * 3 + [1] * (VOCAB - 3))
    w.add_token_merges([])
    w.add_token_scores([0.0] * VOCAB)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)

    def tensor(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w.add_tensor("token_embd.weight", tensor(VOCAB, DIM))  # no output.weight: the head is tied
    w.add_tensor("output_norm.weight", np.ones(DIM, np.float32))
    for i in range(LAYERS):
        for name, shape in (
            ("attn_q", (DIM, DIM)),
            ("attn_k", (DIM, DIM)),
            ("attn_v", (DIM, DIM)),
            ("attn_output", (DIM, DIM)),
            ("ffn_gate", (FF, DIM)),
            ("ffn_up", (FF, DIM)),
            ("ffn_down", (DIM, FF)),
        ):
            w.add_tensor(f"blk.{i}.{name}.weight", tensor(*shape))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(DIM, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(DIM, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_llama(path)
    return path


IDS = torch.tensor([[3, 4, 5, 6, 7, 8]])


def test_gguf_file_and_directory_load_the_same_plain_model(tiny_gguf):
    from transformers import AutoModelForCausalLM

    by_file, by_dir = load_model(tiny_gguf, device="cpu"), load_model(tiny_gguf.parent, device="cpu")
    # transformers' own GGUF loading, independently: our rebuilt model must compute exactly what it does.
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name).eval()
    with torch.no_grad():
        expected = reference(IDS).logits
        assert torch.equal(by_file(IDS).logits, expected)
        assert torch.equal(by_dir(IDS).logits, expected)
    assert not hasattr(by_file.config, "quantization_config") and getattr(by_file, "hf_quantizer", None) is None
    assert by_file.lm_head.weight is by_file.model.embed_tokens.weight  # tied as the GGUF says
    assert not by_file.training
    assert not any(t.is_meta for t in [*by_file.parameters(), *by_file.buffers()])


def test_gguf_model_saves_a_normal_safetensors_directory(tiny_gguf, tmp_path):
    model, tokenizer = load_model(tiny_gguf, device="cpu"), load_tokenizer(tiny_gguf)
    assert tokenizer("abc", add_special_tokens=False)["input_ids"] == [3, 4, 5]
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    reloaded = load_model(tmp_path, device="cpu")  # a save_pretrained directory, no GGUF involved
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, model(IDS).logits)
    assert load_tokenizer(tmp_path)("abc", add_special_tokens=False)["input_ids"] == [3, 4, 5]


def test_find_gguf_prefers_a_saved_config_and_refuses_two_files(tiny_gguf, tmp_path):
    assert find_gguf(tiny_gguf) == tiny_gguf and find_gguf(tiny_gguf.parent) == tiny_gguf
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    assert find_gguf(tmp_path) is None  # a save_pretrained directory with a stray .gguf loads as usual
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(b"GGUF")
    (two / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="2 GGUF files"):
        load_model(two)


def test_unsupported_architecture_is_named(tmp_path):
    path = tmp_path / "rwkv.gguf"
    w = gguf.GGUFWriter(str(path), arch="rwkv7")
    w.add_name("fake")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for load in (load_model, load_tokenizer):
        with pytest.raises(ModelLoadError, match=r"architecture 'rwkv7'.*it loads llama"):
            load(path)


def test_corrupt_gguf_files(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 3])
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"<html>404</html>" + data[16:])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_model(truncated)
    with pytest.raises(ModelLoadError, match="not a GGUF file .*b'<htm'"):
        load_model(junk)
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_tokenizer(truncated)


def test_freeze_except_top_layers_and_patterns(tiny_gguf):
    model = load_model(tiny_gguf, device="cpu")
    n = freeze_except(model, "1")  # as `--set trainable=1` gives it: a count, not the regex "1"
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("model.layers.1.") for name in trainable)
    assert n == sum(p.numel() for name, p in model.named_parameters() if name.startswith("model.layers.1."))
    assert not model.model.embed_tokens.weight.requires_grad and not model.model.norm.weight.requires_grad
    freeze_except(model, [r"layers\.0\.mlp\.down_proj"])
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"model.layers.0.mlp.down_proj.weight"}
    with pytest.raises(ModelLoadError, match="3 top layers asked, the model has 2"):
        freeze_except(model, 3)
    with pytest.raises(ModelLoadError, match="match no parameter"):
        freeze_except(model, ["attn_q"])


def test_conversion_is_cached_and_atomic(tiny_gguf, tmp_path, monkeypatch):
    path, converted = ensure_real_model(tmp_path / "cache", gguf=tiny_gguf)
    assert converted and is_converted(path) and path == tmp_path / "cache" / "tiny"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    again, converted = ensure_real_model(tmp_path / "cache", gguf=tiny_gguf)
    assert again == path and not converted and (path / "model.safetensors").stat().st_mtime_ns == stamp

    # A conversion that dies while writing leaves neither the directory nor its temporary.
    import transformers

    def fail(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_real_model(tmp_path / "other", gguf=tiny_gguf)
    assert list((tmp_path / "other").iterdir()) == []


def test_unwritable_cache_is_a_clear_error(tiny_gguf, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # Under a regular file nothing can be created, even as root (where chmod would not stop a write).
    with pytest.raises(RealModelError, match="not writable.*OBLIVIATE_CACHE"):
        ensure_real_model(blocker / "models", gguf=tiny_gguf)


def test_missing_package_says_how_to_install(monkeypatch):
    import obliviate.real as real

    monkeypatch.setattr(real, "PACKAGE", "no_such_package_obliviate")
    with pytest.raises(RealModelError, match="make real-model"):
        real.packaged_gguf()


def test_real_model_command(tiny_gguf, tmp_path, capsys):
    from obliviate.cli import main

    assert main(["real-model", "--gguf", str(tiny_gguf), "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [str(tmp_path / "tiny")]  # the path alone: MODEL=$(obliviate real-model)
    assert "converted" in out.err
    assert main(["real-model", "--gguf", str(tiny_gguf), "--cache", str(tmp_path)]) == 0
    assert "already in the cache" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["real-model", "--gguf", str(tiny_gguf), "--cache", str(tmp_path / "file" / "x")]) == 2
    out = capsys.readouterr()
    assert "not writable" in out.err and out.out == ""
