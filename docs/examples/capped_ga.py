"""Capped gradient ascent: ascend each forget suffix's mean NLL only up to ``nll_cap`` nats."""

from dataclasses import dataclass, field

from obliviate.erasure.config import EraseConfigError
from obliviate.erasure.losses import EraseLoss, register_loss


@dataclass
class CappedGAConfig:
    nll_cap: float = field(default=8.0, metadata={"help": "a sequence stops pulling once its NLL is this high."})

    def __post_init__(self):
        if not self.nll_cap > 0:
            raise EraseConfigError(f"nll_cap must be > 0; got {self.nll_cap}.")


@register_loss("capped_ga")
class CappedGradientAscent(EraseLoss):
    config_class = CappedGAConfig  # validates the recipe's method_args

    def sequence_losses(self, out, reference_log_prob=None):
        return -out.sequence_nll().clamp(max=self.args.nll_cap)
