"""obliviate: find what a language model memorized from its fine-tuning data, and erase it."""

__version__ = "0.1.0"
