"""``skyward down``: terminate the machines dead clients left behind, and the rest they left.

Every installed provider (or those named by ``--provider``) is asked for the instances it
manages (the ``skyward:managed`` / ``skyward:pool`` tags; for ``Local``, agent processes;
AWS scans every enabled region), then for what else dead clients left (providers
implementing :class:`~skyward.provider.LeftoverSweeper`: node directories, keys,
templates, ...), and with ``--shared`` the shared infrastructure. It is the last line of
defence after a client was killed before its pool closed.

It lists everything first; ``--dry-run`` stops there. Otherwise it asks on a terminal, and
off one (a script, CI) it removes only with ``--yes``: a sweep of every provider and region
is not something to run by accident. Off a terminal the listing is one tab-separated line
per item (provider, id, pool or where), so it can be read by ``cut`` and ``awk``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from attrs import define, field

from skyward.cli import providers as chosen
from skyward.cli.output import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Output, Table, help_text
from skyward.provider import POOL_TAG, Instance, Leftover, LeftoverSweeper, Provider
from skyward.provider import SharedInfrastructure as Shared

__all__ = ["add_parser", "run"]


@define
class _Plan:
    """What one provider would remove."""

    name: str
    provider: Provider
    instances: list[Instance] = field(factory=list)
    leftovers: list[Leftover] = field(factory=list)
    shared: list[tuple[str, str]] = field(factory=list)


def _plan(name: str, provider: Provider, options: argparse.Namespace) -> _Plan:
    plan = _Plan(name, provider, list(provider.list_by_tag(options.pool)))
    if isinstance(provider, LeftoverSweeper):
        plan.leftovers = provider.list_leftovers(options.pool)
    if options.shared and isinstance(provider, Shared):
        plan.shared = provider.list_shared()
    return plan


def _rows(plans: list[_Plan]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for plan in plans:
        for instance in plan.instances:
            rows.append(
                {
                    "provider": plan.name,
                    "kind": "instance",
                    "id": instance.id,
                    "pool": instance.tags.get(POOL_TAG, ""),
                    "where": instance.region,
                }
            )
        for leftover in plan.leftovers:
            rows.append(
                {
                    "provider": plan.name,
                    "kind": leftover.kind,
                    "id": leftover.id,
                    "pool": leftover.pool,
                    "where": leftover.where,
                }
            )
        for kind, ident in plan.shared:
            rows.append(
                {
                    "provider": plan.name,
                    "kind": f"shared {kind}",
                    "id": ident,
                    "pool": "",
                    "where": "",
                }
            )
    return rows


def _plain_line(row: dict[str, Any]) -> str:
    """The line format scripts (and tests) have read since the first ``skyward down``."""
    if row["kind"] == "instance":
        return f"{row['provider']}\t{row['id']}\t{row['pool']}"
    if row["kind"].startswith("shared "):
        return f"{row['provider']}\tshared\t{row['kind'][7:]}\t{row['id']}"
    where = f"\t{row['where']}" if row["where"] else ""
    return f"{row['provider']}\t{row['kind']}\t{row['id']}{where}"


def _show(out: Output, rows: list[dict[str, Any]]) -> None:
    if out.rich:
        columns = [(k, k.capitalize()) for k in ("provider", "kind", "id", "pool", "where")]
        out.tables([Table("Skyward resources to remove", columns, rows)])
    elif not out.as_json:
        for row in rows:
            print(_plain_line(row), file=out.stream)


def _confirm(out: Output, count: int) -> bool:
    out.errors.write(f"Remove these {count} resource(s)? [y/N] ")
    out.errors.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _execute(
    plan: _Plan, pool: str | None, problems: list[str], out: Output
) -> list[dict[str, Any]]:
    """Remove what the plan holds; the rows of leftovers found only on the way."""
    found: list[dict[str, Any]] = []
    if plan.instances:
        try:
            plan.provider.terminate(plan.instances)
        except Exception as error:
            problems.append(
                f"{plan.name}: could not terminate {len(plan.instances)} instance(s): {error}"
            )
    if isinstance(plan.provider, LeftoverSweeper):
        # Listed again: terminating the instances frees what they held (a pool's security
        # group is a leftover only once its instances are gone).
        leftovers = plan.provider.list_leftovers(pool) if plan.instances else plan.leftovers
        freed = [item for item in leftovers if item not in plan.leftovers]
        found = _rows([_Plan(plan.name, plan.provider, leftovers=freed)])
        _show(out, found)
        plan.leftovers = leftovers
        for leftover, reason in plan.provider.remove_leftovers(leftovers):
            where = f" in {leftover.where}" if leftover.where else ""
            problems.append(f"{plan.name}: {leftover.kind} {leftover.id}{where}: {reason}")
    if plan.shared and isinstance(plan.provider, Shared):
        for kind, ident in plan.provider.teardown_shared():
            out.note(f"{plan.name}: kept {kind} {ident} (in use or not empty)")
    return found


def run(options: argparse.Namespace, out: Output) -> int:
    asked: list[str] = options.provider or (["ssh"] if options.host else [])
    try:
        names = chosen.names(asked)
    except chosen.UnknownProvider as error:
        out.note(f"skyward down: {error}")
        return EXIT_USAGE
    if not (options.dry_run or options.yes or sys.stdin.isatty()):
        out.note(
            "skyward down: refusing to remove anything without --yes when not run from a "
            "terminal. See what would go with `skyward down --dry-run`, then run "
            "`skyward down --yes`."
        )
        return EXIT_USAGE
    plans: list[_Plan] = []
    problems: list[str] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            provider = chosen.build(name, options)
        except chosen.CannotUse as error:  # a provider that needs settings cannot sweep bare
            if name in asked:
                problems.append(f"{name}: cannot sweep: {error}")
            else:
                skipped[name] = str(error)
                out.note(f"{name}: skipped ({error})")
            continue
        try:
            plans.append(_plan(name, provider, options))
        except Exception as error:
            problems.append(f"{name}: the sweep failed: {error}")
    rows = _rows(plans)
    # What could not even be listed (an unscanned region) cannot be removed either.
    for plan in plans:
        if options.dry_run:
            for item in plan.leftovers:
                if item.kind.startswith("unreachable"):
                    where = f" in {item.where}" if item.where else ""
                    problems.append(f"{plan.name}: {item.kind} {item.id}{where}: not removed")
    _show(out, rows)
    removing = not options.dry_run and bool(rows)
    if removing and not options.yes and not _confirm(out, len(rows)):
        out.note("skyward down: nothing removed")
        return EXIT_OK
    if removing:
        for plan in plans:
            try:
                rows += _execute(plan, options.pool, problems, out)
            except Exception as error:
                problems.append(f"{plan.name}: the sweep failed: {error}")
    total = sum(len(p.instances) for p in plans)
    verb = "found" if options.dry_run else "terminated"
    out.note(f"{total} instance(s) {verb}")
    for problem in problems:
        out.note(f"skyward down: {problem}")
    if out.as_json:
        out.tables(
            [Table("resources", [], rows)],
            {"dry_run": bool(options.dry_run), "problems": problems, "skipped": skipped},
        )
    return EXIT_FAILED if problems else EXIT_OK


def add_parser(commands: Any) -> None:
    down = commands.add_parser(
        "down",
        help="remove machines and resources left by dead clients",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    down.add_argument("--provider", action="append", default=[], help="only this provider")
    down.add_argument("--pool", default=None, help="only this pool id")
    down.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    down.add_argument("-y", "--yes", action="store_true", help="remove without asking")
    down.add_argument(
        "--shared",
        action="store_true",
        help="also remove shared infrastructure (security group, IAM role, empty bucket)",
    )
    down.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="USER@HOST[:PORT]",
        help="a machine to sweep with the ssh provider (repeat for each)",
    )
    down.add_argument("--identity", default=None, help="private key for --host machines")
    down.add_argument("--known-hosts", default=None, help="known_hosts file for --host machines")
    down.add_argument(
        "--connect-timeout",
        type=float,
        default=20.0,
        help="seconds to keep trying each --host machine (default 20)",
    )
    down.set_defaults(run=run)
