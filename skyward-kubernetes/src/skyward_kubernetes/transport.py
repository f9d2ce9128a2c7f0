"""``KubeTransport``: bootstrap a pod, start its agent and tunnel to it, through the API.

The same bootstrap as core's ``SSHTransport`` (:func:`skyward.remote_shell.bootstrap_node`:
uv when the platform matches, wheels once per fingerprint, ``Image.bootstrap()`` through
``sh -s`` on stdin), this class being the remote shell, over ``pods/exec`` instead of an
SSH session; the agent starts with its environment on stdin, and ``pods/portforward`` to
its loopback port replaces a ``direct-tcpip`` channel. No sshd in the image, no port
opened.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skyward.errors import ProvisioningError
from skyward.messages import READY_PREFIX
from skyward.provider import AgentConfig, AgentEndpoint, BootstrapReporter, Stream
from skyward.remote_shell import HOME, bootstrap_node
from skyward.ssh.transport import stop_group_command
from skyward_kubernetes.api import KubeAPIError, KubeClient
from skyward_kubernetes.streams import ExecResult, exec_command, open_port_forward

if TYPE_CHECKING:
    from skyward.image import Image
    from skyward.spec import ComputeSpec

__all__ = ["KubeTransport"]


class KubeTransport:
    """A :class:`~skyward.provider.NodeTransport` for one pod."""

    def __init__(
        self,
        client: KubeClient,
        pod: str,
        *,
        pool_id: str,
        name: str,
        spec: ComputeSpec | None = None,
        agent_timeout: float = 60.0,
    ) -> None:
        self.client = client
        self.pod = pod
        self.pool_id = pool_id
        self.name = name
        self.spec = spec
        self.agent_timeout = agent_timeout
        self.python = ""
        self.endpoint: AgentEndpoint | None = None
        self.v5: bool | None = None
        """Whether the server closes stdin (v5.channel.k8s.io); learned on first exec."""

    @property
    def workdir(self) -> str:
        return f"{HOME}/pools/{self.pool_id}/{self.name}"

    def _fail(self, message: str) -> ProvisioningError:
        return ProvisioningError("kubernetes", f"pod {self.pod}: {message}")

    def run(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        on_line: Callable[[str], None] | None = None,
        timeout: float | None = None,
        until: Callable[[bytes], bool] | None = None,
    ) -> ExecResult:
        """``sh -c command`` in the container's home directory; output merged.

        Without v5 stdin is never closed, so ``head -c <length>`` ends it.
        """
        if stdin is not None and self.v5 is None:
            self.run("true")
        if stdin is not None and not self.v5:
            command = f"head -c {len(stdin)} | {{ {command}\n}}"
        pending = b""

        def on_output(chunk: bytes) -> None:
            nonlocal pending
            if on_line is None:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                on_line(line.decode(errors="replace").rstrip("\r"))

        result = exec_command(
            self.client,
            self.pod,
            # stderr joins stdout in the shell, so lines stay whole and in order.
            ["sh", "-c", f'cd "$HOME" && {{ {command}\n}} 2>&1'],
            stdin=stdin,
            on_output=on_output,
            timeout=timeout,
            until=until,
        )
        if pending and on_line is not None:
            on_line(pending.decode(errors="replace"))
        self.v5 = result.protocol.startswith("v5")
        return result

    def upload(self, files: list[Path], remote_dir: str) -> None:
        """Files into ``remote_dir`` (created if missing) as one tar stream over exec."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for path in files:
                archive.add(str(path), arcname=path.name)
        quoted = shlex.quote(remote_dir)
        result = self.run(f"mkdir -p {quoted} && tar xf - -C {quoted}", stdin=buffer.getvalue())
        if result.code != 0:
            raise self._fail(f"upload to {remote_dir} failed: {result.output[-2000:]!r}")

    # -- bootstrap --------------------------------------------------------------------

    def bootstrap(self, image: Image, reporter: BootstrapReporter) -> None:
        self.python = bootstrap_node(self, image, reporter, spec=self.spec, fail=self._fail)

    # -- the agent --------------------------------------------------------------------

    def start_agent(self, config: AgentConfig) -> AgentEndpoint:
        if not self.python:
            raise self._fail("start_agent called before bootstrap")
        if self.endpoint is not None:  # a restart: the pod may be the one that ended
            ended = self.pod_end()
            if ended is not None:
                raise self._fail(f"the pod has ended ({ended}); no agent can start in it")
        argv = " ".join(shlex.quote(a) for a in config.argv())
        command = (
            f"mkdir -p {self.workdir} && cd {self.workdir} && "
            f"exec {shlex.quote(self.python)} -m skyward.agent {argv} --env-stdin 2>&1"
        )
        line = config.stdin_line()  # the pool key and the environment, never argv

        def ready(output: bytes) -> bool:
            at = output.find(READY_PREFIX.encode())
            return at >= 0 and b"\n" in output[at:]

        # The env line needs no EOF (the agent reads one line), so no length prefix either.
        result = exec_command(
            self.client,
            self.pod,
            ["sh", "-c", f'cd "$HOME" && {command}'],
            stdin=line,
            timeout=self.agent_timeout,
            until=ready,
        )
        for text in result.output.decode(errors="replace").splitlines():
            if text.startswith(READY_PREFIX):
                _, port, pid = text.split()
                self.endpoint = AgentEndpoint(port=int(port), pid=int(pid))
                return self.endpoint
        output = result.output.decode(errors="replace")[-4000:]
        raise self._fail(f"the node agent did not start:\n{output}")

    def open_stream(self, endpoint: AgentEndpoint) -> Stream:
        """A port-forward to the agent. A pod that has ended (crashed, evicted, deleted,
        past its deadline) answers no port-forward again: that is reported as a refusal,
        so the client tries to start a new agent, which :meth:`start_agent` refuses at
        once naming how the pod ended, instead of retrying until the heartbeat timeout."""
        try:
            return open_port_forward(self.client, self.pod, endpoint.port)
        except ConnectionRefusedError:
            raise
        except Exception as error:
            ended = self.pod_end()
            if ended is not None:
                raise ConnectionRefusedError(f"pod {self.pod} has ended: {ended}") from error
            raise

    def pod_end(self) -> str | None:
        """How the pod ended (deleted, Succeeded or Failed and why), or None while it may
        still run (or when the API cannot tell)."""
        try:
            pod = self.client.get(self.client.ns_path("pods", self.pod))
        except KubeAPIError as error:
            return "deleted" if error.status == 404 else None
        except Exception:
            return None
        status = pod.get("status") or {}
        if pod["metadata"].get("deletionTimestamp"):
            return "being deleted"
        phase = status.get("phase")
        if phase not in ("Succeeded", "Failed"):
            return None
        states = [
            (c.get("state") or {}).get("terminated") for c in status.get("containerStatuses") or []
        ]
        terminated: dict[str, Any] = next((t for t in states if t), {})
        reason = status.get("reason") or terminated.get("reason") or ""
        code = terminated.get("exitCode")
        return (
            f"{phase}"
            + (f" ({reason})" if reason else "")
            + (f", exit code {code}" if code is not None else "")
        )

    def agent_exit_cause(self) -> str | None:
        """Why the agent stopped, as far as the cluster tells: the pod's end."""
        ended = self.pod_end()
        return f"the pod {ended}" if ended else None

    def close(self) -> None:
        """Stop the agent (if still running) and remove this pool's directory; keep caches."""
        stop = ""
        if self.endpoint is not None and self.endpoint.pid:
            pid = self.endpoint.pid
            stop = f"{stop_group_command(pid)}; "  # the same dash-proof kill as over SSH
        pool_dir = f"{HOME}/pools/{self.pool_id}"
        # The pod may be gone already; its deadline and the agent's watchdog remain.
        with contextlib.suppress(Exception):
            self.run(f"{stop}rm -rf {self.workdir}; rmdir {pool_dir} 2>/dev/null; true", timeout=30)
