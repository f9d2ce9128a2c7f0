"""The ``skyward`` command line (also ``python -m skyward``).

Commands: ``offers`` (what every provider sells, best first), ``ls`` (what Skyward runs
now, everywhere), ``down`` (remove what dead clients left), ``doctor`` (credentials,
permissions, local prerequisites), ``providers`` (what is installed) and ``completion``
(a shell completion script). Each prints a table on a terminal, tab-separated text off
one, and one JSON document with ``--json``.

Exit status: 0 done; 1 something could not be looked at, reached or removed, or doctor
found a problem; 2 bad usage, or ``down`` refused to remove anything without ``--yes``
off a terminal; 3 ``offers`` found no matching machine; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from skyward.cli import completion, doctor, down, ls, offers
from skyward.cli.output import EXIT_OK, Output, Table, help_text
from skyward.plugins import get_registry

__all__ = ["build_parser", "main"]

EXIT_INTERRUPTED = 130


def _cmd_providers(options: argparse.Namespace, out: Output) -> int:
    registry = get_registry()
    rows = [
        {
            "name": name,
            "config": f"sky.{registry.providers[name].__name__}",
            "package": registry.provider_owner[name],
        }
        for name in sorted(registry.providers)
    ]
    if out.as_json or out.rich:
        columns = [("name", "Name"), ("config", "Config"), ("package", "From")]
        out.tables([Table("providers", columns, rows)])
    else:  # the line format scripts have read since the first release
        for row in rows:
            print(f"{row['name']}\t{row['config']}\t(from {row['package']})", file=out.stream)
    return EXIT_OK


def _version() -> str:
    try:
        return version("skyward-core")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skyward",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"skyward {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    offers.add_parser(commands)
    ls.add_parser(commands)
    down.add_parser(commands)
    doctor.add_parser(commands)
    providers = commands.add_parser("providers", help="list installed providers")
    providers.set_defaults(run=_cmd_providers)
    completion.add_parser(commands, parser)
    for sub in commands.choices.values():
        if sub.prog.split()[-1] != "completion":
            sub.add_argument("--json", action="store_true", help="one JSON document on stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    out = Output(as_json=getattr(options, "json", False))
    try:
        result: int = options.run(options, out)
    except KeyboardInterrupt:
        out.note("skyward: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `skyward ls | head`: the reader left, nothing to say
        sys.stderr.close()
        return EXIT_OK
    return result
