"""``skyward`` command line: list providers, and sweep machines a dead client left behind.

``skyward down`` asks every registered provider for the instances it manages (by the
``skyward:managed`` / ``skyward:pool`` tags; for ``Local``, agent processes) and terminates
them, then removes what else dead clients left (providers implementing
:class:`~skyward.provider.LeftoverSweeper`: node directories, keys, templates, ...). It is
the last line of defence after a client was killed before its pool closed. It exits 1
when something could not be looked at or removed, saying what.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import attrs

from skyward.plugins import get_registry
from skyward.provider import (
    POOL_TAG,
    LeftoverSweeper,
    Provider,
    ProviderConfig,
    SharedInfrastructure,
)

__all__ = ["main"]


def _providers(names: Sequence[str]) -> list[str]:
    registry = get_registry()
    if not names:
        return sorted(registry.providers)
    unknown = [n for n in names if n not in registry.providers]
    if unknown:
        known = ", ".join(sorted(registry.providers))
        raise SystemExit(f"unknown provider(s) {', '.join(unknown)}; registered: {known}")
    return list(names)


def _cmd_providers(_: argparse.Namespace) -> int:
    registry = get_registry()
    for name in sorted(registry.providers):
        config = registry.providers[name]
        print(f"{name}\tsky.{config.__name__}\t(from {registry.provider_owner[name]})")
    return 0


class _CannotSweep(Exception):
    """A provider cannot be swept with the options given (it says what it needs)."""


def _takes_hosts(config_class: object) -> bool:
    return (
        isinstance(config_class, type)
        and attrs.has(config_class)
        and "hosts" in attrs.fields_dict(config_class)
    )


def _config(name: str, options: argparse.Namespace) -> ProviderConfig:
    """The provider's configuration for a sweep: bare, or built from ``--host`` for
    providers that need to be told where their machines are (``SSH(hosts=...)``)."""
    config_class: Callable[..., ProviderConfig] = get_registry().providers[name]
    if _takes_hosts(config_class):
        if not options.host:
            raise _CannotSweep(
                f"it needs to be told which machines to look at: skyward down --provider {name} "
                "--host user@host[:port] (one --host per machine)"
            )
        from skyward.ssh.hosts import parse_host

        hosts = [parse_host(h) for h in options.host]
        if options.identity:
            hosts = [attrs.evolve(h, identity_file=options.identity) for h in hosts]
        extra: dict[str, object] = {"connect_timeout": options.connect_timeout}
        if options.known_hosts:
            extra["known_hosts"] = options.known_hosts
        return config_class(hosts=hosts, **extra)
    return config_class()


def _sweep(name: str, provider: Provider, options: argparse.Namespace) -> tuple[int, list[str]]:
    """Terminate one provider's orphans and remove its leftovers; (instances, problems)."""
    problems: list[str] = []
    found = list(provider.list_by_tag(options.pool))
    for instance in found:
        print(f"{name}\t{instance.id}\t{instance.tags.get(POOL_TAG, '')}")
    if found and not options.dry_run:
        try:
            provider.terminate(found)
        except Exception as error:
            problems.append(f"{name}: could not terminate {len(found)} instance(s): {error}")
    if isinstance(provider, LeftoverSweeper):
        leftovers = provider.list_leftovers(options.pool)
        for leftover in leftovers:
            where = f"\t{leftover.where}" if leftover.where else ""
            print(f"{name}\t{leftover.kind}\t{leftover.id}{where}")
        failed = (
            [
                (item, "not removed (--dry-run)")
                for item in leftovers
                if item.kind.startswith("unreachable")
            ]
            if options.dry_run
            else provider.remove_leftovers(leftovers)
        )
        for leftover, reason in failed:
            where = f" in {leftover.where}" if leftover.where else ""
            problems.append(f"{name}: {leftover.kind} {leftover.id}{where}: {reason}")
    if options.shared and isinstance(provider, SharedInfrastructure):
        for kind, ident in provider.list_shared():
            print(f"{name}\tshared\t{kind}\t{ident}")
        if not options.dry_run:
            for kind, ident in provider.teardown_shared():
                print(f"{name}: kept {kind} {ident} (in use or not empty)", file=sys.stderr)
    return len(found), problems


def _cmd_down(options: argparse.Namespace) -> int:
    asked = options.provider or (["ssh"] if options.host else [])
    names = _providers(asked)
    total = 0
    problems: list[str] = []
    for name in names:
        try:
            provider = _config(name, options).create()
        except Exception as error:  # a provider that needs settings cannot sweep bare
            if name in asked:
                problems.append(f"{name}: cannot sweep: {error}")
            else:
                print(f"{name}: skipped ({error})", file=sys.stderr)
            continue
        try:
            count, found_problems = _sweep(name, provider, options)
        except Exception as error:
            problems.append(f"{name}: the sweep failed: {error}")
            continue
        total += count
        problems.extend(found_problems)
    verb = "found" if options.dry_run else "terminated"
    print(f"{total} instance(s) {verb}", file=sys.stderr)
    for problem in problems:
        print(f"skyward down: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skyward", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    providers = commands.add_parser("providers", help="list registered providers")
    providers.set_defaults(run=_cmd_providers)
    down = commands.add_parser("down", help="terminate instances left by dead clients")
    down.add_argument("--provider", action="append", default=[], help="only this provider")
    down.add_argument("--pool", default=None, help="only this pool id")
    down.add_argument("--dry-run", action="store_true", help="list, do not terminate")
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
    down.set_defaults(run=_cmd_down)
    options = parser.parse_args(argv)
    result: int = options.run(options)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
