"""`clickstream config`."""

from __future__ import annotations

import argparse

from ..settings import Settings
from .output import out


class ConfigCommand:
    """`clickstream config`."""

    name = "config"

    @staticmethod
    def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        p = sub.add_parser(
            "config",
            help="show the effective settings (secrets hidden)",
            description="Show the effective settings read from the environment, with passwords hidden.",
            epilog="example: KAFKA_TOPIC=clicks clickstream config",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(handler=ConfigCommand.run)

    @staticmethod
    def run(args: argparse.Namespace, settings: Settings) -> int:
        for key, value in settings.describe().items():
            out(f"{key}={value}")
        return 0
