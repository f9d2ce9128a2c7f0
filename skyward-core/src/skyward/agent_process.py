"""Start a node agent as a local process, and connect to one on this machine.

Used by the ``Local`` provider, and public so that other providers that run nodes as local
processes (containers, test doubles, the example plugin in ``tests/``) need no core change.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from attrs import frozen

from skyward.errors import ProvisioningError
from skyward.messages import READY_PREFIX
from skyward.provider import AgentConfig, AgentEndpoint

__all__ = [
    "AgentProcess",
    "connect_endpoint",
    "connect_loopback",
    "start_agent_process",
    "stop_orphan_group",
    "stop_process_group",
]

POOL_ID_ENV = "SKYWARD_POOL_ID"
INSTANCE_ID_ENV = "SKYWARD_INSTANCE_ID"


@frozen
class AgentProcess:
    """A running agent process and where it listens."""

    process: subprocess.Popen[bytes]
    endpoint: AgentEndpoint


def start_agent_process(
    python: str,
    config: AgentConfig,
    *,
    cwd: Path,
    pool_id: str,
    instance_id: str,
    base_env: Mapping[str, str] | None = None,
    provider: str = "local",
    timeout: float = 60.0,
) -> AgentProcess:
    """Start ``python -m skyward.agent`` in its own session (its own process group).

    The functions' environment (``config.env``) goes into the process environment, and
    with the pool's key onto the agent's standard input; never onto the command line.
    Returns once the agent announced its port.
    """
    env = dict(os.environ if base_env is None else base_env)
    env.update(config.env)
    env[POOL_ID_ENV] = pool_id
    env[INSTANCE_ID_ENV] = instance_id
    env["PYTHONUNBUFFERED"] = "1"
    cwd.mkdir(parents=True, exist_ok=True)
    with open(cwd / "agent.stderr", "wb") as stderr:
        process = subprocess.Popen(
            [python, "-m", "skyward.agent", *config.argv()],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # an agent that died early says why below
            process.stdin.write(config.stdin_line())
        process.stdin.close()
        ready = _read_ready(process, timeout)
    except BaseException:
        stop_process_group(process)
        raise
    finally:
        assert process.stdout is not None
        process.stdout.close()
    if ready is None:
        tail = _tail(cwd / "agent.stderr")
        raise ProvisioningError(
            provider, f"the node agent exited with {process.returncode} before starting:\n{tail}"
        )
    port, pid = ready
    return AgentProcess(process, AgentEndpoint(port=port, pid=pid, path=config.unix_socket))


def _read_ready(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, int] | None:
    """``(port, pid)`` from the agent's ready line (port 0 on a unix socket); ``None``
    when it exited first."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                process.wait(timeout=10)
                return None
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                if line.startswith(READY_PREFIX):
                    _, port, pid = line.split()
                    return int(port), int(pid)
    raise ProvisioningError("local", f"the node agent did not start within {timeout:g}s")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def connect_loopback(port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to an agent on 127.0.0.1, tuned for small frames."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect_endpoint(endpoint: AgentEndpoint, timeout: float = 10.0) -> socket.socket:
    """A connection to a local agent: its unix socket when it has one, else its port."""
    if endpoint.path is None:
        return connect_loopback(endpoint.port, timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(endpoint.path)
    except FileNotFoundError as error:  # the agent is gone (it removes nothing, but a
        sock.close()  # restarted node's directory may be fresh)
        raise ConnectionRefusedError(str(error)) from error
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """Stop a process started in its own session, and everything it started."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    # Children may outlive a leader that already exited: clear the whole group.
    _signal_group(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=10)


def stop_orphan_group(pid: int, grace: float = 3.0) -> None:
    """Stop an agent this process did not start (found by an orphan sweep)."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
