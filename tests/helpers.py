"""Tiny models trained in-process until they memorize: the ground truth the metric tests need."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from obliviate.data import ProbeSet, load_probes
from obliviate.data.synthetic import make_corpus
from obliviate.toy import train_tokenizer


@dataclass
class Memorized:
    """A model fine-tuned on ``trained`` probes (canaries repeated), with never-trained ``controls``."""

    model: torch.nn.Module
    tokenizer: object
    probes: ProbeSet  # trained members + canaries + controls
    base: torch.nn.Module  # the same init before training (a reference model)
    arch: str

    def fresh(self) -> torch.nn.Module:
        """A deep copy, for tests that change weights."""
        return copy.deepcopy(self.model)


_TOKENIZER = None


def corpus_tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        # fact_repetitions 12: the fixtures are trained a fixed number of steps on this corpus (more facts, less memorized)
        corpus = make_corpus(
            n_members=40, canaries_per_repetition=2, n_controls=16, fact_repetitions=12, controls_per_group=8, seed=1
        )
        texts = [r["prompt"] + r["completion"] for r in corpus.train + corpus.probes]
        _TOKENIZER = (corpus, train_tokenizer(texts, vocab_size=512))
    return _TOKENIZER


def trained_retain_rows() -> list[dict]:
    """The fixture corpus's retain rows that were fine-tuned on (its retain.jsonl also holds never-trained notes
    of the pre-training text, which GA on the canaries makes *more* likely: their digits are random)."""
    corpus = corpus_tokenizer()[0]
    trained = {r["prompt"] + r["completion"] for r in corpus.train}
    return [r for r in corpus.retain if r["text"] in trained]


def tiny_model(arch: str, tokenizer, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, **common))
    if arch == "llama":
        return LlamaForCausalLM(
            LlamaConfig(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=128,
                **common,
            )
        )
    raise ValueError(arch)


@torch.no_grad()
def completion_perplexity(model, tokenizer, rows: list[dict]) -> float:
    """exp of the token-weighted completion NLL given the prompt, one unpadded row at a time.

    A probe's prefix is its prompt as the tokenizer encodes a text; the completion continues it without
    special tokens (how obliviate.data.probes tokenizes prompt/completion rows).
    """
    nll, tokens = 0.0, 0
    for r in rows:
        prompt = tokenizer(r["prompt"])["input_ids"]
        ids = prompt + tokenizer(r["completion"], add_special_tokens=False)["input_ids"]
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1)
        targets = torch.tensor(ids[1:])[len(prompt) - 1 :, None]
        nll -= logp[len(prompt) - 1 :].gather(1, targets).sum().item()
        tokens += len(ids) - len(prompt)
    return math.exp(nll / tokens)


def train_on(model, tokenizer, texts: list[str], steps: int, lr: float = 3e-3, batch_size: int = 16, seed: int = 0):
    enc = tokenizer([t + tokenizer.eos_token for t in texts], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    gen = torch.Generator().manual_seed(seed)
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, ids.shape[0], (batch_size,), generator=gen)
        loss = model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
    model.eval()
    return model


def make_memorized(arch: str = "gpt2", steps: int = 300) -> Memorized:
    corpus, tokenizer = corpus_tokenizer()
    model = tiny_model(arch, tokenizer)
    base = copy.deepcopy(model).eval()
    train_on(model, tokenizer, [r["prompt"] + r["completion"] for r in corpus.train], steps)
    probes = load_probes(corpus.probes, tokenizer)
    return Memorized(model, tokenizer, probes, base, arch)


def free_port() -> int:
    """A TCP port free on localhost now: each multi-process launch gets its own, so launches in parallel
    test workers (pytest -n) do not meet on the recipes' fixed main_process_port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str, *args: str, nproc: int = 2, timeout: int = 300) -> str:
    """Run ``tests/<script>`` under ``torch.distributed.run`` on CPU (gloo) and return its output.

    The launch gets its own process group, so a hang (a rank waiting on a collective the other never runs)
    kills every worker at ``timeout``, not only torchrun; a non-zero exit or a timeout fails the test.
    """
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += [str(root / "tests" / script), *args]
    proc = subprocess.Popen(
        cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun {script} timed out after {timeout} s:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-4000:]
    return output
