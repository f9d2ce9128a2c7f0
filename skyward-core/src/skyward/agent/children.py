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
import signal
import sys
import time
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
    if os.path.isdir("/proc/self"):
        _stop_predecessors_proc(marker)
        return
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


def _stop_predecessors_proc(marker: str) -> None:
    """:func:`stop_predecessors` from ``/proc``, without psutil: every agent runs this
    before it is ready, and importing psutil cost more than the scan itself (16 agents
    starting at once on a small machine pay it 16 times)."""
    ancestors = _ancestors()
    needle = f"\0{NODE_MARKER_ENV}={marker}\0".encode()
    uid = os.getuid()
    leftovers: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in ancestors:
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            with open(f"/proc/{entry.name}/environ", "rb") as file:
                environ = file.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in b"\0" + environ + b"\0":
            leftovers.append(int(entry.name))
    for pid in leftovers:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 3
    while leftovers and time.monotonic() < deadline:
        # Not ours to reap: a killed process that lingers as a zombie counts as gone.
        leftovers = [pid for pid in leftovers if _alive(pid)]
        if leftovers:
            time.sleep(0.01)


def _ancestors() -> set[int]:
    """This process and its ancestors (``/proc/<pid>/stat``'s parent chain)."""
    found = {os.getpid()}
    pid = os.getppid()
    while pid > 0 and pid not in found:
        found.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            break
        pid = int(stat.rsplit(b")", 1)[1].split()[1])
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie has finished: its state is ``Z``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


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
