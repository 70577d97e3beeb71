"""What every command shares: result lines on stdout, messages on stderr, and the shape of a command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Protocol

from ..settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int]


class Command(Protocol):
    """A subcommand: its name, and a parser whose defaults name the handler that runs it."""

    name: str

    @staticmethod
    def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None: ...


def out(text: str = "") -> None:
    """Print a result line on stdout (the library itself never prints)."""
    print(text, flush=True)


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
