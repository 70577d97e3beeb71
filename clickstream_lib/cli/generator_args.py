"""Arguments that several commands share: the generator's, a scenario, a refresh interval."""

from __future__ import annotations

import argparse


def scenario_arg(text: str) -> tuple[str, dict[str, object]]:
    """``NAME`` or ``NAME:key=value,key=value`` -> (name, params); numbers become numbers."""
    name, _, rest = text.partition(":")
    params: dict[str, object] = {}
    for part in filter(None, rest.split(",")):
        key, sep, raw = part.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{part!r} in {text!r} is not key=value (e.g. flash_sale:share=0.5)")
        value: object = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                pass
        params[key.strip()] = value
    return name.strip(), params


def refresh_arg(text: str) -> float:
    """Seconds between refreshes: a number of at least 0.5 (0 or less would refresh in a busy loop)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0.5 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is out of range; expected seconds >= 0.5 (e.g. --refresh 5)")
    return value


def add_generator_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=None, help="the same seed gives the same events (default: random)")
    p.add_argument(
        "--profile",
        choices=("default", "case-study"),
        default="default",
        help=(
            "default: sessions walking the view -> click -> add_to_cart -> purchase funnel; case-study: the original "
            "case study's six types (open_app 40%%, login 25%%, view, click, payment_initiated, purchase) with a "
            "nested `metadata` object (experiment_name, experiment_variation, session_id, device_name), users and "
            "items uniform"
        ),
    )
    p.add_argument(
        "--users",
        type=int,
        default=None,
        help=(
            "number of users (default 10000; case-study 9999); when live, a user's sessions stay 30 minutes apart "
            "(so that the sessions rule tells them apart) with about 540 users per event/s"
        ),
    )
    p.add_argument("--items", type=int, default=None, help="catalogue size (default 1000; case-study 50)")
    p.add_argument(
        "--scenario",
        action="append",
        type=scenario_arg,
        default=[],
        metavar="NAME[:k=v,...]",
        help=(
            "switch a scenario on (repeatable): flash_sale, bot_burst, late_events, duplicates, malformed; "
            "e.g. --scenario malformed:share=0.05 --scenario flash_sale:item=item_0007"
        ),
    )


def make_generator(args: argparse.Namespace) -> object:
    from ..generator import CaseStudyGenerator, Generator

    if args.profile == "case-study":
        # The case study's own sizes (user_0000..user_9998, item_0000..item_0049) unless given.
        users = args.users if args.users is not None else 9_999
        items = args.items if args.items is not None else 50
        case = CaseStudyGenerator(seed=args.seed, n_users=users, n_items=items)
        for name, params in args.scenario:
            case.set_scenario(name, True, **params)
        return case
    gen = Generator(
        seed=args.seed,
        n_users=args.users if args.users is not None else 10_000,
        n_items=args.items if args.items is not None else 1_000,
    )
    for name, params in args.scenario:
        gen.set_scenario(name, True, **params)
    return gen
