"""``obliviate erase``: being built (see the issue tracker)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise NotImplementedError("obliviate erase is not implemented yet")
