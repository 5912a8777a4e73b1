"""The command line every seed shares: ``<service>-seed --token T [--url U] [--live]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import httpx

from .cli.config import SERVICES, service_url


def run_seed(key: str, doc: str | None, who: str, what: str, seed: Callable[[str, str, bool], list[str]]) -> None:
    """Parse the seed's arguments (``key``: the service's short name, e.g. ``stockpile``; ``who``:
    the roles whose token it takes; ``what``: what ``--live`` seeds live), run ``seed(url, token,
    live)`` and print what it did, one line each; exit 1 naming the URL when it fails."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=service_url(key),
        help=f"the service (default: ECS_{key.upper()}_URL, else the port make up recorded, else {SERVICES[key].port})",
    )
    parser.add_argument("--token", required=True, help=f"a {who}'s bearer token")
    parser.add_argument("--live", action="store_true", help=f"seed live {what} instead of exercise {what}")
    args = parser.parse_args()
    try:
        for line in seed(args.url, args.token, args.live):
            print(line)
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"seed failed at {args.url}: {exc}", file=sys.stderr)
        sys.exit(1)
