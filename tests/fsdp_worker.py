"""The worker tests/test_fsdp.py launches: the callback's scoring on a model really sharded by FSDP2 (gloo, CPU).

    torchrun --nproc_per_node=2 tests/fsdp_worker.py OUT

A trainer on 2 processes (DDP over gloo: transformers runs FSDP only on accelerators), a MemorizationCallback
on 7 probes (an uneven split: 4 + 3, padded to 4 + 4) and a frozen embedding + first block (so the frozen-prefix
cache has something to cache). The callback scores the model whole, then the same model after
``fully_shard`` of every block and the root: each rank then holds half of every weight, and each forward
pass all-gathers them, so a rank that ran one pass fewer would hang the other. On the main process it
saves both sets of rows, each rank's forward-pass count, whether the prefix cache was on, and the error
the Eraser gives on the sharded model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

N_PROBES = 7


def main(out: str) -> None:
    from accelerate.utils import gather_object
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from obliviate.callbacks import MemorizationCallback
    from obliviate.callbacks.distributed import sharded_parameters
    from obliviate.erasure import EraseConfig, Eraser
    from tests.ddp_worker import sft_probes, sft_trainer

    torch.set_num_threads(1)
    trainer = sft_trainer(Path(out).parent / "run", max_steps=1, ddp_backend="gloo")
    acc = trainer.accelerator
    model = trainer.model
    frozen = [model.transformer.wte, model.transformer.wpe, model.transformer.h[0]]
    for module in frozen:
        module.requires_grad_(False)
    probes = sft_probes()
    probes = probes.subset(probes.ids[:N_PROBES])
    callback = MemorizationCallback(trainer, probes, every_n_steps=1)
    result = {"world": acc.num_processes}

    result["whole"] = callback.score()
    result["whole_cache"] = callback._prefix is not None and callback._prefix[0] is not None

    mesh = init_device_mesh("cpu", (acc.num_processes,))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    forwards = [0]
    model.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    result["kind"] = sharded_parameters(model)
    result["sharded"] = callback.score()
    result["sharded_cache"] = callback._prefix is not None and callback._prefix[0] is not None
    result["forwards"] = gather_object([forwards[0]])
    try:
        Eraser(model, trainer.processing_class, probes, EraseConfig(gate=None))
        result["eraser"] = None
    except ValueError as err:
        result["eraser"] = str(err)
    if acc.is_main_process:
        torch.save(result, out)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
