"""``SSHTransport``: bootstrap a machine over SSH, start its agent, tunnel to it.

Every remote provider uses this one path:

1. one probe command tells the machine's platform, whether uv and which wheel sets are
   there, and which pool directories dead clients left (swept); when the platform
   matches the client's, the client's own ``uv`` binary is uploaded (no download on the
   node);
2. Skyward's wheels (:mod:`skyward.wheels`, fingerprinted once per pool) are uploaded
   once per fingerprint;
3. ``Image.bootstrap()`` (plus plugin steps) runs through ``sh -s`` on stdin — nothing is
   left on disk, and it holds no secrets; its ``::skyward:`` markers become progress
   events and every other line a log line;
4. the agent starts in ``~/.skyward/pools/<pool>/<name>``, bound to 127.0.0.1, with the
   functions' environment written to its stdin (never argv, never a file);
5. the client reaches it through a ``direct-tcpip`` channel of the same connection.
"""

from __future__ import annotations

import select
import shlex
import time
from typing import TYPE_CHECKING

import paramiko

from skyward.errors import ProvisioningError
from skyward.messages import EXIT_REASON_FILE, READY_PREFIX
from skyward.provider import AgentConfig, AgentEndpoint, BootstrapReporter, Stream
from skyward.remote_shell import HOME, bootstrap_node, probe_node
from skyward.ssh.connection import SSHConnection
from skyward.ssh.leftovers import SWEEP_AGE, parse_scan, scan_script, sweep_dead_pool_dirs

if TYPE_CHECKING:
    from skyward.image import Image
    from skyward.spec import ComputeSpec

__all__ = ["SSHTransport", "stop_group_command"]

# How long an agent's group gets to exit on SIGTERM before SIGKILL, seconds.
STOP_GRACE = 2.0
# How long closing a transport may spend reconnecting to stop the agent, seconds.
CLOSE_CONNECT_TIMEOUT = 10.0


def stop_group_command(pid: int, grace: float = STOP_GRACE) -> str:
    """A command that stops process group ``pid`` (an agent and everything it started):
    SIGTERM, up to ``grace`` seconds for it to exit, then SIGKILL.

    ``kill -TERM -- -PGID`` is what most write, but dash (Debian's ``/bin/sh``, the
    login shell of many service users) reads ``--`` as a pid and kills nothing;
    ``kill -TERM -PGID`` means the same to dash, bash, zsh and busybox. It runs under
    ``sh -c`` so a login shell that is not POSIX (fish, csh) still parses it.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
        raise ValueError(f"not a process group id: {pid!r}")
    rounds = max(1, round(grace / 0.1))
    script = (
        f"kill -TERM -{pid} 2>/dev/null || kill -TERM {pid} 2>/dev/null; i=0; "
        f"while [ $i -lt {rounds} ] && kill -0 -{pid} 2>/dev/null; do sleep 0.1; i=$((i+1)); done; "
        f"kill -KILL -{pid} 2>/dev/null; kill -KILL {pid} 2>/dev/null; true"
    )
    return f"sh -c {shlex.quote(script)}"


class SSHTransport:
    """A :class:`~skyward.provider.NodeTransport` over one SSH connection."""

    def __init__(
        self,
        connection: SSHConnection,
        *,
        pool_id: str,
        name: str,
        spec: ComputeSpec | None = None,
        ttl: int = 0,
        agent_timeout: float = 60.0,
    ) -> None:
        self.connection = connection
        self.pool_id = pool_id
        self.name = name
        self.spec = spec
        self.ttl = ttl
        self.agent_timeout = agent_timeout
        self.python = ""
        self.endpoint: AgentEndpoint | None = None
        self._starting = ""

    @property
    def workdir(self) -> str:
        return f"{HOME}/pools/{self.pool_id}/{self.name}"

    @property
    def provider(self) -> str:
        return self.connection.provider

    def _fail(self, message: str) -> ProvisioningError:
        return ProvisioningError(self.provider, f"{self.connection.host.target}: {message}")

    # -- bootstrap --------------------------------------------------------------------

    def bootstrap(self, image: Image, reporter: BootstrapReporter) -> None:
        self.connection.ensure()  # a host that cannot be reached fails here, once
        probe = probe_node(self.connection, extra=scan_script(SWEEP_AGE))
        # What SIGKILLed clients left here (pool directories without an agent, untouched
        # for 10 minutes): found by the probe, and never a reason to fail.
        for name in sweep_dead_pool_dirs(self.connection, parse_scan(probe.output)):
            reporter.log(f"removed {HOME}/pools/{name}, left by a pool whose agents are gone")
        self.python = bootstrap_node(
            self.connection,
            image,
            reporter,
            spec=self.spec,
            fail=self._fail,
            ttl=self.ttl,
            pool_id=self.pool_id,
            probe=probe,
        )

    # -- the agent --------------------------------------------------------------------

    def start_agent(self, config: AgentConfig) -> AgentEndpoint:
        if not self.python:
            raise self._fail("start_agent called before bootstrap")
        argv = " ".join(shlex.quote(a) for a in config.argv())
        # What close() kills by, should it run before the agent says its pid: the node's
        # and the pool's arguments, in the order the agent's command line has them (the
        # bracket keeps the pattern from matching the shell that runs pkill).
        self._starting = f"[s]kyward[.]agent --node={config.node} .*--job-id={config.job_id} "
        command = (
            f"mkdir -p {self.workdir} && cd {self.workdir} && "
            f"exec {shlex.quote(self.python)} -m skyward.agent {argv} --env-stdin"
        )
        channel = self.connection.open_session()
        try:
            channel.set_combine_stderr(True)
            channel.exec_command(command)
            channel.sendall(config.stdin_line())
            channel.shutdown_write()
            port, pid, output = _read_ready(channel, self.agent_timeout)
        finally:
            channel.close()
        if port == 0:
            raise self._fail(f"the node agent did not start:\n{output}")
        self.endpoint = AgentEndpoint(port=port, pid=pid)
        return self.endpoint

    def open_stream(self, endpoint: AgentEndpoint) -> Stream:
        try:
            return self.connection.open_tunnel(endpoint.port)
        except paramiko.ChannelException as error:
            # sshd reached the machine but nothing listens there: the agent is gone.
            raise ConnectionRefusedError(f"agent port {endpoint.port}: {error}") from error

    def agent_exit_cause(self) -> str | None:
        """Why the agent stopped, when it said so (expiry, shutdown) before exiting."""
        result = self.connection.run(
            f"cat {self.workdir}/{EXIT_REASON_FILE} 2>/dev/null", timeout=10
        )
        _code, _, reason = result.output.strip().partition(" ")
        return reason or None

    def close(self) -> None:
        """Stop the agent (if still running) and remove this pool's directory; keep caches."""
        stop = ""
        if self.endpoint is not None and self.endpoint.pid:
            stop = f"{stop_group_command(self.endpoint.pid)}; "
        elif self._starting:
            # Closed while the agent starts (another node failed): it has no pid yet here.
            stop = f"pkill -KILL -f -- {shlex.quote(self._starting)}; "
        pool_dir = f"{HOME}/pools/{self.pool_id}"
        try:
            if self.connection.failure is not None and not self.connection.active:
                return  # it could not be reached just now: nothing was started there
            # Reconnect only briefly: teardown (after Ctrl-C, say) must not wait a whole
            # connect_timeout for a host that has gone away.
            self.connection.ensure_by(
                time.monotonic() + min(CLOSE_CONNECT_TIMEOUT, self.connection.connect_timeout)
            )
            self.connection.run(
                f"{stop}rm -rf {self.workdir}; rmdir {pool_dir} 2>/dev/null; true", timeout=30
            )
        except Exception:
            pass  # unreachable now: the agent's watchdog stops it, down/next open sweep the dir
        finally:
            self.connection.close()


def _read_ready(channel: paramiko.Channel, timeout: float) -> tuple[int, int, str]:
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([channel], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            continue
        chunk = channel.recv(4096)
        if not chunk:
            break
        buffer += chunk
        for line in buffer.decode(errors="replace").splitlines():
            if line.startswith(READY_PREFIX):
                _, port, pid = line.split()
                return int(port), int(pid), ""
    return 0, 0, buffer.decode(errors="replace")[-4000:]
