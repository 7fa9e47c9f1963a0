"""The built-in tiny model: a ~1M-parameter GPT-2, its byte-level BPE tokenizer and SFT corpus.

Everything downstream loads these by path, exactly as it would load a hub model:

    obliviate toy --out runs/toy
    obliviate score --model runs/toy/base --probes runs/toy/probes.jsonl --out runs/toy/scores

Layout written by :func:`build_toy`::

    OUT/base/            model + tokenizer (save_pretrained), lightly pre-trained on the formats
    OUT/train.jsonl      SFT rows {"id", "prompt", "completion"} (canaries repeated)
    OUT/probes.jsonl     probes {"id", "role", "prompt", "completion", "repetitions"}
    OUT/retain.jsonl     non-secret text to keep {"text"} (trained rows + base pre-training notes and records)
    OUT/heldout.jsonl    never-trained text (the first 32 controls' full text)
    OUT/multiple_choice.jsonl  {"context", "choices", "label"} about facts in train.jsonl
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from obliviate.data.synthetic import Corpus, make_corpus

EOS = "<|endoftext|>"
PAD = "<|pad|>"


@dataclass
class ToyConfig:
    """Sizes of the built-in model. The defaults give ~1M parameters that memorize 8x canaries in seconds."""

    vocab_size: int = 1024
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128
    pretrain_steps: int = 300
    pretrain_batch_size: int = 32
    pretrain_lr: float = 3e-3
    seed: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_embd", "n_head", "n_positions", "pretrain_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ToyConfig.{name} must be an integer >= 1, got {value!r}.")
        if isinstance(self.pretrain_steps, bool) or not isinstance(self.pretrain_steps, int) or self.pretrain_steps < 0:
            raise ValueError(
                f"pretrain_steps (--pretrain-steps) must be an integer >= 0 (0: random init), "
                f"got {self.pretrain_steps!r}."
            )
        if not isinstance(self.pretrain_lr, (int, float)) or not self.pretrain_lr > 0:
            raise ValueError(f"ToyConfig.pretrain_lr must be a number > 0, got {self.pretrain_lr!r}.")
        if self.n_embd % self.n_head:
            raise ValueError(f"ToyConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}).")


def train_tokenizer(texts: list[str], vocab_size: int = 1024, with_pad: bool = True) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with ``tokenizers`` and wrap it for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    special = [EOS, PAD] if with_pad else [EOS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    kwargs = {"pad_token": PAD} if with_pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None, **kwargs)


def build_model(tokenizer: PreTrainedTokenizerFast, config: ToyConfig | None = None) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 sized by ``config`` for ``tokenizer``."""
    config = config or ToyConfig()
    torch.manual_seed(config.seed)
    gpt2 = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(gpt2)


def pretrain(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, texts: list[str], config: ToyConfig) -> None:
    """A short causal-LM warm-up so the base model knows the formats (not the SFT records)."""
    if config.pretrain_steps <= 0:
        return
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(config.seed)
    encoded = tokenizer([t + EOS for t in texts], padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    optim = torch.optim.AdamW(model.parameters(), lr=config.pretrain_lr, weight_decay=0.0)
    model.train()
    for _ in tqdm(range(config.pretrain_steps), desc="pre-training toy base", leave=False):
        idx = torch.randint(0, ids.shape[0], (config.pretrain_batch_size,), generator=gen)
        loss = model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
    model.eval()


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def build_toy(out: str | os.PathLike, config: ToyConfig | None = None, corpus: Corpus | None = None) -> Path:
    """Write the built-in model, tokenizer and data under ``out`` (see the module docstring)."""
    config = config or ToyConfig()
    corpus = corpus or make_corpus(seed=config.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts = [r["prompt"] + r["completion"] for r in corpus.train] + [r["text"] for r in corpus.pretrain]
    texts += [r["prompt"] + r["completion"] for r in corpus.probes]
    tokenizer = train_tokenizer(texts, vocab_size=config.vocab_size)
    model = build_model(tokenizer, config)
    pretrain(model, tokenizer, [r["text"] for r in corpus.pretrain], config)
    model.eval()
    model.save_pretrained(out / "base")
    tokenizer.save_pretrained(out / "base")
    _write_jsonl(out / "train.jsonl", corpus.train)
    _write_jsonl(out / "probes.jsonl", corpus.probes + corpus.calibration_controls)
    _write_jsonl(out / "retain.jsonl", corpus.retain)
    _write_jsonl(out / "heldout.jsonl", corpus.heldout)
    _write_jsonl(out / "multiple_choice.jsonl", corpus.multiple_choice)
    (out / "toy_config.json").write_text(json.dumps(asdict(config), indent=2))
    return out
