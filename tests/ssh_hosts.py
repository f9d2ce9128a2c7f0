"""Real SSH test hosts: one ``sshd`` per host, each as its own unix user.

``HostFarm`` runs hosts on loopback addresses (``127.0.0.11``, ``.12``, ... port 2222), each
host being a unix user ``skyt<i>`` with its own home, an ed25519 host key and the client's
key in ``~/.ssh/authorized_keys``. ``NamespaceHost`` runs one more host inside a network
namespace the test creates (``169.254.213.2:2222`` behind a veth pair) so a test can cut the
link: a real partition.

Network rule: nothing here listens or sends anywhere but 127.0.0.0/8 and the link-local
/30 between the root namespace and a namespace created here (169.254.213.1 and .2).

Everything needs root. A process-wide lock file serialises test sessions on one machine:
two sessions would otherwise share the ``skyt*`` users and the 127.0.0.x:2222 ports. The
first session to take it also removes what a killed session left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psutil

SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
SFTP = "/usr/bin/sftp"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"
IP = shutil.which("ip") or "/usr/sbin/ip"
PRIVSEP_DIR = Path("/run/sshd")
FARM_PORT = 2222
FARM_FIRST_OCTET = 11  # hosts are 127.0.0.11, 127.0.0.12, ...
FARM_USER_PREFIX = "skyt"
NS_USER = "skytns"
NS_PREFIX = "skyns-"
VETH_PREFIX = "skv"
NS_ROOT_ADDRESS = "169.254.213.1"
NS_HOST_ADDRESS = "169.254.213.2"
NS_NETWORK = "169.254.213.0/30"
# never let traffic for the /30 take the default route, even while the veth is down
FALLBACK_ROUTE = ("unreachable", NS_NETWORK, "metric", "4213")
STATE_PREFIX = "skyward-sshd-"  # temp dirs holding host keys, configs, logs
LOCK_PATH = Path(tempfile.gettempdir()) / "skyward-test-hosts.lock"
LOCK_WAIT = 240.0
START_TIMEOUT = 10.0
USER_ENV_PATH = "/usr/local/bin:/usr/bin:/bin"

_FARM_USER = re.compile(rf"^{FARM_USER_PREFIX}\d+$")


# -- small helpers ------------------------------------------------------------------------


def _run(args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a root command quietly; a failure raises with its stderr."""
    result = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # dead, just not reaped yet
    except psutil.Error:
        return True


def _kill_processes(processes: Iterable[psutil.Process], timeout: float = 5.0) -> None:
    """SIGKILL ``processes`` and wait until each is dead (a zombie counts as dead)."""
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
            alive.append(process)
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        alive = [process for process in alive if not _gone(process)]
        if alive:
            time.sleep(0.01)


def _user_processes(user: str) -> list[psutil.Process]:
    """Every live process owned by ``user`` (including its ``sshd: user@...`` processes)."""
    found = []
    for process in psutil.process_iter(["username", "status"]):
        if process.info["username"] == user and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def kill_user_processes(user: str) -> None:
    """SIGKILL every process of ``user``, again until none is left (they may fork)."""
    for _ in range(20):
        processes = _user_processes(user)
        if not processes:
            return
        _kill_processes(processes)
    raise RuntimeError(f"processes of {user} keep coming back: {_user_processes(user)}")


def _port_open(address: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def write_known_hosts(path: Path, hosts: Iterable[SSHTestHost]) -> Path:
    """Write an OpenSSH known_hosts file naming ``hosts``; returns ``path``."""
    path.write_text("".join(host.known_hosts_line + "\n" for host in hosts))
    path.chmod(0o644)
    return path


def ssh_command(
    host: SSHTestHost, key: ClientKey, known_hosts: Path, *remote: str, extra: Sequence[str] = ()
) -> list[str]:
    """An OpenSSH client command line for ``host`` that ignores every local ssh config."""
    return openssh_command(
        host.user, host.address, host.port, key.private_path, known_hosts, *remote, extra=extra
    )


def openssh_command(
    user: str,
    address: str,
    port: int,
    key: str | Path,
    known_hosts: str | Path,
    *remote: str,
    extra: Sequence[str] = (),
) -> list[str]:
    """:func:`ssh_command` from plain values (the benchmarks pass hosts between processes)."""
    return [
        SSH,
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=5",
        "-i",
        str(key),
        "-p",
        str(port),
        *extra,
        f"{user}@{address}",
        *remote,
    ]


# -- the session lock and stale state --------------------------------------------------------


class _HostLock:
    """A lock file held while this process has any test host; counted, so nestable."""

    def __init__(self) -> None:
        self._count = 0
        self._file: int | None = None
        self._guard = threading.Lock()

    def acquire(self) -> None:
        with self._guard:
            if self._count == 0:
                fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
                deadline = time.monotonic() + LOCK_WAIT
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            os.close(fd)
                            raise RuntimeError(
                                f"another test session holds {LOCK_PATH} (SSH test hosts)"
                            ) from None
                        time.sleep(0.5)
                self._file = fd
                cleanup_stale_state()
            self._count += 1

    def release(self) -> None:
        with self._guard:
            if self._count == 0:
                return
            self._count -= 1
            if self._count == 0 and self._file is not None:
                fcntl.flock(self._file, fcntl.LOCK_UN)
                os.close(self._file)
                self._file = None


_LOCK = _HostLock()


def _is_test_user(name: str) -> bool:
    return bool(_FARM_USER.match(name)) or name == NS_USER


def cleanup_stale_state() -> None:
    """Remove what an earlier (killed) session left: sshds, user processes, namespaces.

    Only called with the lock held, so anything found belongs to no live session.
    """
    stale_sshd = []
    for process in psutil.process_iter(["name", "cmdline", "username"]):
        info = process.info
        cmdline = " ".join(info["cmdline"] or [])
        if info["name"] == "sshd" and f"/{STATE_PREFIX}" in cmdline:
            stale_sshd.append(process)
    _kill_processes(stale_sshd)
    for user in {p.info["username"] for p in psutil.process_iter(["username"])}:
        if user and _is_test_user(user):
            kill_user_processes(user)
    for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(NS_PREFIX):
            _delete_namespace(name)
    for line in _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            device = parts[1].strip().split("@")[0]
            if device.startswith(VETH_PREFIX):
                _run(["ip", "link", "del", device], check=False)
    _run(["ip", "route", "del", *FALLBACK_ROUTE], check=False)
    for stale in Path(tempfile.gettempdir()).glob(f"{STATE_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _delete_namespace(name: str) -> None:
    pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
    _kill_processes(psutil.Process(int(pid)) for pid in pids if pid.isdigit())
    _run(["ip", "netns", "del", name], check=False)


# -- keys and users -----------------------------------------------------------------------------


def _keygen(path: Path, comment: str) -> str:
    """Generate an ed25519 key pair at ``path``; returns the public line (type and key)."""
    _run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    path.chmod(0o600)
    kind, key = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"{kind} {key}"


@dataclass(frozen=True)
class ClientKey:
    """The client's ed25519 key pair (no passphrase)."""

    private_path: Path
    public_line: str

    @classmethod
    def create(cls, directory: Path | None = None) -> ClientKey:
        """Generate a key pair into ``directory`` (a new temp dir when ``None``)."""
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="skyward-client-key-"))
        directory.mkdir(parents=True, exist_ok=True)
        private = directory / "id_ed25519"
        return cls(private_path=private, public_line=_keygen(private, "skyward-test-client"))


def prepare_user(user: str, client_key: ClientKey) -> Path:
    """Create (or reuse) ``user`` with a clean home holding only the authorized key.

    Returns the home directory.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        _run(["useradd", "-m", "-s", "/bin/sh", user])
        entry = pwd.getpwnam(user)
    home = Path(entry.pw_dir)
    if home != Path("/home") / user:  # never wipe a home we did not expect
        raise RuntimeError(f"user {user} exists with unexpected home {home}")
    _run(["usermod", "-p", "*", "-s", "/bin/sh", user])  # unlocked, key login only
    kill_user_processes(user)
    home.mkdir(mode=0o700, exist_ok=True)
    for child in home.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text(client_key.public_line + "\n")
    for path, mode in ((home, 0o700), (ssh_dir, 0o700), (authorized, 0o600)):
        os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(mode)
    return home


def _sshd_config(user: str, address: str, port: int, host_key: Path, pid_file: Path) -> str:
    return "\n".join(
        [
            f"ListenAddress {address}:{port}",
            f"HostKey {host_key}",
            f"PidFile {pid_file}",
            "AuthorizedKeysFile .ssh/authorized_keys",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PermitRootLogin no",
            f"AllowUsers {user}",
            "AllowTcpForwarding yes",
            "X11Forwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            "Subsystem sftp internal-sftp",
            "MaxSessions 64",
            "MaxStartups 64",
            "ClientAliveInterval 0",
            "LogLevel VERBOSE",
            "",
        ]
    )


# -- hosts --------------------------------------------------------------------------------


@dataclass(eq=False)
class SSHTestHost:
    """One SSH host: a listening ``sshd`` that admits only ``user`` with the client key."""

    user: str
    address: str
    port: int
    home: Path
    host_key_public: str
    state_dir: Path = field(repr=False)
    netns: str | None = field(default=None, repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @classmethod
    def create(
        cls,
        user: str,
        address: str,
        port: int,
        client_key: ClientKey,
        state_dir: Path,
        netns: str | None = None,
    ) -> SSHTestHost:
        """Prepare the user, the host key and the config (sshd is not started)."""
        home = prepare_user(user, client_key)
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        host_key = state_dir / "ssh_host_ed25519_key"
        public = _keygen(host_key, f"{user}-host")
        host = cls(user, address, port, home, public, state_dir, netns)
        host.config_path.write_text(
            _sshd_config(user, address, port, host_key, state_dir / "sshd.pid")
        )
        return host

    # paths and names

    @property
    def config_path(self) -> Path:
        return self.state_dir / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "sshd.log"

    @property
    def target(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{name} {self.host_key_public}"

    @property
    def sshd_pid(self) -> int | None:
        """The pid of the listening sshd, or ``None`` when it is not running."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def running(self) -> bool:
        return self.sshd_pid is not None

    def _prefix(self) -> list[str]:
        return [IP, "netns", "exec", self.netns] if self.netns else []

    # the sshd

    def start(self) -> None:
        """Start the listening sshd (no-op when running); waits until it accepts TCP."""
        if self.running:
            return
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        PRIVSEP_DIR.chmod(0o755)
        command = [*self._prefix(), SSHD, "-D", "-f", str(self.config_path)]
        command += ["-E", str(self.log_path)]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _port_open(self.address, self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"sshd for {self.target} did not start; log tail:\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def stop(self, drop_sessions: bool = True) -> None:
        """Stop the listening sshd and, unless told otherwise, drop every live session.

        The user's own processes (a node agent, say) are left alone; see ``kill_processes``.
        """
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if drop_sessions:
            self.kill_sessions()

    def restart(self, drop_sessions: bool = False) -> None:
        """Restart the listening sshd; live sessions survive (as with ``systemctl restart``)."""
        self.stop(drop_sessions=drop_sessions)
        self.start()

    @contextlib.contextmanager
    def without_sftp(self, broken: bool = False) -> Iterator[None]:
        """Run this host's sshd without its ``Subsystem sftp`` line (as minimal and
        hardened servers do), or with one naming a server binary that does not exist
        (``broken``); the config and the sshd are restored afterwards."""
        original = self.config_path.read_text()
        kept = [line for line in original.splitlines(keepends=True) if "Subsystem" not in line]
        if broken:
            kept.append("Subsystem sftp /nonexistent/sftp-server\n")
        self.config_path.write_text("".join(kept))
        self.restart(drop_sessions=True)
        try:
            yield
        finally:
            self.config_path.write_text(original)
            self.restart(drop_sessions=True)

    def _session_processes(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self._process.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if child.name() == "sshd":
                            found[child.pid] = child
        titles = (f"sshd: {self.user} ", f"sshd: {self.user}@")
        for process in psutil.process_iter(["name", "cmdline"]):
            cmdline = process.info["cmdline"] or []
            if process.info["name"] == "sshd" and cmdline and cmdline[0].startswith(titles):
                found[process.pid] = process
        return list(found.values())

    def kill_sessions(self) -> None:
        """Drop every live SSH connection to this host; the listening sshd keeps running."""
        for _ in range(5):
            sessions = self._session_processes()
            if not sessions:
                return
            _kill_processes(sessions)

    def processes(self) -> list[psutil.Process]:
        """Live processes of this host's user, its sshd session processes excluded."""
        found = []
        for process in _user_processes(self.user):
            with contextlib.suppress(psutil.Error):
                if process.name() != "sshd":
                    found.append(process)
        return found

    def kill_processes(self) -> None:
        """Drop the sessions and SIGKILL every process of the user (the sshd keeps running)."""
        self.kill_sessions()
        kill_user_processes(self.user)

    def run(self, command: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a shell command as the user, in its home (and its namespace); no check."""
        entry = pwd.getpwnam(self.user)
        env = {
            "HOME": str(self.home),
            "USER": self.user,
            "LOGNAME": self.user,
            "SHELL": entry.pw_shell,
            "PATH": USER_ENV_PATH,
            "LANG": "C.UTF-8",
        }
        return subprocess.run(
            [*self._prefix(), RUNUSER, "-u", self.user, "--", "sh", "-c", command],
            capture_output=True,
            text=True,
            cwd=self.home,
            env=env,
            timeout=timeout,
            check=False,
        )


class HostFarm:
    """Loopback SSH hosts ``skyt1@127.0.0.11:2222``, ``skyt2@127.0.0.12:2222``, ... grown on demand.

    ``known_hosts_path`` always names every host of the farm.
    """

    def __init__(self, client_key: ClientKey, port: int = FARM_PORT) -> None:
        self.client_key = client_key
        self.port = port
        self.hosts: list[SSHTestHost] = []
        self._state_dir: Path | None = None

    @property
    def state_dir(self) -> Path:
        if self._state_dir is None:
            _LOCK.acquire()
            self._state_dir = Path(tempfile.mkdtemp(prefix=STATE_PREFIX + "farm-"))
        return self._state_dir

    @property
    def known_hosts_path(self) -> Path:
        path = self.state_dir / "known_hosts"
        if not path.exists():
            write_known_hosts(path, self.hosts)
        return path

    def ensure(self, n: int) -> list[SSHTestHost]:
        """The first ``n`` hosts, creating missing ones and starting any stopped sshd."""
        if not 0 < n <= 255 - FARM_FIRST_OCTET:
            raise ValueError(f"cannot have {n} loopback hosts")
        grown = False
        while len(self.hosts) < n:
            index = len(self.hosts) + 1
            host = SSHTestHost.create(
                user=f"{FARM_USER_PREFIX}{index}",
                address=f"127.0.0.{FARM_FIRST_OCTET + index - 1}",
                port=self.port,
                client_key=self.client_key,
                state_dir=self.state_dir / f"host{index}",
            )
            self.hosts.append(host)
            grown = True
        if grown:
            write_known_hosts(self.state_dir / "known_hosts", self.hosts)
        for host in self.hosts[:n]:
            host.start()
        return self.hosts[:n]

    def known_hosts_file(self, path: Path) -> Path:
        """Write every host's known_hosts line to ``path``."""
        return write_known_hosts(path, self.hosts)

    def stop(self) -> None:
        """Stop every sshd and kill every process of every farm user."""
        for host in self.hosts:
            host.stop(drop_sessions=True)
            kill_user_processes(host.user)
        self.hosts.clear()
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None
            _LOCK.release()


class Partition:
    """A cut link; ``heal()`` (or leaving the ``with`` block, or the timer) restores it."""

    def __init__(self, host: NamespaceHost, seconds: float | None) -> None:
        self._host = host
        self._timer: threading.Timer | None = None
        host.link_down()
        if seconds is not None:
            self._timer = threading.Timer(seconds, host.link_up)
            self._timer.daemon = True
            self._timer.start()

    def heal(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._host.link_up()

    def wait(self) -> None:
        """Block until a timed partition has healed."""
        if self._timer is not None:
            self._timer.join()

    def __enter__(self) -> Partition:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.heal()


@dataclass(eq=False)
class NamespaceHost(SSHTestHost):
    """An SSH host inside its own network namespace, reached at 169.254.213.2:2222.

    The root namespace side of the veth pair is 169.254.213.1/30. An ``unreachable``
    route for the /30 (high metric) makes sure nothing meant for it ever takes the default
    route. Usable as a pool node next to loopback hosts: it has every ``SSHTestHost``
    attribute; inside the namespace, ``127.0.0.1`` is the namespace's own loopback.
    """

    veth: str = field(default="", repr=False)
    peer: str = field(default="", repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    @classmethod
    def open(cls, client_key: ClientKey, port: int = FARM_PORT) -> NamespaceHost:
        """Create the namespace, the veth pair, the user ``skytns`` and start its sshd."""
        _LOCK.acquire()
        token = secrets.token_hex(4)
        netns, veth, peer = NS_PREFIX + token, VETH_PREFIX + token, "skp" + token
        state_dir = Path(tempfile.mkdtemp(prefix=STATE_PREFIX + "ns-"))
        try:
            _run(["ip", "netns", "add", netns])
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer, "netns", netns])
            _disable_ipv6(veth)
            _disable_ipv6(peer, netns)
            _run(["ip", "addr", "add", f"{NS_ROOT_ADDRESS}/30", "dev", veth])
            _run(["ip", "-n", netns, "addr", "add", f"{NS_HOST_ADDRESS}/30", "dev", peer])
            _run(["ip", "-n", netns, "link", "set", "lo", "up"])
            _run(["ip", "-n", netns, "link", "set", peer, "up"])
            _run(["ip", "link", "set", veth, "up"])
            _run(["ip", "route", "replace", *FALLBACK_ROUTE])
            base = SSHTestHost.create(
                NS_USER, NS_HOST_ADDRESS, port, client_key, state_dir / "host", netns=netns
            )
        except BaseException:
            _delete_namespace(netns)
            _run(["ip", "link", "del", veth], check=False)
            shutil.rmtree(state_dir, ignore_errors=True)
            _LOCK.release()
            raise
        host = cls(
            base.user,
            base.address,
            base.port,
            base.home,
            base.host_key_public,
            base.state_dir,
            netns,
            veth=veth,
            peer=peer,
        )
        try:
            host.start()
        except BaseException:
            host.close()
            raise
        return host

    def link_down(self) -> None:
        """Cut the link: packets either way are silently dropped (connects time out).

        The namespace end goes down, so the root end loses carrier but keeps its route:
        the kernel queues nothing anywhere else and nothing answers, as in a real
        partition. (Setting the root end down instead would delete that route, and a
        connect would fail at once with "No route to host".)
        """
        _run(["ip", "-n", self.netns or "", "link", "set", self.peer, "down"])

    def link_up(self) -> None:
        """Restore the link (both ends up)."""
        _run(["ip", "link", "set", self.veth, "up"])
        _run(["ip", "-n", self.netns or "", "link", "set", self.peer, "up"])
        deadline = time.monotonic() + 5
        while self.running and not _port_open(self.address, self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.target} unreachable after link_up")
            time.sleep(0.05)

    def partition(self, seconds: float | None = None) -> Partition:
        """Cut the link now; it heals after ``seconds`` (in the background) or on ``heal()``
        / the end of a ``with`` block."""
        return Partition(self, seconds)

    def close(self) -> None:
        """Stop sshd and the user's processes, delete the namespace, veth and route."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop(drop_sessions=True)
            kill_user_processes(self.user)
            if self.netns:
                _delete_namespace(self.netns)
            _run(["ip", "link", "del", self.veth], check=False)
            _run(["ip", "route", "del", *FALLBACK_ROUTE], check=False)
            shutil.rmtree(self.state_dir.parent, ignore_errors=True)
        finally:
            _LOCK.release()

    def __enter__(self) -> NamespaceHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _disable_ipv6(device: str, netns: str | None = None) -> None:
    """No IPv6 (not even link-local autoconfiguration) on the devices created here."""
    command = ["sysctl", "-q", "-w", f"net.ipv6.conf.{device}.disable_ipv6=1"]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    _run(command, check=False)


@contextlib.contextmanager
def namespace_host(client_key: ClientKey) -> Iterator[NamespaceHost]:
    host = NamespaceHost.open(client_key)
    try:
        yield host
    finally:
        host.close()
