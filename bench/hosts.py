"""SSH test hosts for the benchmarks, and servers run on them as the host's user.

The orchestrator either starts a :class:`tests.ssh_hosts.HostFarm` (real sshd processes
on 127.0.0.11, .12, ... each as its own unix user) or, when ``SKYWARD_BENCH_SSH_HOSTS``
names a JSON file, uses hosts somebody else started (the pytest session that runs the
quick benchmark holds the farm's lock, so it hands its hosts over). Drivers receive the
hosts as plain dicts (``HostInfo``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

from bench.common import BENCH

HOSTS_ENV = "SKYWARD_BENCH_SSH_HOSTS"
STAGE = ".skyward-bench"  # in the host user's home: floor_server.py and cloudpickle
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"


class HostInfo(TypedDict):
    user: str
    address: str
    port: int
    home: str
    key: str
    known_hosts: str


class Hosts:
    """Hosts for one run: from the environment, or a farm this process owns."""

    def __init__(self, wanted: int, state_dir: Path) -> None:
        self.farm: Any = None
        self.hosts: list[HostInfo] = []
        given = os.environ.get(HOSTS_ENV)
        if given:
            data = json.loads(Path(given).read_text())
            self.hosts = [
                HostInfo(
                    user=h["user"],
                    address=h["address"],
                    port=int(h["port"]),
                    home=h["home"],
                    key=data["key"],
                    known_hosts=data["known_hosts"],
                )
                for h in data["hosts"]
            ][:wanted]
        else:
            from tests.ssh_hosts import ClientKey, HostFarm

            key = ClientKey.create(state_dir / "client-key")
            self.farm = HostFarm(key)
            started = self.farm.ensure(wanted)
            known = self.farm.known_hosts_file(state_dir / "known_hosts")
            self.hosts = [
                HostInfo(
                    user=h.user,
                    address=h.address,
                    port=h.port,
                    home=str(h.home),
                    key=str(key.private_path),
                    known_hosts=str(known),
                )
                for h in started
            ]
        for host in self.hosts:
            stage(host)

    def stop(self) -> None:
        if self.farm is not None:
            self.farm.stop()
            self.farm = None


def host_python() -> str:
    """The interpreter servers on a host run under: the host's own Python of the client's
    minor version (what Skyward's node venvs are built from), else the client's."""
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{minor}", f"/usr/local/bin/{minor}"):
        if os.access(candidate, os.X_OK):
            return candidate
    return os.path.realpath(sys.executable)


def stage(host: HostInfo) -> None:
    """Copy floor_server.py and cloudpickle into ``~/.skyward-bench`` of the host user."""
    import cloudpickle

    target = Path(host["home"]) / STAGE
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy2(BENCH / "floor_server.py", target / "floor_server.py")
    shutil.copytree(
        Path(cloudpickle.__file__).parent,
        target / "cloudpickle",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    entry = pwd.getpwnam(host["user"])
    for path in [target, *target.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _ready_port(process: subprocess.Popen[str], timeout: float = 30.0) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("FLOOR-READY"):
            return int(line.split()[1])
        if not line and process.poll() is not None:
            break
    raise RuntimeError(f"floor server did not start (exit {process.poll()})")


def start_local_server(mode: str) -> tuple[subprocess.Popen[str], int]:
    """A floor server in another process on this machine, under the client's Python."""
    process = subprocess.Popen(
        [sys.executable, str(BENCH / "floor_server.py"), mode],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    return process, _ready_port(process)


def start_remote_server(
    host: HostInfo, mode: str, bind: str = "127.0.0.1"
) -> tuple[subprocess.Popen[str], int]:
    """A floor server on ``host``, run as the host's user (``runuser``), bound to ``bind``
    (the host's loopback by default: reachable only through SSH, like Skyward's agent)."""
    home = host["home"]
    env = {
        "HOME": home,
        "USER": host["user"],
        "LOGNAME": host["user"],
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": f"{home}/{STAGE}",
    }
    command = [RUNUSER, "-u", host["user"], "--", host_python()]
    command += [f"{home}/{STAGE}/floor_server.py", mode, "--bind", bind]
    process = subprocess.Popen(
        command, cwd=home, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    return process, _ready_port(process)


def stop_server(process: subprocess.Popen[str] | None) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def ssh_command(host: HostInfo, *remote: str, extra: Sequence[str] = ()) -> list[str]:
    """OpenSSH with the test key and known_hosts, ignoring every local ssh config."""
    from tests.ssh_hosts import openssh_command

    return openssh_command(
        host["user"],
        host["address"],
        host["port"],
        host["key"],
        host["known_hosts"],
        *remote,
        extra=extra,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_forward(host: HostInfo, remote_port: int) -> tuple[subprocess.Popen[bytes], int]:
    """``ssh -N -L`` from a free local port to ``127.0.0.1:remote_port`` on the host."""
    local = free_port()
    forward = f"127.0.0.1:{local}:127.0.0.1:{remote_port}"
    command = ssh_command(host, extra=["-N", "-o", "ExitOnForwardFailure=yes", "-L", forward])
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ssh -L exited ({process.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", local), timeout=1):
                return process, local
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("ssh -L forward did not come up")


def run_as(host: HostInfo, command: str) -> None:
    """Run a shell command as the host's user (no check)."""
    subprocess.run(
        [RUNUSER, "-u", host["user"], "--", "sh", "-c", command],
        cwd=host["home"],
        env={"HOME": host["home"], "PATH": "/usr/local/bin:/usr/bin:/bin"},
        capture_output=True,
        check=False,
        timeout=120,
    )


def connect_socket(address: str, port: int) -> socket.socket:
    sock = socket.create_connection((address, port), timeout=30)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
