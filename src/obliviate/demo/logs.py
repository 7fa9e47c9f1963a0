"""The demo's view of the trainer's logs: one line per log instead of the printed dict.

    python -m pytest -q tests/test_demo_package.py -k digest     # the digest on a real Trainer

``run_track(..., callbacks=[TrainerLogDigest()])`` puts it in place of the trainer's own printer
(its progress bar stays); every log the trainer emits is kept in ``digest.logs``.
"""

from __future__ import annotations

from transformers import ProgressCallback

KEYS = (
    ("memorization/extraction_rate", "extraction rate"),
    ("memorization/canary/extraction_rate", "canaries"),
    ("memorization/mean_memorization_accuracy", "mean MA"),
    ("memorization/flagged", "flagged"),
)


def digest(logs: dict) -> str:
    """One line for one log: the memorization callback's ~50 keys, the loss, or the end of training."""
    epoch = logs.get("epoch")
    head = f"      epoch {float(epoch):5.2f}" if epoch is not None else "     "
    if "memorization/extraction_rate" in logs:
        parts = [f"{label} {float(logs[k]):.3g}" for k, label in KEYS if k in logs]
        return f"{head}  memorization: {', '.join(parts)}"
    if "train_runtime" in logs:
        return (
            f"{head}  training done in {float(logs['train_runtime']):.1f}s, mean loss {float(logs['train_loss']):.3f}"
        )
    if "loss" in logs:
        return f"{head}  loss {float(logs['loss']):.3f}"
    return f"{head}  {logs}"


class TrainerLogDigest(ProgressCallback):
    """The trainer's progress bar (none under ``disable_tqdm``), with :func:`digest` lines for its logs.

    Attributes:
        logs: every log the trainer emitted, in order, as it emitted it (``state.log_history`` less ``step``).
    """

    def __init__(self):
        super().__init__()
        self.logs: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.current_step = 0
        if not args.disable_tqdm:
            super().on_train_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or logs is None:
            return
        self.logs.append(dict(logs))
        line = digest(logs)
        if self.training_bar is not None:
            self.training_bar.write(line)  # above the bar, as the trainer writes its own logs
        else:
            print(line, flush=True)
