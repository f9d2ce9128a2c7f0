"""Reliability and security of a pool's agents (issue: authenticated agent, leaks closed).

Each test reproduces one defect the audit found; each failed before its fix.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest
from skyward_example_provider.plugin import HOURLY_PRICE, Example

import skyward as sky
from skyward import handshake, messages, wire
from skyward.agent_process import connect_loopback, start_agent_process, stop_process_group
from skyward.errors import AgentAuthenticationError, ProvisioningError
from skyward.events import CostFinal, LogLine
from skyward.node import NodeClient
from skyward.provider import AgentConfig
from skyward.providers.local import Local, LocalProvider
from tests.conftest import agent_processes, wait_until

Factory = Callable[..., sky.ComputePool]

# Raw tasks bypass @sky.compute, which would register this module by value itself.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# What another unix user sends: one frame whose pickle runs a command when unpickled.
_ATTACK = r"""
import os, pickle, socket, struct, sys, time

class Run:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))

payload = pickle.dumps(Run(), protocol=5)
target = sys.argv[1]
if target.isdigit():
    sock = socket.create_connection(("127.0.0.1", int(target)), timeout=5)
else:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(target)
try:
    sock.sendall(struct.pack("!IH", len(payload), 0) + payload)
    time.sleep(1)
    sock.recv(4096)
except OSError:
    pass
"""


def _client(pool: sky.ComputePool, node: int = 0) -> NodeClient:
    cluster = pool._cluster
    assert cluster is not None
    return cluster.clients[node]


def _pid() -> int:
    return os.getpid()


def _sleep_then(value: int, seconds: float) -> int:
    time.sleep(seconds)
    return value


def _attack(port_or_path: str, marker: Path) -> subprocess.CompletedProcess[str]:
    script = marker.parent / "attack.py"
    script.write_text(_ATTACK)
    script.chmod(0o644)
    return subprocess.run(
        [
            "runuser",
            "-u",
            "nobody",
            "--",
            "/usr/bin/python3",
            str(script),
            port_or_path,
            str(marker),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def scratch() -> Path:
    path = Path(tempfile.mkdtemp(prefix="skyward-attack-"))
    path.chmod(0o777)
    return path


@pytest.fixture
def tcp_agent(tmp_path: Path) -> Any:
    """An agent on 127.0.0.1 (as on every remote machine), and its config."""
    config = AgentConfig(
        node=0,
        total_nodes=1,
        concurrency=1,
        job_id="attack",
        head_addr="127.0.0.1",
        head_port=0,
        metrics_interval=None,
    )
    agent = start_agent_process(
        sys.executable, config, cwd=tmp_path / "agent", pool_id="attack", instance_id="i-0"
    )
    yield agent, config
    stop_process_group(agent.process)


def _session(port: int, config: AgentConfig) -> tuple[wire.FrameReader, wire.FrameWriter]:
    sock = connect_loopback(port)
    handshake.prove(sock, config.key)
    reader, writer = wire.FrameReader(sock), wire.FrameWriter(sock)
    assert isinstance(reader.read(), messages.Hello)
    return reader, writer


def test_another_unix_user_cannot_run_code_through_a_tcp_agent(
    tcp_agent: Any, scratch: Path
) -> None:
    agent, config = tcp_agent
    marker = scratch / "pwned"
    attacker = _attack(str(agent.endpoint.port), marker)
    assert attacker.returncode == 0, attacker.stderr
    assert not marker.exists(), "the agent ran a stranger's pickle"
    reader, writer = _session(agent.endpoint.port, config)  # and its owner still gets in
    writer.send(messages.Task(1, messages.Payload.of((_pid, (), {}))))
    result = reader.read()
    assert isinstance(result, messages.Result)
    assert result.failure is None


def test_another_unix_user_cannot_even_reach_a_local_agent(
    local_pool_factory: Factory, scratch: Path
) -> None:
    with local_pool_factory() as pool:
        path = _client(pool).endpoint.path
        assert path is not None, "Local agents listen on a unix socket"
        assert stat.S_IMODE(os.stat(Path(path).parent).st_mode) == 0o700
        marker = scratch / "pwned"
        attacker = _attack(path, marker)
        assert "PermissionError" in attacker.stderr
        assert not marker.exists()
        assert sky.compute(_pid)() >> pool > 0


def test_a_stray_connection_changes_nothing_for_the_call_in_flight(tcp_agent: Any) -> None:
    agent, config = tcp_agent
    reader, writer = _session(agent.endpoint.port, config)
    writer.send(messages.Task(1, messages.Payload.of((_sleep_then, (7, 1.5), {}))))
    time.sleep(0.3)
    for _ in range(5):  # a port scan: connect, read the challenge, close
        with socket.create_connection(("127.0.0.1", agent.endpoint.port), timeout=5) as stray:
            stray.recv(64)
    reader_socket_deadline = time.monotonic() + 10
    result = reader.read()
    assert time.monotonic() < reader_socket_deadline
    assert isinstance(result, messages.Result)
    assert result.value is not None
    assert result.value.open() == 7


def test_the_agent_must_prove_the_key_too() -> None:
    """A process that took over the port of a dead agent does not get to feed pickles to
    the client: the client checks the agent's own proof."""
    ours, impostor_key = handshake.new_key(), handshake.new_key()
    client, agent = socket.socketpair()
    with client, agent:
        errors: list[BaseException] = []

        def impostor() -> None:
            try:
                handshake.accept(agent, impostor_key)
            except BaseException as error:
                errors.append(error)
            finally:
                agent.shutdown(socket.SHUT_RDWR)  # as the agent drops a refused peer

        thread = threading.Thread(target=impostor)
        thread.start()
        with pytest.raises(AgentAuthenticationError):
            handshake.prove(client, ours)
        thread.join(5)
        assert len(errors) == 1
        assert isinstance(errors[0], AgentAuthenticationError)


def test_a_recorded_answer_cannot_be_replayed() -> None:
    key = handshake.new_key()
    recorded = bytearray()

    class Recorder:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def sendall(self, data: bytes) -> None:
            recorded.extend(data)
            self.sock.sendall(data)

        def recv_into(self, buffer: memoryview, nbytes: int = 0) -> int:
            return self.sock.recv_into(buffer, nbytes)

    a, b = socket.socketpair()
    with a, b:
        thread = threading.Thread(target=handshake.accept, args=(b, key))
        thread.start()
        handshake.prove(Recorder(a), key)
        thread.join(5)
    a, b = socket.socketpair()
    with a, b:
        refused: list[BaseException] = []

        def agent() -> None:
            try:
                handshake.accept(b, key)
            except BaseException as error:
                refused.append(error)

        thread = threading.Thread(target=agent)
        thread.start()
        a.recv(len(handshake.MAGIC) + 32)  # a fresh challenge, which the replay ignores
        a.sendall(bytes(recorded))
        thread.join(5)
        assert len(refused) == 1
        assert isinstance(refused[0], AgentAuthenticationError)


def _print_lines(count: int) -> int:
    for i in range(1, count + 1):
        print(f"line {i} of {count}")
    return count


@pytest.mark.parametrize("count", [10, 1000])
def test_no_output_line_is_lost_when_the_pool_closes_right_away(
    local_pool_factory: Factory, count: int
) -> None:
    lines: list[str] = []
    pool = local_pool_factory(
        on_event=lambda e: lines.append(e.line) if isinstance(e, LogLine) else None
    )
    with pool:
        assert sky.compute(_print_lines)(count) >> pool == count
    wanted = [f"line {i} of {count}" for i in range(1, count + 1)]
    assert [line for line in lines if line.startswith("line ")] == wanted


def _start_detached() -> tuple[int, int]:
    """A child in its own session, and a daemon whose parent already exited."""
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    launcher = subprocess.run(
        [
            sys.executable,
            "-c",
            "import subprocess; print(subprocess.Popen(['sleep', '301'], "
            "start_new_session=True, stdout=subprocess.DEVNULL, "
            "stderr=subprocess.DEVNULL).pid)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return child.pid, int(launcher.stdout)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_children_in_their_own_session_are_gone_when_the_pool_closes(
    local_pool_factory: Factory,
) -> None:
    with local_pool_factory() as pool:
        child, daemon = sky.compute(_start_detached)() >> pool
        assert not _gone(child)
        assert not _gone(daemon)
    assert wait_until(lambda: _gone(child) and _gone(daemon), 10)


def test_skyward_down_stops_detached_children(local_pool_factory: Factory) -> None:
    pool = local_pool_factory()
    pool.open()
    child, daemon = sky.compute(_start_detached)() >> pool
    provider = LocalProvider(Local(), Path(tempfile.gettempdir()))
    provider.terminate(provider.list_by_tag(pool.pool_id))
    assert wait_until(lambda: _gone(child) and _gone(daemon), 10)
    pool.close()


def _start_child_then_die() -> None:
    subprocess.Popen(["sleep", "302"], start_new_session=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _sleepers() -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] == ["sleep", "302"] and not _gone(p.pid)
    ]


def test_a_crashed_agent_is_named_and_its_children_stopped(local_pool_factory: Factory) -> None:
    with local_pool_factory(executor="thread") as pool:  # the task runs in the agent itself
        with pytest.raises(sky.WorkerLostError) as caught:
            sky.compute(_start_child_then_die)() >> pool
        assert caught.value.cause == "killed by SIGKILL"
        assert "SIGKILL" in str(caught.value)
        # the restarted agent stopped what the dead one left running
        assert wait_until(lambda: not _sleepers(), 10)
        assert sky.compute(_pid)() >> pool != 0


def _agent_lifetime(pool: sky.ComputePool) -> float:
    (agent,) = agent_processes(pool.pool_id)
    (arg,) = [a for a in agent.cmdline() if a.startswith("--lifetime=")]
    return float(arg.split("=", 1)[1])


def test_agent_lifetime_counts_from_pool_open(local_pool_factory: Factory) -> None:
    from skyward.provisioning import LIFETIME_GRACE

    with local_pool_factory(timeout=600) as pool:
        lifetime = _agent_lifetime(pool)
        assert 590 < lifetime - LIFETIME_GRACE <= 600


def test_a_call_running_at_the_pool_timeout_reports_the_timeout(
    local_pool_factory: Factory,
) -> None:
    with local_pool_factory(timeout=2) as pool, pytest.raises(sky.PoolTimeoutError):
        sky.compute(_sleep_then)(1, 30) >> pool


class _SlowTerminate(LocalProvider):
    def terminate(self, instances: Any) -> None:
        time.sleep(1.5)  # a cloud API taking its time
        super().terminate(instances)


class _SlowLocal(Local):
    def create(self) -> Any:
        return _SlowTerminate(self, Path(tempfile.gettempdir()) / "skyward-slow-cache")


def test_leaving_the_block_waits_for_a_teardown_the_timeout_started(
    local_pool_factory: Factory,
) -> None:
    finals: list[CostFinal] = []
    pool = local_pool_factory(
        provider=_SlowLocal(),
        timeout=1,
        on_event=lambda e: finals.append(e) if isinstance(e, CostFinal) else None,
    )
    with pool:
        time.sleep(1.3)  # the timer fired; its teardown is still running
    assert finals, "CostFinal came after the with block"
    assert not agent_processes(pool.pool_id)


def test_max_cost_ends_the_pool_with_budget_exceeded() -> None:
    finals: list[CostFinal] = []
    budget = HOURLY_PRICE * 2.0 / 3600  # two seconds of one node
    pool = sky.ComputePool(
        provider=Example(),
        max_cost=budget,
        display="quiet",
        on_event=lambda e: finals.append(e) if isinstance(e, CostFinal) else None,
    )
    with pool:
        lifetime = _agent_lifetime(pool)
        from skyward.provisioning import LIFETIME_GRACE

        assert lifetime - LIFETIME_GRACE <= 2.5, "the node's share of the budget bounds its life"
        with pytest.raises(sky.BudgetExceededError) as caught:
            sky.compute(_sleep_then)(1, 30) >> pool
    assert caught.value.budget == pytest.approx(budget)
    assert caught.value.spent >= budget * 0.9
    (final,) = finals
    assert final.budget == pytest.approx(budget)
    assert final.total_cost >= budget * 0.9
    assert wait_until(lambda: not agent_processes(pool.pool_id), 10)


def test_max_hourly_cost_filters_offers_before_launch() -> None:
    pool = sky.ComputePool(
        provider=Example(), nodes=2, max_hourly_cost=HOURLY_PRICE * 2 - 0.01, display="quiet"
    )
    with pytest.raises(sky.NoAvailableProviderError, match="max_hourly_cost"), pool:
        pass
    ok = sky.ComputePool(provider=Example(), nodes=2, max_hourly_cost=HOURLY_PRICE * 2)
    assert ok.spec.max_hourly_cost == HOURLY_PRICE * 2


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "5", True])
def test_budgets_are_validated(value: object) -> None:
    for name in ("max_cost", "max_hourly_cost"):
        with pytest.raises(sky.ConfigurationError, match=name):
            sky.ComputePool(provider=sky.Local(), **{name: value})


def test_reprs_hide_secrets() -> None:
    pool = sky.ComputePool(provider=sky.Local(), env={"API_TOKEN": "s3cr3t-value"})
    assert "s3cr3t-value" not in repr(pool.spec)
    from skyward.provider import AgentConfig

    config = AgentConfig(
        node=0,
        total_nodes=1,
        concurrency=1,
        job_id="j",
        head_addr="h",
        head_port=0,
        env={"API_TOKEN": "s3cr3t-value"},
    )
    assert "s3cr3t-value" not in repr(config)
    assert config.key.hex() not in repr(config)


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("no pickling here")


def _record(path: str, value: int) -> int:
    with open(path, "a") as handle:
        handle.write(f"{value}\n")
    return value


@pytest.mark.parametrize("calls", [2, 1000])
def test_a_batch_with_an_unpicklable_call_runs_none_of_it(
    local_pool_factory: Factory, tmp_path: Path, calls: int
) -> None:
    # 1000 calls go in chunks, and calls with scalar arguments are pickled only with
    # their chunk: the one that cannot be pickled must still stop the batch first.
    ran = tmp_path / "ran"
    record = sky.compute(_record)
    batch = [record(str(ran), i) for i in range(calls - 1)]
    with local_pool_factory() as pool:
        with pytest.raises(sky.SerializationError):
            sky.gather(*batch, record(_Unpicklable(), calls)) >> pool  # type: ignore[arg-type]
        time.sleep(0.5)
        assert not ran.exists()
        assert sky.gather(*batch) >> pool == tuple(range(calls - 1))
    assert len(ran.read_text().split()) == calls - 1


def test_the_key_never_reaches_the_agent_command_line_or_disk(
    local_pool_factory: Factory, tcp_agent: Any
) -> None:
    with local_pool_factory() as pool:
        key = _client(pool).config.key.hex()
        (agent,) = agent_processes(pool.pool_id)
        assert key not in " ".join(agent.cmdline())
        assert key not in str(agent.environ())
        workdir = Path(agent.cwd())
        for path in workdir.rglob("*"):
            if path.is_file():
                assert key not in path.read_text(errors="replace")
    # a raw connection gets a challenge, never a greeting it could read a pid from
    tcp, _config = tcp_agent
    with connect_loopback(tcp.endpoint.port) as raw:
        assert raw.recv(8) == handshake.MAGIC


def test_exit_causes_in_words(tmp_path: Path) -> None:
    from skyward.exit_status import describe_exit
    from skyward.messages import EXIT_NO_HEARTBEAT, EXIT_REASON_FILE

    assert describe_exit(None, tmp_path) is None
    assert describe_exit(-signal.SIGSEGV, tmp_path) == "killed by SIGSEGV"
    assert describe_exit(2, tmp_path) == "exited with code 2"
    (tmp_path / EXIT_REASON_FILE).write_text(f"{EXIT_NO_HEARTBEAT} no heartbeat for 30s\n")
    assert describe_exit(EXIT_NO_HEARTBEAT, tmp_path) == "no heartbeat for 30s"
    # a stale reason of another exit is not believed
    assert describe_exit(1, tmp_path) == "exited with code 1"


class _Broken(Local):
    """A provider whose offers always fail (an outage, a rejected credential)."""

    def create(self) -> Any:
        provider = super().create()

        def offers(spec: Any) -> Any:
            raise ProvisioningError("local", "the offers API is down")

        provider.offers = offers  # type: ignore[method-assign]
        return provider


def test_a_provider_that_cannot_be_created_does_not_stop_the_others(
    local_pool_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VERDA_CLIENT_ID", raising=False)
    monkeypatch.delenv("VERDA_CLIENT_SECRET", raising=False)
    errors: list[str] = []
    pool = local_pool_factory(
        provider=[sky.Verda(), sky.Local()],
        on_event=lambda e: errors.append(e.message) if isinstance(e, sky.Error) else None,
    )
    with pool:
        assert sky.compute(_sleep_then)(3, 0.0) >> pool == 3
    assert any("VERDA_CLIENT_ID" in message for message in errors)


@pytest.mark.parametrize("selection", ["cheapest", "available"])
def test_selection_survives_a_provider_whose_offers_fail(
    local_pool_factory: Factory, selection: str
) -> None:
    with local_pool_factory(provider=[_Broken(), sky.Local()], selection=selection) as pool:
        assert sky.compute(_sleep_then)(4, 0.0) >> pool == 4


def test_all_providers_failed_names_each_once() -> None:
    error = sky.AllProvidersFailedError(
        [("verda", sky.CapacityError("verda", "no capacity")), ("aws", ValueError("x"))]
    )
    assert "verda: no capacity" in str(error)
    assert "verda: verda" not in str(error)
    assert "aws: x" in str(error)
