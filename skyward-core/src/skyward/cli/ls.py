"""``skyward ls``: every machine and side resource Skyward manages, across the installed
providers and every region where they may have made something (AWS scans every enabled
region), with pool id, age, state and cost so far where the provider tells.

It only looks: nothing is changed. Leftovers are what ``skyward down`` would remove;
shared infrastructure (security groups, roles, buckets) is what ``skyward down --shared``
would remove.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from skyward.cli import providers as chosen
from skyward.cli.output import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Output, Table, help_text
from skyward.provider import POOL_TAG, Instance, LeftoverSweeper, SharedInfrastructure

__all__ = ["add_parser", "age", "run"]

COLUMNS = [
    ("provider", "Provider"),
    ("kind", "Kind"),
    ("id", "Id"),
    ("pool", "Pool"),
    ("state", "State"),
    ("instance_type", "Machine"),
    ("where", "Where"),
    ("age", "Age"),
    ("hourly_price", "$/h"),
    ("cost_so_far", "Cost so far $"),
]
PROBLEM_COLUMNS = [("provider", "Provider"), ("reason", "Problem")]


def age(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def _instance_row(name: str, instance: Instance, now: float) -> dict[str, Any]:
    price = instance.price_spot if instance.spot else instance.price_on_demand
    seconds = None if instance.launched_at is None else max(0.0, now - instance.launched_at)
    cost = None if price is None or seconds is None else round(price * seconds / 3600, 4)
    return {
        "provider": name,
        "kind": "instance",
        "id": instance.id,
        "pool": instance.tags.get(POOL_TAG, ""),
        "state": instance.state.value,
        "instance_type": instance.instance_type,
        "where": instance.region or instance.ip or "",
        "spot": instance.spot,
        "launched_at": instance.launched_at,
        "age_seconds": None if seconds is None else round(seconds, 1),
        "age": age(seconds),
        "hourly_price": price,
        "cost_so_far": cost,
    }


def _look(name: str, options: argparse.Namespace) -> list[dict[str, Any]]:
    provider = chosen.build(name, options)
    now = time.time()
    rows = [_instance_row(name, i, now) for i in provider.list_by_tag(options.pool)]
    if isinstance(provider, LeftoverSweeper):
        for leftover in provider.list_leftovers(options.pool):
            rows.append(
                {
                    "provider": name,
                    "kind": leftover.kind,
                    "id": leftover.id,
                    "pool": leftover.pool,
                    "state": "leftover",
                    "where": leftover.where,
                }
            )
    if isinstance(provider, SharedInfrastructure) and not options.pool:
        for kind, ident in provider.list_shared():
            rows.append(
                {"provider": name, "kind": kind, "id": ident, "pool": "", "state": "shared"}
            )
    return rows


def run(options: argparse.Namespace, out: Output) -> int:
    asked: list[str] = options.provider or (["ssh"] if options.host else [])
    try:
        names = chosen.names(asked)
    except chosen.UnknownProvider as error:
        out.note(f"skyward ls: {error}")
        return EXIT_USAGE
    rows: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as threads:
        futures = {name: threads.submit(_look, name, options) for name in names}
        for name, future in futures.items():
            try:
                rows += future.result()
            except chosen.CannotUse as error:
                # Not set up is not a failure unless that provider was asked for by name.
                target = problems if name in asked else skipped
                target.append({"provider": name, "reason": str(error)})
            except Exception as error:
                problems.append({"provider": name, "reason": f"{type(error).__name__}: {error}"})
    for item in rows:
        for key, _ in COLUMNS:
            item.setdefault(key, None)
    out.tables(
        [
            Table("resources", COLUMNS, rows),
            Table("problems", PROBLEM_COLUMNS, problems),
            Table("skipped", PROBLEM_COLUMNS, skipped),
        ]
    )
    if not out.as_json and not rows:
        out.note("skyward ls: nothing Skyward manages was found")
    return EXIT_FAILED if problems else EXIT_OK


def add_parser(commands: Any) -> None:
    ls = commands.add_parser(
        "ls",
        help="list every machine and resource Skyward manages",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument("--provider", action="append", default=[], help="only this provider")
    ls.add_argument("--pool", default=None, help="only this pool id")
    ls.add_argument("--region", default=None, help="region to start from (AWS scans them all)")
    ls.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="USER@HOST[:PORT]",
        help="a machine to look at with the ssh provider (repeat for each)",
    )
    ls.add_argument("--identity", default=None, help="private key for --host machines")
    ls.add_argument("--known-hosts", default=None, help="known_hosts file for --host machines")
    ls.add_argument("--connect-timeout", type=float, default=20.0, help=argparse.SUPPRESS)
    ls.set_defaults(run=run)
