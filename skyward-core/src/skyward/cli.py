"""``skyward`` command line: list providers, and sweep machines a dead client left behind.

``skyward down`` asks every registered provider for the instances it manages (by the
``skyward:managed`` / ``skyward:pool`` tags; for ``Local``, agent processes) and terminates
them. It is the last line of defence after a client was killed before its pool closed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from skyward.plugins import get_registry
from skyward.provider import SharedInfrastructure

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


def _cmd_down(options: argparse.Namespace) -> int:
    registry = get_registry()
    total = 0
    for name in _providers(options.provider):
        try:
            provider = registry.providers[name]().create()
        except Exception as error:  # a provider that needs settings cannot sweep bare
            print(f"{name}: skipped ({error})", file=sys.stderr)
            continue
        found = list(provider.list_by_tag(options.pool))
        for instance in found:
            print(f"{name}\t{instance.id}\t{instance.tags.get('skyward:pool', '')}")
        if found and not options.dry_run:
            provider.terminate(found)
        total += len(found)
        if options.shared and isinstance(provider, SharedInfrastructure):
            for kind, ident in provider.list_shared():
                print(f"{name}\tshared\t{kind}\t{ident}")
            if not options.dry_run:
                for kind, ident in provider.teardown_shared():
                    print(f"{name}: kept {kind} {ident} (in use or not empty)", file=sys.stderr)
    verb = "found" if options.dry_run else "terminated"
    print(f"{total} instance(s) {verb}", file=sys.stderr)
    return 0


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
    down.set_defaults(run=_cmd_down)
    options = parser.parse_args(argv)
    result: int = options.run(options)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
