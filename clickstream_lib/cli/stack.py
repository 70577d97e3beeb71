"""`clickstream stack`."""

from __future__ import annotations

import argparse

from ..settings import Settings
from .output import err, out


class StackCommand:
    """`clickstream stack`."""

    name = "stack"

    @staticmethod
    def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        p = sub.add_parser(
            "stack",
            help="start, stop or inspect the local Kafka broker",
            description=(
                "Manage a real Apache Kafka 4.x broker (KRaft) on 127.0.0.1. The first `up` resolves its jars from "
                "Maven Central into the cache directory; later ones download nothing. Data persists across down/up.\n"
                "Nothing is started when KAFKA_BROKER_URL names a broker that is not on loopback."
            ),
            epilog="examples:\n  clickstream stack up\n  clickstream stack status\n  clickstream stack down",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("action", choices=["up", "down", "status"], help="what to do")
        p.add_argument(
            "--timeout",
            type=float,
            default=90.0,
            metavar="SECONDS",
            help="how long `up` waits for the broker (default 90)",
        )
        p.set_defaults(handler=StackCommand.run)

    @staticmethod
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from ..stack import KafkaStack

        stack = KafkaStack(settings)
        if args.action == "status":
            st = stack.status()
            out(st.describe())
            return 0 if st.running else 3
        if args.action == "up":
            before = stack.status()
            if before.running:
                out(f"already up: {before.describe()}")
                return 0
            if not stack.jars.present() and stack.is_local:
                err(f"resolving Kafka {stack.jars.version} jars from Maven Central (once) into {stack.jars.libs} ...")
            st = stack.up(timeout_s=args.timeout)
            out(f"up: {st.describe()}")
            return 0
        st = stack.down()
        out(f"down: {st.describe()}")
        return 0
