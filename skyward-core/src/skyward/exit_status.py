"""Why a node agent or worker process ended, in words (shared by client and node)."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

from skyward.messages import EXIT_REASON_FILE

__all__ = ["describe_exit", "oom_kills"]


def oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has killed in this cgroup
    (cgroup v2 ``memory.events``); ``None`` where that cannot be read."""
    try:
        line = Path("/proc/self/cgroup").read_text().strip().splitlines()[0]
        events = Path("/sys/fs/cgroup") / line.split("::", 1)[1].lstrip("/") / "memory.events"
        for entry in events.read_text().splitlines():
            name, _, value = entry.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, IndexError, ValueError):
        return None
    return None


def describe_exit(
    returncode: int | None, workdir: Path | None = None, oom_before: int | None = None
) -> str | None:
    """Why a process ended: its own reason when it stopped on purpose (the
    ``exit-reason`` file an agent writes in ``workdir``), else its exit code or signal,
    and whether the out-of-memory killer struck since ``oom_before`` was read."""
    if returncode is None:
        return None
    if workdir is not None:
        with contextlib.suppress(OSError):
            code, _, reason = (workdir / EXIT_REASON_FILE).read_text().strip().partition(" ")
            if code == str(returncode) and reason:
                return reason
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        text = f"killed by {name}"
        now = oom_kills()
        struck = oom_before is not None and now is not None and now > oom_before
        if sig == signal.SIGKILL and struck:
            text += "; the out-of-memory killer struck: it most likely ran out of memory"
        return text
    return f"exited with code {returncode}"
