"""SSH provider end to end, against real sshd test hosts (nothing mocked)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import skyward as sky
from skyward.ssh.keys import generate_keypair
from tests.conftest import wait_until
from tests.ssh_hosts import ClientKey, SSHTestHost


@sky.compute
def whoami() -> dict[str, Any]:
    import getpass

    info = sky.instance_info()
    return {
        "user": getpass.getuser(),
        "node": info.node,
        "total": info.total_nodes,
        "head_addr": info.head_addr,
        "head_port": info.head_port,
        "cwd": os.getcwd(),
    }


@sky.compute
def can_reach(address: str, port: int) -> bool:
    with socket.create_connection((address, port), timeout=5):
        return True


@sky.compute
def square(x: int) -> int:
    return x * x


def ssh_provider(
    hosts: list[SSHTestHost], key: ClientKey, known_hosts: Path, **options: Any
) -> sky.SSH:
    return sky.SSH(
        hosts=[
            sky.SSHHost(h.address, user=h.user, port=h.port, identity_file=str(key.private_path))
            for h in hosts
        ],
        known_hosts=str(known_hosts),
        **options,
    )


def test_three_host_pool(ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path) -> None:
    hosts = ssh_hosts(3)
    provider = ssh_provider(hosts, ssh_client_key, ssh_known_hosts)
    events: list[Any] = []
    with sky.ComputePool(
        provider=provider, nodes=3, display="quiet", on_event=events.append
    ) as pool:
        assert square(7) >> pool == 49
        infos = whoami() @ pool
        assert [i["node"] for i in infos] == [0, 1, 2]
        assert [i["user"] for i in infos] == [h.user for h in hosts]
        assert {i["head_addr"] for i in infos} == {hosts[0].address}
        assert all(i["total"] == 3 for i in infos)
        reach = can_reach(hosts[0].address, hosts[0].port) @ pool
        assert reach == (True, True, True), "head_addr is reachable from every node"
        results = sky.gather(*(square(i) for i in range(1000))) >> pool
        assert list(results) == [i * i for i in range(1000)]
    for host in hosts:
        assert not _node_processes(host)
        # this pool's directory (other test sessions may have left theirs on a shared farm)
        assert host.run(f"test -e .skyward/pools/{pool.pool_id} && echo left").stdout == ""


@sky.compute
def package_and_env() -> tuple[str, str | None]:
    import humanize

    return humanize.intcomma(1000000), os.environ.get("SKY_SECRET")


def _bootstrap_steps(events: list[Any]) -> set[tuple[str, bool]]:
    return {(e.step, e.cached) for e in events if isinstance(e, sky.BootstrapProgress)}


@pytest.mark.slow
def test_image_packages_and_env_then_cached_second_pool(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    hosts = ssh_hosts(2)
    for host in hosts:  # a clean cache: the first pool must do the work
        host.run("rm -rf .skyward/envs")
    provider = ssh_provider(hosts, ssh_client_key, ssh_known_hosts)
    image = sky.Image(pip=["humanize==4.11.0"], env={"SKY_SECRET": "image-secret-value"})
    first: list[Any] = []
    with sky.ComputePool(
        provider=provider,
        nodes=2,
        image=image,
        env={"POOL_SECRET": "pool-secret-value"},
        display="quiet",
        on_event=first.append,
    ) as pool:
        assert package_and_env() @ pool == (("1,000,000", "image-secret-value"),) * 2
        for host in hosts:
            agents = [p for p in host.processes() if "skyward.agent" in p.cmdline()]
            assert len(agents) == 1
            assert "secret-value" not in " ".join(agents[0].cmdline())
            assert agents[0].environ().get("POOL_SECRET") is None, "env goes to functions only"
            found = host.run("grep -rl secret-value .skyward 2>/dev/null || true").stdout
            assert found.strip() == "", f"secrets written to disk: {found}"
    assert ("deps", False) in _bootstrap_steps(first)
    assert not any("secret-value" in repr(e) for e in first), "no secret in any event"

    second: list[Any] = []
    with sky.ComputePool(
        provider=provider, nodes=2, image=image, display="quiet", on_event=second.append
    ) as pool:
        assert (package_and_env() >> pool)[0] == "1,000,000"
    steps = _bootstrap_steps(second)
    assert ("deps", True) in steps, "the second pool skipped the install and said so"
    assert ("upload", True) in steps


@sky.compute
def pool_env(name: str) -> str | None:
    return os.environ.get(name)


def test_pool_env_reaches_functions(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    hosts = ssh_hosts(1)
    provider = ssh_provider(hosts, ssh_client_key, ssh_known_hosts)
    with sky.ComputePool(provider=provider, env={"TOKEN": "t0k3n"}, display="quiet") as pool:
        assert pool_env("TOKEN") >> pool == "t0k3n"


def test_unknown_host_key_is_refused_with_its_fingerprint(
    ssh_hosts: Any, ssh_client_key: ClientKey, tmp_path: Path
) -> None:
    hosts = ssh_hosts(1)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    provider = ssh_provider(hosts, ssh_client_key, empty, connect_timeout=5)
    with (
        pytest.raises(sky.errors.HostKeyError) as caught,
        sky.ComputePool(provider=provider, display="quiet"),
    ):
        pass
    assert caught.value.fingerprint.startswith("SHA256:")
    assert caught.value.fingerprint in str(caught.value)
    assert "ssh-keyscan -p 2222 127.0.0.11" in str(caught.value)
    assert not [p for p in hosts[0].processes() if "skyward" in " ".join(p.cmdline())]


def test_changed_host_key_is_refused(
    ssh_hosts: Any, ssh_client_key: ClientKey, tmp_path: Path
) -> None:
    hosts = ssh_hosts(1)
    other = generate_keypair().public_line.rsplit(" ", 1)[0]
    known = tmp_path / "known_hosts"
    known.write_text(f"[{hosts[0].address}]:{hosts[0].port} {other}\n")
    provider = ssh_provider(hosts, ssh_client_key, known, connect_timeout=5)
    with (
        pytest.raises(sky.errors.HostKeyError, match="CHANGED"),
        sky.ComputePool(provider=provider, display="quiet"),
    ):
        pass


def test_unreachable_host_fails_within_the_timeout_and_leaves_nothing(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    hosts = ssh_hosts(2)
    good = sky.SSHHost(
        hosts[0].address, user=hosts[0].user, port=hosts[0].port,
        identity_file=str(ssh_client_key.private_path),
    )  # fmt: skip
    dead = sky.SSHHost("127.0.0.99", user="nobody", port=2299)  # nothing listens there
    provider = sky.SSH(hosts=[good, dead], known_hosts=str(ssh_known_hosts), connect_timeout=3)
    pool = sky.ComputePool(provider=provider, nodes=2, display="quiet")
    started = time.monotonic()
    with pytest.raises(sky.errors.ConnectError) as caught, pool:
        pass
    elapsed = time.monotonic() - started
    assert elapsed < 3 + 15, f"gave up after {elapsed:.1f}s"
    message = str(caught.value)
    assert "nobody@127.0.0.99:2299" in message
    assert "refused" in message
    assert "kept trying for" in message
    # the good host's agent was told to stop during teardown; it may take a moment to exit
    assert wait_until(lambda: not _node_processes(hosts[0]), 10), _node_processes(hosts[0])
    # this pool's directory (the farm's hosts serve the whole test session)
    assert hosts[0].run(f"test -e .skyward/pools/{pool.pool_id} && echo left").stdout == ""


def test_more_nodes_than_hosts_is_a_configuration_error() -> None:
    with pytest.raises(sky.ConfigurationError, match="nodes") as caught:
        sky.ComputePool(provider=sky.SSH(hosts=["a@127.0.0.1:1"]), nodes=2)
    assert "Add hosts" in str(caught.value)


def test_apt_without_root_or_sudo_is_a_clear_error(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    hosts = ssh_hosts(1)
    provider = ssh_provider(hosts, ssh_client_key, ssh_known_hosts)
    with (
        pytest.raises(sky.errors.ProvisioningError, match="apt") as caught,
        sky.ComputePool(provider=provider, image=sky.Image(apt=["cowsay"]), display="quiet"),
    ):
        pass
    assert "sudo" in str(caught.value)


@sky.compute
def napping(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@sky.compute
def agent_pid() -> int:
    return os.getpid()


def test_agent_killed_mid_task_then_the_pool_serves_the_next_call(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    import signal
    import threading

    hosts = ssh_hosts(1)
    provider = ssh_provider(hosts, ssh_client_key, ssh_known_hosts)
    with sky.ComputePool(provider=provider, display="quiet") as pool:
        first = agent_pid() >> pool
        errors: list[BaseException] = []

        def call() -> None:
            try:
                napping(30) >> pool
            except BaseException as error:
                errors.append(error)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(1)
        os.kill(first, signal.SIGKILL)  # same machine: the host's agent is our child's pid
        caller.join(timeout=30)
        assert len(errors) == 1
        assert isinstance(errors[0], sky.WorkerLostError)
        assert square(5) >> pool == 25
        assert agent_pid() >> pool != first


def test_dropped_ssh_connection_reconnects_and_the_call_completes(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    import threading

    hosts = ssh_hosts(1)
    provider = ssh_provider(hosts, ssh_client_key, ssh_known_hosts)
    events: list[Any] = []
    with sky.ComputePool(provider=provider, display="quiet", on_event=events.append) as pool:
        first = agent_pid() >> pool
        results: list[int] = []
        caller = threading.Thread(target=lambda: results.append(napping(3) >> pool))
        caller.start()
        time.sleep(1)
        hosts[0].kill_sessions()  # every SSH connection to the host drops
        caller.join(timeout=30)
        assert results == [first], "the task in flight completed on the same agent"
        assert agent_pid() >> pool == first
    assert any(isinstance(e, sky.Error) and "reconnecting" in e.message for e in events)


def test_large_numpy_round_trip_over_ssh(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    import numpy as np

    hosts = ssh_hosts(1)
    provider = ssh_provider(hosts, ssh_client_key, ssh_known_hosts)
    image = sky.Image(pip=[f"numpy=={np.__version__}"])
    array = np.random.default_rng(1).integers(0, 2**31, size=32 * 2**20, dtype=np.int64)
    assert array.nbytes == 256 * 2**20
    with sky.ComputePool(provider=provider, image=image, display="quiet") as pool:
        back = echo(array) >> pool
    assert back.dtype == array.dtype
    assert np.array_equal(back, array)


@sky.compute
def echo(value: Any) -> Any:
    return value


CLIENT = """
import sys, time
import skyward as sky

@sky.compute
def nap(seconds):
    time.sleep(seconds)

hosts = [sky.SSHHost(a, user=u, port=int(p), identity_file=sys.argv[2])
         for a, u, p in (h.split(",") for h in sys.argv[3:])]
provider = sky.SSH(hosts=hosts, known_hosts=sys.argv[1])
with sky.ComputePool(provider=provider, nodes=len(hosts), display="quiet") as pool:
    nap(0) @ pool
    print("ready", flush=True)
    nap(600) >> pool
"""


def _agents(host: SSHTestHost) -> list[Any]:
    found = []
    for process in host.processes():
        with contextlib.suppress(psutil.Error):
            if "skyward.agent" in process.cmdline():
                found.append(process)
    return found


@pytest.mark.slow
def test_client_sigkill_leaves_no_agent_after_the_watchdog_interval(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    hosts = ssh_hosts(2)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    args = [f"{h.address},{h.user},{h.port}" for h in hosts]
    env = {**os.environ, "SKYWARD_HEARTBEAT_TIMEOUT": "3"}
    client = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(ssh_known_hosts),
            str(ssh_client_key.private_path),
            *args,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "ready"
        assert all(len(_agents(h)) == 1 for h in hosts)
    finally:
        client.kill()
        client.wait()
    killed = time.monotonic()
    assert wait_until(lambda: not any(_agents(h) for h in hosts), timeout=15)
    assert time.monotonic() - killed < 3 + 5


def test_two_second_partition_during_a_call(
    netns_host: Any, ssh_client_key: ClientKey, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(netns_host.known_hosts_line + "\n")
    provider = ssh_provider([netns_host], ssh_client_key, known)
    with sky.ComputePool(provider=provider, display="quiet") as pool:
        pid = agent_pid() >> pool
        import threading

        results: list[int] = []
        caller = threading.Thread(target=lambda: results.append(napping(4) >> pool))
        caller.start()
        time.sleep(1)
        netns_host.partition(2).wait()  # the link is down for 2 s, then back
        caller.join(timeout=60)
        assert results == [pid]
        assert square(3) >> pool == 9


def _node_processes(host: SSHTestHost) -> list[str]:
    """Command lines of a host's live agents and workers (a zombie is already gone)."""
    found = []
    for process in host.processes():
        with contextlib.suppress(psutil.Error):
            line = " ".join(process.cmdline())
            if "skyward.agent" in line:
                found.append(line)
    return found
