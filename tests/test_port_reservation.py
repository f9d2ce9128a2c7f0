"""Ports reserved for a server that binds them later (skyward.port_reservation).

The race these close: a port picked by binding to port 0 and closing the socket could go to
another process before the framework bound it (CI saw JAX's coordinator fail so: "Failed to
start RPC server"). Here a "stranger" takes the port the ordinary ways (a plain bind of that
number, the kernel's own pick for port 0); the framework-style server must still get it.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from skyward.cluster import RENDEZVOUS_PORTS
from skyward.port_reservation import HOLDS, reserve_ports

pytestmark = pytest.mark.skipif(not HOLDS, reason="ports are held only on Linux")


def _stranger_binds(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as error:
            refused = error.errno
        else:
            return True
    assert refused == errno.EADDRINUSE
    return False


def _serves(port: int) -> bool:
    """A server the way frameworks start theirs (SO_REUSEADDR, listen) answers a client."""
    with (
        socket.create_server(("", port)) as server,
        socket.create_connection(("127.0.0.1", port), timeout=5),
    ):
        peer, _ = server.accept()
        peer.close()
    return True


def test_held_ports_refuse_strangers_and_admit_the_framework() -> None:
    with reserve_ports(RENDEZVOUS_PORTS) as ports:
        assert ports.ports == tuple(range(ports.base, ports.base + RENDEZVOUS_PORTS))
        for port in ports.ports:
            assert not _stranger_binds(port)
            assert not _stranger_binds(port, "")  # the wildcard address too
        assert _serves(ports.base + 1)
        # The framework's server came and went: the port is still ours, not the next comer's.
        assert not _stranger_binds(ports.base + 1)
    # Released (the served port is left out: its closed connection waits in TIME_WAIT).
    assert all(_stranger_binds(port) for port in ports.ports if port != ports.base + 1)


def test_the_kernel_never_hands_out_a_held_port() -> None:
    with reserve_ports(4) as ports:
        taken = []
        try:
            for _ in range(300):
                sock = socket.socket()
                taken.append(sock)
                sock.bind(("127.0.0.1", 0))
                assert sock.getsockname()[1] not in ports.ports
        finally:
            for sock in taken:
                sock.close()


def test_two_reservations_never_share_a_port() -> None:
    first = reserve_ports(RENDEZVOUS_PORTS)
    second = reserve_ports(RENDEZVOUS_PORTS)
    try:
        assert not set(first.ports) & set(second.ports)
    finally:
        first.release()
        second.release()
    with pytest.raises(ValueError, match="at least 1"):
        reserve_ports(0)


def test_local_pool_holds_its_rendezvous_ports_until_teardown(tmp_path: Path) -> None:
    import skyward as sky
    from skyward.providers.local import LocalInfrastructure

    provider = sky.Local(root=str(tmp_path)).create()
    infra = provider.prepare(sky.ComputeSpec(), "pool-ports")
    assert isinstance(infra, LocalInfrastructure)
    try:
        ports = range(infra.head_port, infra.head_port + RENDEZVOUS_PORTS)
        assert not any(_stranger_binds(port) for port in ports)
    finally:
        provider.teardown(infra)
    assert all(_stranger_binds(port) for port in ports)


JAX_ALONE = textwrap.dedent(
    """
    import socket, sys
    from skyward.cluster import InstanceInfo
    from skyward_integrations._distributed import port_for
    from skyward_integrations.jax import initialize_jax

    info = InstanceInfo(node=0, total_nodes=1)  # a `.local` call: a world of one
    port = port_for(info, "jax")
    stranger = socket.socket()
    try:
        stranger.bind(("127.0.0.1", port))
        stranger.listen()
        print("stranger took", port)
    except OSError:
        print("stranger refused")
    initialize_jax(info, 30)
    import jax
    print("jax", jax.process_count(), float(jax.numpy.arange(4.0).sum()))
    """
)


def test_jax_alone_gets_its_coordinator_port_even_when_a_stranger_comes_first() -> None:
    result = subprocess.run(
        [sys.executable, "-c", JAX_ALONE], check=False, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["stranger refused", "jax 1 6.0"]
