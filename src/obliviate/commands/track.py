"""``obliviate track``: being built (see the issue tracker)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise NotImplementedError("obliviate track is not implemented yet")
