"""Pool directories of ``sky.Local`` whose client died, and how to tell them apart.

Every pool directory holds a marker naming its pool and its client process (pid and start
time, so a reused pid is not mistaken for the client). A directory whose client is gone
belongs to nobody: a SIGKILLed client could not remove it, and nothing else would.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import psutil

__all__ = ["MARKER", "TEMP_PREFIX", "dead_pool_dirs", "write_pool_marker"]

MARKER = ".skyward-pool.json"
TEMP_PREFIX = "skyward-"


def _client_identity() -> dict[str, object]:
    me = psutil.Process()
    return {"client_pid": me.pid, "client_started": me.create_time()}


def write_pool_marker(root: Path, pool_id: str) -> None:
    (root / MARKER).write_text(json.dumps({"pool": pool_id, **_client_identity()}))


def _client_alive(pid: object, started: object) -> bool:
    if not isinstance(pid, int) or not isinstance(started, int | float):
        return False
    try:
        process = psutil.Process(pid)
        same = abs(process.create_time() - started) < 1
        return same and bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def dead_pool_dirs(parents: Iterable[Path]) -> list[tuple[Path, str]]:
    """(directory, pool id) of each marked pool directory directly under ``parents``
    that this user owns and whose client process is gone."""
    found: list[tuple[Path, str]] = []
    uid = os.getuid()
    for parent in parents:
        with contextlib.suppress(OSError):
            for child in parent.iterdir():
                if not child.name.startswith(TEMP_PREFIX):
                    continue  # a busy /tmp: only look inside what could be ours
                marker = child / MARKER
                try:
                    if child.is_symlink() or child.stat().st_uid != uid:
                        continue
                    data = json.loads(marker.read_text())
                except (OSError, ValueError):
                    continue
                if not isinstance(data, dict) or not isinstance(data.get("pool"), str):
                    continue
                if not _client_alive(data.get("client_pid"), data.get("client_started")):
                    found.append((child, data["pool"]))
    return found
