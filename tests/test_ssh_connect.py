"""Connecting over SSH: one deadline, no retry of a refused login, close() interrupts.

The misbehaving servers here are plain loopback sockets (a host that drops connections,
one that accepts and never speaks); the refused login is a real sshd test host.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import skyward as sky
from skyward.errors import ConfigurationError, ConnectError
from skyward.ssh.connection import SSHConnection
from skyward.ssh.hosts import SSHHost
from skyward.ssh.keys import KnownHosts, generate_keypair
from tests.ssh_hosts import ClientKey


@contextlib.contextmanager
def flaky_server(drop_for: float) -> Iterator[int]:
    """A port on 127.0.0.1 that drops every connection for ``drop_for`` seconds, then
    accepts connections and never says a word (a host whose sshd hangs)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    started = time.monotonic()
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if time.monotonic() - started < drop_for:
                conn.close()
            else:
                held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in held:
            conn.close()


def _connection(port: int, timeout: float, tmp_path: Path) -> SSHConnection:
    known = tmp_path / "known_hosts"
    known.write_text("")
    return SSHConnection(
        SSHHost("127.0.0.1", user="nobody", port=port),
        KnownHosts((known,)),
        client_key=generate_keypair().pkey(),
        connect_timeout=timeout,
    )


def test_a_host_that_stops_answering_fails_at_the_deadline_not_an_attempt_later(
    tmp_path: Path,
) -> None:
    # Attempts fail fast for 3 s; the one that starts then meets a silent server. It
    # must give up when the 4 s are over, not wait its own full 4 s (7 s in all).
    with flaky_server(drop_for=3.0) as port:
        conn = _connection(port, 4.0, tmp_path)
        started = time.monotonic()
        with pytest.raises(ConnectError, match="kept trying for") as caught:
            conn.ensure()
        elapsed = time.monotonic() - started
    assert 3.5 < elapsed < 5.5, f"gave up after {elapsed:.1f}s"
    assert "127.0.0.1" in str(caught.value)


def test_close_interrupts_a_connect_in_progress(tmp_path: Path) -> None:
    with flaky_server(drop_for=0) as port:
        conn = _connection(port, 60.0, tmp_path)
        errors: list[BaseException] = []

        def connect() -> None:
            try:
                conn.ensure()
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=connect, daemon=True)
        thread.start()
        time.sleep(0.5)
        closed = time.monotonic()
        conn.close()
        thread.join(10)
        assert not thread.is_alive(), "the connect went on after close()"
        assert time.monotonic() - closed < 3
    assert len(errors) == 1
    assert isinstance(errors[0], ConnectError)
    assert "closed while connecting" in str(errors[0])


def test_a_refused_login_is_not_retried(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    host = ssh_hosts(1)[0]
    stranger = generate_keypair()  # a key the host does not authorize
    conn = SSHConnection(
        SSHHost(host.address, user=host.user, port=host.port),
        KnownHosts((ssh_known_hosts,)),
        client_key=stranger.pkey(),
        connect_timeout=30,
    )
    started = time.monotonic()
    with pytest.raises(ConnectError, match="authentication failed") as caught:
        conn.ensure()
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"a refused login was retried for {elapsed:.1f}s"
    assert host.target in str(caught.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1, 0, 10**9, True, "60"])
def test_connect_timeout_must_be_a_sane_number_of_seconds(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="connect_timeout"):
        sky.SSH(hosts=["a@127.0.0.1"], connect_timeout=bad)  # type: ignore[arg-type]


def test_a_connection_refuses_a_non_finite_timeout() -> None:
    with pytest.raises(ValueError, match="connect_timeout"):
        SSHConnection(SSHHost("127.0.0.1"), KnownHosts(()), connect_timeout=math.nan)


def test_a_pool_on_a_silent_host_fails_after_one_connect_timeout() -> None:
    # Once to bootstrap, never again to tear down: nothing was started on that host.
    with flaky_server(drop_for=0) as port:
        config = sky.SSH(
            hosts=[sky.SSHHost("127.0.0.1", user="nobody", port=port)],
            known_hosts="/dev/null",
            connect_timeout=3,
        )
        started = time.monotonic()
        with (
            pytest.raises(ConnectError, match="kept trying for"),
            sky.ComputePool(provider=config, display="quiet"),
        ):
            pass
        elapsed = time.monotonic() - started
    assert elapsed < 3 + 1.5, f"took {elapsed:.1f}s"


CLIENT = """
import sys
import skyward as sky

config = sky.SSH(
    hosts=[sky.SSHHost("127.0.0.1", user="nobody", port=int(sys.argv[1]))],
    known_hosts="/dev/null",
    connect_timeout=4,
)
print("opening", flush=True)
with sky.ComputePool(provider=config, display="quiet"):
    pass
"""


def test_ctrl_c_while_connecting_is_obeyed_within_the_connect_timeout(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    root = Path(__file__).resolve().parent.parent
    with flaky_server(drop_for=0) as port:
        client = subprocess.Popen(
            [sys.executable, str(script), str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        try:
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "opening"
            time.sleep(1)
            interrupted = time.monotonic()
            client.send_signal(signal.SIGINT)
            code = client.wait(timeout=30)
        finally:
            client.kill()
            client.wait()
        waited = time.monotonic() - interrupted
    assert code != 0
    # At worst the attempt in progress runs out (4 s from the start); never a second one.
    assert waited < 4 + 1.5, f"Ctrl-C took {waited:.1f}s"
