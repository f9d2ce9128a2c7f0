"""One SSH connection (paramiko): connect with retry, verify the host key, run, upload, tunnel.

The connection re-establishes itself on demand (:meth:`SSHConnection.ensure`), so a node
whose SSH link dropped can be reached again through the same object.
"""

from __future__ import annotations

import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
from attrs import frozen
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from skyward.errors import ConnectError, HostKeyError
from skyward.ssh.hosts import SSHHost
from skyward.ssh.keys import HostKeyVerifier

__all__ = ["ChannelStream", "CommandResult", "SSHConnection"]

# A large window keeps bulk transfers from stalling on window updates; paramiko's
# default (2 MB) caps a 256 MB argument at a fraction of the link's speed.
WINDOW_SIZE = 64 * 2**20
MAX_PACKET = 32 * 1024
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


@frozen
class CommandResult:
    code: int
    output: str


class ChannelStream:
    """A paramiko channel as a :class:`skyward.provider.Stream`."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel

    def sendall(self, data: bytes | memoryview, /) -> None:
        # paramiko's stubs say bytes; memoryviews of large buffers work and avoid a copy.
        self._channel.sendall(data)  # type: ignore[arg-type]

    def recv_into(self, buffer: memoryview, nbytes: int = 0, /) -> int:
        data = self._channel.recv(nbytes or len(buffer))
        size = len(data)
        buffer[:size] = data
        return size

    def close(self) -> None:
        self._channel.close()


def _retryable(error: BaseException) -> bool:
    # A wrong host key, or an opener that already knows waiting will not help.
    return not isinstance(error, HostKeyError | ConnectError)


class SSHConnection:
    """A (re)connectable SSH session to one host."""

    def __init__(
        self,
        host: SSHHost,
        verifier: HostKeyVerifier,
        *,
        client_key: paramiko.PKey | None = None,
        connect_timeout: float = 60.0,
        provider: str = "ssh",
        opener: Callable[[], socket.socket] | None = None,
    ) -> None:
        """:param opener: how to reach the host's SSH port when it is not a plain TCP
        connection (a cloud's session service, say); it may raise :class:`ConnectError`
        for failures that retrying cannot cure."""
        self.host = host
        self.verifier = verifier
        self.client_key = client_key
        self.connect_timeout = connect_timeout
        self.provider = provider
        self.opener = opener
        self._transport: paramiko.Transport | None = None
        self._jump: SSHConnection | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        return self.host.host, self.host.port or 22

    @property
    def active(self) -> bool:
        return self._transport is not None and self._transport.is_active()

    # -- connecting -------------------------------------------------------------------

    def ensure(self) -> paramiko.Transport:
        """The live transport, connecting (again) if needed."""
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                self._transport = self._connect_with_retry()
            return self._transport

    def _connect_with_retry(self) -> paramiko.Transport:
        started = time.monotonic()
        retrying = Retrying(
            stop=stop_after_delay(self.connect_timeout),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._connect_once()
        except (HostKeyError, ConnectError):
            raise
        except Exception as error:
            elapsed = time.monotonic() - started
            raise ConnectError(
                self.provider,
                f"cannot connect to {self.host.target}: {_what_failed(error)} "
                f"(kept trying for {elapsed:.0f}s)",
            ) from error
        raise AssertionError("unreachable")  # pragma: no cover

    def _socket(self) -> socket.socket | paramiko.Channel:
        if self.opener is not None:
            return self.opener()
        if self.host.jump is None:
            return socket.create_connection(self.address, timeout=min(10.0, self.connect_timeout))
        if self._jump is None:
            self._jump = SSHConnection(
                self.host.jump,
                self.verifier,
                client_key=self.client_key,
                connect_timeout=self.connect_timeout,
                provider=self.provider,
            )
        jump = self._jump.ensure()
        return jump.open_channel("direct-tcpip", self.address, ("127.0.0.1", 0))

    def _connect_once(self) -> paramiko.Transport:
        transport = paramiko.Transport(
            self._socket(), default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET
        )
        try:
            options = transport.get_security_options()
            # AEAD ciphers skip the separate MAC pass: measurably faster bulk transfers
            # (docs/performance.md, benchmark 3); the others stay as fallbacks.
            fast = tuple(c for c in PREFERRED_CIPHERS if c in options.ciphers)
            options.ciphers = fast + tuple(c for c in options.ciphers if c not in fast)
            wanted = [t for t in self.verifier.key_types(*self.address) if t in options.key_types]
            if wanted:
                options.key_types = wanted
            transport.start_client(timeout=min(30.0, self.connect_timeout))
            self.verifier.verify(*self.address, transport.get_remote_server_key())
            self._authenticate(transport)
            transport.set_keepalive(15)
        except BaseException:
            transport.close()
            raise
        return transport

    def _authenticate(self, transport: paramiko.Transport) -> None:
        user = self.host.user or "root"
        keys: list[paramiko.PKey] = []
        if self.client_key is not None:
            keys.append(self.client_key)
        if self.host.identity_file:
            keys.append(paramiko.PKey.from_path(self.host.identity_file))
        if not keys:
            keys.extend(paramiko.Agent().get_keys())
            for name in DEFAULT_KEYS:
                path = Path.home() / ".ssh" / name
                if path.exists():
                    try:
                        keys.append(paramiko.PKey.from_path(str(path)))
                    except paramiko.SSHException:
                        continue  # encrypted or unsupported: the agent may hold it
        for key in keys:
            try:
                transport.auth_publickey(user, key)
            except paramiko.AuthenticationException:
                continue
            if transport.is_authenticated():
                return
        raise paramiko.AuthenticationException(
            f"no key was accepted for {user} (tried {len(keys)} key(s))"
        )

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None
        if self._jump is not None:
            self._jump.close()

    # -- using it ---------------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        on_line: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run ``command`` (stderr merged into stdout), streaming lines to ``on_line``."""
        channel = self.ensure().open_session(timeout=30)
        try:
            channel.set_combine_stderr(True)
            if timeout is not None:
                channel.settimeout(timeout)
            channel.exec_command(command)
            if stdin is not None:
                # A memoryview: paramiko's sendall re-slices what is left after each packet.
                channel.sendall(memoryview(stdin))  # type: ignore[arg-type]
            channel.shutdown_write()
            chunks: list[bytes] = []
            pending = b""
            while True:
                data = channel.recv(65536)
                if not data:
                    break
                chunks.append(data)
                if on_line is not None:
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        on_line(line.decode(errors="replace"))
            if on_line is not None and pending:
                on_line(pending.decode(errors="replace"))
            code = channel.recv_exit_status()
        finally:
            channel.close()
        return CommandResult(code, b"".join(chunks).decode(errors="replace"))

    def upload(self, files: list[Path], remote_dir: str) -> None:
        """Copy files into ``remote_dir`` (created if missing) with SFTP."""
        sftp = paramiko.SFTPClient.from_transport(self.ensure())
        if sftp is None:
            raise ConnectError(self.provider, f"{self.host.target}: SFTP is not available")
        with sftp:
            _makedirs(sftp, remote_dir)
            for path in files:
                sftp.put(str(path), f"{remote_dir}/{path.name}")

    def open_tunnel(self, port: int) -> ChannelStream:
        """A channel to ``127.0.0.1:port`` on the host (the agent's loopback port)."""
        channel = self.ensure().open_channel(
            "direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=30
        )
        return ChannelStream(channel)

    def open_session(self) -> paramiko.Channel:
        return self.ensure().open_session(timeout=30)


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    current = ""
    for part in path.strip("/").split("/"):
        current = f"{current}/{part}" if current or path.startswith("/") else part
        try:
            if stat.S_ISDIR(sftp.stat(current).st_mode or 0):
                continue
        except FileNotFoundError:
            sftp.mkdir(current)


def _what_failed(error: BaseException) -> str:
    if isinstance(error, paramiko.AuthenticationException):
        return f"authentication failed ({error})"
    if isinstance(error, socket.timeout | TimeoutError):
        return "the connection timed out"
    if isinstance(error, ConnectionRefusedError):
        return "the connection was refused (is sshd running on that port?)"
    if isinstance(error, OSError):
        return f"network error ({error})"
    return f"SSH handshake failed ({error})"
