"""``skyward doctor``: is this machine ready to run pools, and on which providers?

For each installed provider: whether credentials are found, whether they are valid, and
whether they are allowed to do what a pool does (providers implementing
:class:`~skyward.provider.AccessChecker` say call by call, AWS with its identity and dry
runs; the others answer one read call). Then the local prerequisites: Python, uv, the SSH
agent and keys, known_hosts. Each failure says how to fix it.

Exit status: 0 when nothing a pool needs is missing, 1 otherwise. A provider with no
credentials at all is "not set up", which fails only when it was named with ``--provider``
(most people use one cloud, not all of them); credentials found but rejected or not
allowed always fail.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from skyward.cli import providers as chosen
from skyward.cli.output import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Output, Table, help_text
from skyward.provider import AccessCheck, AccessChecker

__all__ = ["add_parser", "local_checks", "run"]

COLUMNS = [
    ("status", "Status"),
    ("scope", "For"),
    ("check", "Check"),
    ("detail", "Found"),
    ("fix", "Fix"),
]
MIN_PYTHON = (3, 11)


def _row(scope: str, check: AccessCheck, *, warn_only: bool = False) -> dict[str, Any]:
    if check.ok:
        status = "ok"
    elif check.required and not warn_only:
        status = "fail"
    else:
        status = "warn"
    return {
        "scope": scope,
        "check": check.name,
        "status": status,
        "ok": check.ok,
        "required": check.required,
        "detail": check.detail,
        "fix": "" if check.ok else check.fix,
    }


def _python() -> AccessCheck:
    found = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info[:2] >= MIN_PYTHON
    return AccessCheck(
        "python",
        ok,
        f"{found} at {sys.executable}",
        "Install Python 3.11 or newer (uv python install 3.12)",
    )


def _uv() -> AccessCheck:
    try:
        import uv

        path: str | None = uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        path = shutil.which("uv")
    return AccessCheck(
        "uv",
        path is not None,
        path or "not found",
        "pip install uv (nodes are bootstrapped with uv; the client uses it to build wheels)",
    )


def _ssh_agent() -> AccessCheck:
    sock = os.environ.get("SSH_AUTH_SOCK")
    fix = "Start one (eval $(ssh-agent)) and add a key (ssh-add); only the SSH provider needs it"
    if not sock:
        return AccessCheck("ssh-agent", False, "SSH_AUTH_SOCK is not set", fix, required=False)
    try:
        import paramiko

        keys = paramiko.Agent().get_keys()
    except Exception as error:
        return AccessCheck("ssh-agent", False, f"cannot talk to {sock}: {error}", fix, False)
    if not keys:
        return AccessCheck("ssh-agent", False, "running, holds no key", "ssh-add", required=False)
    return AccessCheck("ssh-agent", True, f"{len(keys)} key(s)", required=False)


def _ssh_keys(home: Path) -> AccessCheck:
    names = ("id_ed25519", "id_ecdsa", "id_rsa")
    found = [str(home / ".ssh" / n) for n in names if (home / ".ssh" / n).is_file()]
    return AccessCheck(
        "ssh keys",
        bool(found),
        ", ".join(found) or "no ~/.ssh/id_ed25519, id_ecdsa or id_rsa",
        "ssh-keygen -t ed25519 (the SSH provider logs in with it; clouds get a key per pool)",
        required=False,
    )


def _known_hosts(home: Path) -> AccessCheck:
    path = home / ".ssh" / "known_hosts"
    if not path.is_file():
        return AccessCheck(
            "known_hosts",
            False,
            f"{path} does not exist",
            "ssh once to each of your own hosts (or ssh-keyscan HOST >> ~/.ssh/known_hosts); "
            "only the SSH provider reads it",
            required=False,
        )
    if not os.access(path, os.R_OK):
        return AccessCheck(
            "known_hosts", False, f"{path} is not readable", f"chmod u+r {path}", False
        )
    entries = sum(1 for line in path.read_text(errors="replace").splitlines() if line.strip())
    return AccessCheck("known_hosts", True, f"{path}: {entries} entr(ies)", required=False)


def local_checks(home: Path | None = None) -> list[AccessCheck]:
    home = home or Path.home()
    return [_python(), _uv(), _ssh_agent(), _ssh_keys(home), _known_hosts(home)]


def _provider_checks(name: str, options: argparse.Namespace, named: bool) -> list[dict[str, Any]]:
    try:
        provider = chosen.build(name, options)
    except chosen.CannotUse as error:
        check = AccessCheck("credentials", False, "not set up", str(error))
        return [_row(name, check, warn_only=not named)]
    rows = [_row(name, AccessCheck("credentials", True, "found"))]
    if isinstance(provider, AccessChecker):
        try:
            return rows + [_row(name, c) for c in provider.check_access()]
        except Exception as error:
            check = AccessCheck("access", False, f"{type(error).__name__}: {error}", "see above")
            return [*rows, _row(name, check)]
    try:
        provider.list_by_tag()
    except Exception as error:
        check = AccessCheck(
            "read call",
            False,
            f"{type(error).__name__}: {error}",
            "Check the credentials are valid and allowed to list machines",
        )
        return [*rows, _row(name, check)]
    return [*rows, _row(name, AccessCheck("read call", True, "listed machines"))]


def run(options: argparse.Namespace, out: Output) -> int:
    asked: list[str] = options.provider
    try:
        names = chosen.names(asked)
    except chosen.UnknownProvider as error:
        out.note(f"skyward doctor: {error}")
        return EXIT_USAGE
    rows = [_row("local", c) for c in local_checks()]
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as threads:
        futures = [threads.submit(_provider_checks, n, options, n in asked) for n in names]
        for future in futures:
            rows += future.result()
    failed = [r for r in rows if r["status"] == "fail"]
    ready = sorted(
        {r["scope"] for r in rows if r["check"] == "credentials" and r["ok"]}
        - {r["scope"] for r in failed}
    )
    out.tables([Table("checks", COLUMNS, rows)], {"ok": not failed, "ready_providers": ready})
    if not out.as_json:
        if failed:
            out.note(f"skyward doctor: {len(failed)} problem(s); each row says how to fix it")
        else:
            out.note(f"skyward doctor: ready; providers set up: {', '.join(ready) or 'none'}")
    return EXIT_FAILED if failed else EXIT_OK


def add_parser(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor",
        help="check credentials, permissions and local prerequisites",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    doctor.add_argument("--provider", action="append", default=[], help="only this provider")
    doctor.add_argument("--region", default=None, help="region to check (AWS)")
    doctor.add_argument("--host", action="append", default=[], help=argparse.SUPPRESS)
    doctor.set_defaults(run=run)
