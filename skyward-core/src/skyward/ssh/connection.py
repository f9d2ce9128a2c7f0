"""One SSH connection (paramiko): connect with retry, verify the host key, run, upload, tunnel.

The connection re-establishes itself on demand (:meth:`SSHConnection.ensure`), so a node
whose SSH link dropped can be reached again through the same object.

Connecting keeps trying until one deadline (``connect_timeout`` after the first attempt):
every attempt's socket, banner, handshake and authentication waits are cut to what is
left of it, so a host that never answers fails at the deadline, not an attempt later.
Failures that waiting cannot cure (a wrong host key, a refused login) are not retried.
:meth:`SSHConnection.close` aborts a connect in progress from any thread.
"""

from __future__ import annotations

import math
import shlex
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
from attrs import frozen

from skyward.errors import ConnectError, HostKeyError
from skyward.ssh.bulk import send_bulk
from skyward.ssh.hosts import SSHHost
from skyward.ssh.keys import HostKeyVerifier

__all__ = ["ChannelStream", "CommandResult", "SSHConnection"]

# A large window keeps bulk transfers from stalling on window updates; paramiko's
# default (2 MB) caps a 256 MB argument at a fraction of the link's speed.
WINDOW_SIZE = 64 * 2**20
# The largest data packet we accept (the peer sends at most this, and at most what it
# supports itself). paramiko's receive path costs Python per packet, so results coming
# back in 255 KiB packets instead of 32 KiB ones arrive about three times as fast;
# OpenSSH's packets may total 256 KiB, which this leaves room for the headers of.
MAX_PACKET = 255 * 1024
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
        # Large buffers (arrays, refs) go out in batches of pre-built packets; small
        # frames through paramiko as before (skyward.ssh.bulk says why).
        send_bulk(self._channel, data)

    def recv_into(self, buffer: memoryview, nbytes: int = 0, /) -> int:
        data = self._channel.recv(nbytes or len(buffer))
        size = len(data)
        buffer[:size] = data
        return size

    def close(self) -> None:
        self._channel.close()

    def fileno(self) -> int:
        """For ``select``: readable when the channel holds data or was closed."""
        return self._channel.fileno()

    def shutdown(self, how: int, /) -> None:
        """Drop the channel (wakes a ``select`` on :meth:`fileno`)."""
        self._channel.close()


# How long one attempt may wait for a TCP connection at most; later attempts get more
# chances within the deadline (a host still booting refuses a few times first).
SOCKET_TIMEOUT = 10.0
FIRST_RETRY_DELAY = 0.2
MAX_RETRY_DELAY = 5.0


class _Cancelled(Exception):
    """:meth:`SSHConnection.close` was called while connecting."""


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
        if not isinstance(connect_timeout, int | float) or not math.isfinite(connect_timeout):
            raise ValueError(f"connect_timeout must be a finite number, not {connect_timeout!r}")
        self.host = host
        self.verifier = verifier
        self.client_key = client_key
        self.connect_timeout = max(0.0, float(connect_timeout))
        self.provider = provider
        self.opener = opener
        self._transport: paramiko.Transport | None = None
        self._jump: SSHConnection | None = None
        self._lock = threading.Lock()
        # Set by close(): the connect in progress (if any) gives up. The pending socket or
        # transport is closed under it so a blocked read returns at once.
        self._cancel = threading.Event()
        self._pending: socket.socket | paramiko.Channel | paramiko.Transport | None = None
        self._sftp_missing = False
        self.failure: str | None = None
        """Why the last connect failed; ``None`` after a success (or before any try)."""

    @property
    def address(self) -> tuple[str, int]:
        return self.host.host, self.host.port or 22

    @property
    def active(self) -> bool:
        return self._transport is not None and self._transport.is_active()

    # -- connecting -------------------------------------------------------------------

    def ensure(self) -> paramiko.Transport:
        """The live transport, connecting (again) if needed."""
        return self.ensure_by(time.monotonic() + self.connect_timeout)

    def ensure_by(self, deadline: float) -> paramiko.Transport:
        """:meth:`ensure`, giving up at ``deadline`` (a ``time.monotonic()`` value)."""
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                self._cancel.clear()
                try:
                    self._transport = self._connect_with_retry(deadline)
                except (ConnectError, HostKeyError) as error:
                    self.failure = str(error)
                    raise
                self.failure = None
            return self._transport

    def _connect_with_retry(self, deadline: float) -> paramiko.Transport:
        started = time.monotonic()
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                return self._connect_once(deadline)
            except HostKeyError:
                raise
            except ConnectError:
                if self._cancel.is_set():
                    raise self._cancelled() from None
                raise  # an opener (or a jump host) that already knows waiting will not help
            except paramiko.AuthenticationException as error:
                # The host answered and refused us: the same keys will be refused again.
                raise ConnectError(
                    self.provider, f"cannot log in to {self.host.target}: {_what_failed(error)}"
                ) from error
            except Exception as error:
                if self._cancel.is_set():
                    raise self._cancelled() from error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectError(
                        self.provider,
                        f"cannot connect to {self.host.target}: {_what_failed(error)} "
                        f"(kept trying for {time.monotonic() - started:.0f}s)",
                    ) from error
            if self._cancel.wait(min(delay, remaining)):
                raise self._cancelled()
            delay = min(delay * 2, MAX_RETRY_DELAY)

    def _cancelled(self) -> ConnectError:
        return ConnectError(
            self.provider, f"{self.host.target}: connection closed while connecting"
        )

    def _track(self, pending: socket.socket | paramiko.Channel | paramiko.Transport) -> None:
        """Remember what is being connected so close() can interrupt it."""
        self._pending = pending
        if self._cancel.is_set():
            pending.close()
            raise _Cancelled

    def _socket(self, deadline: float) -> socket.socket | paramiko.Channel:
        remaining = max(0.001, deadline - time.monotonic())
        if self.opener is not None:
            return self.opener()
        if self.host.jump is None:
            sock = socket.create_connection(self.address, timeout=min(SOCKET_TIMEOUT, remaining))
            # paramiko leaves Nagle on: a small message (a channel open, a call's frame)
            # then waits for the ACK of the one before, which the peer delays by 40 ms.
            # Every channel open of a bootstrap cost 40 ms that way.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        if self._jump is None:
            self._jump = SSHConnection(
                self.host.jump,
                self.verifier,
                client_key=self.client_key,
                connect_timeout=self.connect_timeout,
                provider=self.provider,
            )
        jump = self._jump.ensure_by(deadline)
        return jump.open_channel("direct-tcpip", self.address, ("127.0.0.1", 0), timeout=remaining)

    def _connect_once(self, deadline: float) -> paramiko.Transport:
        try:
            sock = self._socket(deadline)
            self._track(sock)
            transport = paramiko.Transport(
                sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET
            )
            self._track(transport)
        except _Cancelled:
            raise self._cancelled() from None
        try:
            # paramiko's own waits (banner 15 s, handshake 15 s, auth 30 s) would each
            # outlast a short deadline: no wait may end after it.
            remaining = max(0.001, deadline - time.monotonic())
            transport.banner_timeout = remaining
            transport.handshake_timeout = remaining
            transport.auth_timeout = remaining
            options = transport.get_security_options()
            # AEAD ciphers skip the separate MAC pass: measurably faster bulk transfers
            # (docs/performance.md, benchmark 3); the others stay as fallbacks.
            fast = tuple(c for c in PREFERRED_CIPHERS if c in options.ciphers)
            options.ciphers = fast + tuple(c for c in options.ciphers if c not in fast)
            wanted = [t for t in self.verifier.key_types(*self.address) if t in options.key_types]
            if wanted:
                options.key_types = wanted
            transport.start_client(timeout=remaining)
            self.verifier.verify(*self.address, transport.get_remote_server_key())
            self._authenticate(transport)
            transport.set_keepalive(15)
        except BaseException:
            transport.close()
            raise
        finally:
            self._pending = None
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
        """Close the connection; a connect in progress (in another thread) gives up now."""
        self._cancel.set()
        pending = self._pending
        if pending is not None:
            pending.close()
        if self._jump is not None:
            self._jump.close()
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None

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
        """Copy files into ``remote_dir`` (created if missing; relative to the login
        directory unless absolute).

        SFTP when the host offers it; otherwise (minimal and hardened sshd configurations
        drop the ``Subsystem sftp`` line) each file streams through ``cat`` on an exec
        channel.
        """
        sftp = self._open_sftp()
        if sftp is None:
            for path in files:
                self._upload_exec(path, remote_dir)
            return
        with sftp:
            _makedirs(sftp, remote_dir)
            for path in files:
                sftp.put(str(path), f"{remote_dir}/{path.name}")

    def _open_sftp(self) -> paramiko.SFTPClient | None:
        """An SFTP session, or ``None`` when the host has no SFTP subsystem (remembered)."""
        if self._sftp_missing:
            return None
        channel = self.ensure().open_session(timeout=30)
        try:
            channel.invoke_subsystem("sftp")
            return paramiko.SFTPClient(channel)
        except paramiko.SSHException:
            # sshd refused the subsystem request ("Channel closed." in paramiko's words).
            channel.close()
            self._sftp_missing = True
            return None

    def _upload_exec(self, path: Path, remote_dir: str) -> None:
        target = f"{remote_dir}/{path.name}"
        partial = f"{remote_dir}/.{path.name}.partial"
        q = shlex.quote
        # Written next to the target and renamed: a reader never sees half a file.
        command = (
            f"mkdir -p {q(remote_dir)} && cat > {q(partial)} && mv -f {q(partial)} {q(target)}"
        )
        channel = self.ensure().open_session(timeout=30)
        try:
            channel.set_combine_stderr(True)
            channel.exec_command(command)
            with path.open("rb") as source:
                while chunk := source.read(1 << 20):
                    channel.sendall(chunk)
            channel.shutdown_write()
            output = b""
            while data := channel.recv(65536):
                output += data[: 4000 - len(output)]
            code = channel.recv_exit_status()
        except (OSError, paramiko.SSHException) as error:
            raise self._upload_failed(path, target, str(error)) from error
        finally:
            channel.close()
        if code != 0:
            detail = output.decode(errors="replace").strip() or f"exit {code}"
            raise self._upload_failed(path, target, detail)

    def _upload_failed(self, path: Path, target: str, detail: str) -> ConnectError:
        return ConnectError(
            self.provider,
            f"{self.host.target}: cannot upload {path.name} to {target}: the host has no "
            f"SFTP subsystem (no 'Subsystem sftp' in its sshd_config), and copying through "
            f"'cat' on an exec channel failed too ({detail}). Enable SFTP on the host, or "
            f"make sure its login shell can run mkdir, cat and mv there",
        )

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
