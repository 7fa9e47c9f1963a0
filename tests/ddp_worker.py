"""Tiny SFT setups for the callback tests, and the worker the DDP test launches with torchrun.

    torchrun --nproc_per_node=2 tests/ddp_worker.py OUT_DIR [MAX_STEPS]

As a worker: SFT of the tiny GPT-2 with a MemorizationCallback on gloo (CPU), then the main process
saves the final model to OUT_DIR/final and the trainer's log history to OUT_DIR/log_history.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # torchrun puts tests/ first on sys.path; the helpers import as tests.helpers
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from tests.helpers import corpus_tokenizer, tiny_model

LR = 5e-3


def sft_data():
    """``(tokenizer, training rows, probe rows)``: the helpers' corpus without the world facts."""
    corpus, tokenizer = corpus_tokenizer()
    rows = [
        {"prompt": r["prompt"], "completion": r["completion"]} for r in corpus.train if not r["id"].startswith("fact")
    ]
    return tokenizer, rows, corpus.probes


def sft_probes(tokenizer=None):
    from obliviate.data.sft import probes_from_sft_rows

    tok, _, probe_rows = sft_data()
    return probes_from_sft_rows(probe_rows, tokenizer or tok)


def fresh_model(tokenizer, arch: str = "gpt2"):
    """The tiny model without dropout, so a few dozen steps memorize the 8x canaries."""
    model = tiny_model(arch, tokenizer)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def sft_trainer(output_dir, model=None, peft_config=None, **overrides):
    """An ``SFTTrainer`` on the prompt/completion rows, CPU settings, no checkpoints unless asked."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer, rows, _ = sft_data()
    settings = dict(
        output_dir=str(output_dir),
        learning_rate=LR,
        lr_scheduler_type="constant",
        max_steps=20,
        per_device_train_batch_size=8,
        weight_decay=0.0,
        activation_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return SFTTrainer(
        model=model if model is not None else fresh_model(tokenizer),
        args=SFTConfig(**settings),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def main(out: str, max_steps: int = 30) -> None:
    from obliviate.callbacks import MemorizationCallback

    out_dir = Path(out)
    trainer = sft_trainer(
        out_dir / "run",
        max_steps=max_steps,
        ddp_backend="gloo",
        ddp_find_unused_parameters=False,
        per_device_train_batch_size=4,
    )
    callback = MemorizationCallback(trainer, sft_probes(), every_n_steps=10)
    trainer.add_callback(callback)
    trainer.train()
    if trainer.is_world_process_zero():
        trainer.save_model(str(out_dir / "final"))
        (out_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history))
        (out_dir / "world.json").write_text(
            json.dumps({"world_size": trainer.accelerator.num_processes, "flagged": callback.flagged})
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30)
