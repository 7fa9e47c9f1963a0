"""The demo package's pieces: the trainer-log digest on a real Trainer, and the package's public names.

python -m pytest -q tests/test_demo_package.py
"""

from __future__ import annotations

import pytest
from transformers import PrinterCallback, ProgressCallback

from obliviate.callbacks import MemorizationCallback
from obliviate.demo.logs import TrainerLogDigest, digest
from tests.ddp_worker import sft_probes, sft_trainer


@pytest.mark.parametrize("disable_tqdm", [True, False])
def test_digest_collects_every_log_the_trainer_emits(tmp_path, capsys, disable_tqdm):
    """Every log (loss, the callback's memorization metrics, the end of training) is kept as emitted and
    printed as one line, in place of the trainer's printed dicts."""
    trainer = sft_trainer(tmp_path, max_steps=6, logging_steps=2, disable_tqdm=disable_tqdm)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    log_digest = TrainerLogDigest()
    trainer.add_callback(log_digest)
    trainer.add_callback(MemorizationCallback(trainer, sft_probes(), every_n_steps=3, metrics=["loss"]))
    trainer.train()

    # The trainer's record of what it logged is log_history, each entry with the step added.
    emitted = [{k: v for k, v in entry.items() if k != "step"} for entry in trainer.state.log_history]
    assert log_digest.logs == emitted
    kinds = [("memorization/extraction_rate" in e, "loss" in e, "train_runtime" in e) for e in emitted]
    assert kinds.count((False, True, False)) == 3  # steps 2, 4, 6
    assert sum(k[0] for k in kinds) == 2  # steps 3 and 6 (the end of training, scored once)
    assert kinds[-1] == (False, False, True)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [digest(e) for e in emitted]
    assert "{'" not in "\n".join(printed)  # no dict printed by the trainer's own printer
    loss = next(e for e in emitted if "loss" in e)
    assert f"loss {loss['loss']:.3f}" in digest(loss) and f"epoch {loss['epoch']:5.2f}" in digest(loss)
    memorization = next(e for e in emitted if "memorization/extraction_rate" in e)
    assert f"mean MA {memorization['memorization/mean_memorization_accuracy']:.3g}" in digest(memorization)
    assert f"flagged {memorization['memorization/flagged']:.3g}" in digest(memorization)


def test_public_names_import_from_the_package_without_torch():
    """``from obliviate.demo import ...`` keeps its names, and importing them loads no torch (fast errors)."""
    import subprocess
    import sys

    code = (
        "import sys; from obliviate.demo import DemoError, DemoSettings, MARKER, SECTIONS, cache_root, "
        "default_recipe, load_demo_recipe, prepare_toy, run_demo, summary_text, toy_key; "
        "print('torch' in sys.modules, MARKER, SECTIONS[-1])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["False", "demo.json", "quick"]
