"""What pools leave on an SSH host, found in one round trip: agents and node directories.

An agent is a process of the login user whose command line holds ``skyward.agent`` and
``--job-id=<pool>``; a node directory is ``~/.skyward/pools/<pool>``. A directory whose
pool has no live agent on the host belongs to a client that died (SIGKILL, power loss):
the agent's watchdog stopped it, and nothing else will ever remove the directory.
"""

from __future__ import annotations

import re
import shlex

from attrs import frozen

from skyward.ssh.connection import SSHConnection

__all__ = [
    "SWEEP_AGE",
    "HostScan",
    "parse_scan",
    "remove_pool_dirs",
    "scan_host",
    "scan_script",
    "sweep_dead_pool_dirs",
]

POOLS_DIR = ".skyward/pools"  # relative to the login directory, as the transport uses it
# A pool id as a directory name: anything else found there is not ours to remove.
_POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DIRS_MARK = "::skyward:dirs"
_NOW_MARK = "::skyward:now"
_PS_MARK = "::skyward:ps"
# Directories (with their mtime) first, then the processes: reading every process's
# command line is the costly part, and a pool opening needs it only when some directory
# is old enough to be swept (@OLDER@ seconds; -1: always). busybox ps has no -U: fall
# back to every process (only our own can be signalled anyway).
_SCAN = f"""\
now=$(date +%s); old=
echo {_DIRS_MARK}
for d in {POOLS_DIR}/*/; do
  [ -d "$d" ] || continue
  n=${{d%/}}; n=${{n##*/}}
  m=$(stat -c %Y "$d" 2>/dev/null || echo 0)
  printf '%s %s\\n' "$m" "$n"
  [ $((now - m)) -ge @OLDER@ ] && old=1
done
echo "{_NOW_MARK} $now"
if [ @OLDER@ -lt 0 ] || [ -n "$old" ]; then
  echo {_PS_MARK}
  ps -U "$(id -u)" -o pid=,args= 2>/dev/null || ps -o pid,args
fi
"""


def scan_script(older_than: float | None = None) -> str:
    """The shell script :func:`parse_scan` reads: every agent when ``older_than`` is
    ``None``, else agents only if some pool directory is at least that many seconds old
    (without one there is nothing to sweep)."""
    seconds = -1 if older_than is None else max(0, int(older_than))
    return _SCAN.replace("@OLDER@", str(seconds))


@frozen
class HostScan:
    """One host's agents (pid → pool id) and pool directories (name → mtime, epoch s)."""

    agents: dict[int, str]
    dirs: dict[str, int]
    now: int

    def dead_pool_dirs(self, older_than: float = 0.0, pool_id: str | None = None) -> list[str]:
        """Pool directories with no live agent, last changed ``older_than`` seconds ago
        or earlier (a grace for a pool whose agent is starting right now)."""
        live = set(self.agents.values())
        return sorted(
            name
            for name, mtime in self.dirs.items()
            if name not in live
            and (pool_id is None or name == pool_id)
            and self.now - mtime >= older_than
        )


def _sh(script: str) -> str:
    # The login shell runs the command line; sh -c makes it POSIX even under fish or csh.
    return f"sh -c {shlex.quote(script)}"


def scan_host(connection: SSHConnection) -> HostScan:
    """List the host's agents and pool directories (one command; raises if unreachable)."""
    return parse_scan(connection.run(_sh(scan_script()), timeout=30).output)


def parse_scan(output: str) -> HostScan:
    """What :func:`scan_script` printed (lines before its first mark are ignored, so it
    may follow other output in one command)."""
    agents: dict[int, str] = {}
    dirs: dict[str, int] = {}
    now = 0
    section = ""
    for line in output.splitlines():
        if line.startswith(_DIRS_MARK):
            section = "dirs"
        elif line.startswith(_PS_MARK):
            section = "ps"
        elif line.startswith(_NOW_MARK):
            value = line.split()[1:]
            now = int(value[0]) if value and value[0].isdigit() else 0
        elif section == "ps":
            pid, _, args = line.strip().partition(" ")
            if pid.isdigit() and "skyward.agent" in args and "--job-id=" in args:
                agents[int(pid)] = args.split("--job-id=", 1)[1].split()[0]
        elif section == "dirs":
            mtime, _, name = line.partition(" ")
            if mtime.isdigit() and _POOL_NAME.fullmatch(name):
                dirs[name] = int(mtime)
    return HostScan(agents=agents, dirs=dirs, now=now)


def remove_pool_dirs(connection: SSHConnection, names: list[str]) -> str:
    """``rm -rf`` the named pool directories; returns what went wrong ('' when nothing)."""
    names = [n for n in names if _POOL_NAME.fullmatch(n)]
    if not names:
        return ""
    paths = " ".join(shlex.quote(f"{POOLS_DIR}/{name}") for name in names)
    result = connection.run(_sh(f"rm -rf {paths}"), timeout=60)
    return "" if result.code == 0 else result.output.strip() or f"rm exited {result.code}"


SWEEP_AGE = 600.0
"""A pool directory without an agent is swept once it has not changed for this long (a
grace for a pool whose agent is starting right now)."""


def sweep_dead_pool_dirs(connection: SSHConnection, scan: HostScan | None = None) -> list[str]:
    """Remove pool directories whose agents are gone and that have not changed for
    :data:`SWEEP_AGE` seconds (what a pool opening on the host does, cheaply), from
    ``scan`` when the caller already ran :func:`scan_script` with that age. Returns the
    names removed; never raises."""
    try:
        if scan is None:
            scan = parse_scan(connection.run(_sh(scan_script(SWEEP_AGE)), timeout=30).output)
        dead = scan.dead_pool_dirs(SWEEP_AGE)
        if dead and not remove_pool_dirs(connection, dead):
            return dead
    except Exception:
        pass  # housekeeping: never the reason a pool fails to open
    return []
