"""Everything a node's tasks start is stopped with the node, wherever it hid.

Tasks start daemons, children in sessions of their own, double forks. The agent makes
itself a child subreaper, so orphans of its descendants become its children instead of
init's, and marks its environment with ``SKYWARD_NODE=<pool>/<node>``, which every
descendant inherits; on the way out it kills both sets. A restarted agent first stops
what its dead predecessor left behind (the same marker).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

__all__ = [
    "NODE_MARKER_ENV",
    "become_subreaper",
    "kill_descendants",
    "kill_tree",
    "stop_predecessors",
]

NODE_MARKER_ENV = "SKYWARD_NODE"
"""``<pool>/<node>`` in the environment of everything an agent starts."""
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphans of our descendants (daemons, double forks) become our children instead of
    init's, so :func:`_kill_descendants` still finds them. Linux only; a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def kill_descendants() -> None:
    """Kill every process a task started, in whatever session or group it put itself,
    and whatever a previous agent of the same node left behind."""
    import psutil

    me = os.getpid()
    marker = os.environ.get(NODE_MARKER_ENV)
    victims: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        victims.update((c.pid, c) for c in psutil.Process(me).children(recursive=True))
    if marker:
        victims.update((p.pid, p) for p in _marked_processes(marker) if p.pid != me)
    for victim in victims.values():
        with contextlib.suppress(psutil.Error):
            victim.kill()
    psutil.wait_procs(list(victims.values()), timeout=3)


def _marked_processes(marker: str) -> list[Any]:
    """This user's processes whose environment carries ``marker`` (inherited from an
    agent of this node, unless a process scrubbed its environment)."""
    import psutil

    uid = os.getuid()
    found = []
    for process in psutil.process_iter(["uids"]):
        try:
            if process.info["uids"] is None or process.info["uids"].real != uid:
                continue
            if process.environ().get(NODE_MARKER_ENV) == marker:
                found.append(process)
        except psutil.Error:
            continue
    return found


def stop_predecessors(marker: str) -> None:
    """A restarted agent first stops what the dead one of the same node left running."""
    import psutil

    me = os.getpid()
    ancestors = {me}
    with contextlib.suppress(psutil.Error):
        ancestors.update(p.pid for p in psutil.Process(me).parents())
    leftovers = [p for p in _marked_processes(marker) if p.pid not in ancestors]
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(leftovers, timeout=3)


def kill_tree(pid: int) -> None:
    """Kill everything below process ``pid`` (a worker past a call's timeout, or one whose
    socket broke). ``pid`` itself is left to its parent to kill and reap, which must see
    its exit status."""
    import psutil

    try:
        below = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return
    for process in below:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(below, timeout=3)
