"""The node agent on its own: protocol, watchdog, lifetime, output capture, loopback only."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import psutil
import pytest

from skyward import handshake, messages, wire
from skyward.agent_process import (
    AgentProcess,
    connect_loopback,
    start_agent_process,
    stop_process_group,
)
from skyward.messages import EXIT_LIFETIME, EXIT_NO_HEARTBEAT
from skyward.provider import AgentConfig
from tests.conftest import wait_until

# Raw tasks bypass @sky.compute, which would register this module by value itself.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _config(**overrides: object) -> AgentConfig:
    values: dict[str, object] = {
        "node": 0,
        "total_nodes": 1,
        "concurrency": 1,
        "job_id": "job",
        "head_addr": "127.0.0.1",
        "head_port": 0,
        "metrics_interval": None,
    }
    values.update(overrides)
    return AgentConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    started: list[AgentProcess] = []

    def run(config: AgentConfig, env: dict[str, str] | None = None) -> AgentProcess:
        import os

        agent = start_agent_process(
            sys.executable,
            config,
            cwd=tmp_path / f"agent{len(started)}",
            pool_id="test-pool",
            instance_id=f"i-{len(started)}",
            base_env={**os.environ, **(env or {})},
        )
        started.append(agent)
        return agent

    yield run
    for agent in started:
        stop_process_group(agent.process)


def _session(agent: AgentProcess, config: AgentConfig) -> tuple[wire.FrameReader, wire.FrameWriter]:
    sock = connect_loopback(agent.endpoint.port)
    handshake.prove(sock, config.key)
    reader, writer = wire.FrameReader(sock), wire.FrameWriter(sock)
    hello = reader.read()
    assert isinstance(hello, messages.Hello)
    assert hello.pid == agent.process.pid
    return reader, writer


def _call(fn: object, *args: object) -> messages.Task:
    return messages.Task(1, messages.Payload.of((fn, args, {})))


def _echo_from_child(text: str) -> int:
    return subprocess.run(["echo", text], check=True).returncode


def test_listens_on_loopback_only(start) -> None:  # type: ignore[no-untyped-def]
    agent = start(_config())
    listening = [
        c.laddr
        for c in psutil.Process(agent.process.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening
    assert {address.ip for address in listening} == {"127.0.0.1"}


def test_runs_a_task_and_streams_child_output(start) -> None:  # type: ignore[no-untyped-def]
    config = _config()
    agent = start(config)
    reader, writer = _session(agent, config)
    writer.send(_call(_echo_from_child, "from-a-child-process"))
    seen: list[object] = []
    while not any(isinstance(m, messages.Result) for m in seen) or not any(
        isinstance(m, messages.Log) for m in seen
    ):
        seen.append(reader.read())
    result = next(m for m in seen if isinstance(m, messages.Result))
    assert result.value is not None
    assert result.value.open() == 0
    logs = [m for m in seen if isinstance(m, messages.Log)]
    assert logs[0].line == "from-a-child-process"
    assert logs[0].stream == "stdout"


def test_exits_without_heartbeats(start) -> None:  # type: ignore[no-untyped-def]
    agent = start(_config(heartbeat_timeout=1.0))
    started = time.monotonic()
    agent.process.wait(timeout=10)
    assert time.monotonic() - started < 3
    assert agent.process.returncode == EXIT_NO_HEARTBEAT


def test_heartbeats_keep_it_alive(start) -> None:  # type: ignore[no-untyped-def]
    config = _config(heartbeat_timeout=1.0)
    agent = start(config)
    _, writer = _session(agent, config)
    for _ in range(10):
        writer.send(messages.Heartbeat())
        time.sleep(0.2)
    assert agent.process.poll() is None


def test_lifetime_is_hard_even_with_heartbeats(start) -> None:  # type: ignore[no-untyped-def]
    config = _config(heartbeat_timeout=5.0, lifetime=1.0)
    agent = start(config)
    _, writer = _session(agent, config)
    deadline = time.monotonic() + 6
    while agent.process.poll() is None and time.monotonic() < deadline:
        writer.send(messages.Heartbeat())
        time.sleep(0.2)
    assert agent.process.poll() == EXIT_LIFETIME


def test_poweroff_on_expire_runs_the_poweroff_command(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "powered-off"
    agent = start(
        _config(heartbeat_timeout=1.0, on_expire="poweroff"),
        env={"SKYWARD_POWEROFF_CMD": f"touch {marker}"},
    )
    agent.process.wait(timeout=10)
    assert marker.exists()


def test_expiry_kills_what_tasks_started(start) -> None:  # type: ignore[no-untyped-def]
    config = _config(heartbeat_timeout=1.5)
    agent = start(config)
    _reader, writer = _session(agent, config)
    writer.send(_call(subprocess.Popen, ["sleep", "300"]))
    assert wait_until(lambda: bool(psutil.Process(agent.process.pid).children()), 5)
    child = psutil.Process(agent.process.pid).children()[0]
    agent.process.wait(timeout=10)
    assert wait_until(lambda: not child.is_running() or child.status() == "zombie", 5)


def test_shutdown_message_stops_it(start) -> None:  # type: ignore[no-untyped-def]
    config = _config()
    agent = start(config)
    _, writer = _session(agent, config)
    writer.send(messages.Shutdown())
    assert agent.process.wait(timeout=10) == 0


def test_secrets_in_env_stay_off_the_command_line(start) -> None:  # type: ignore[no-untyped-def]
    agent = start(_config(env={"API_TOKEN": "s3cr3t-value"}))
    assert "s3cr3t-value" not in " ".join(psutil.Process(agent.process.pid).cmdline())
    assert psutil.Process(agent.process.pid).environ()["API_TOKEN"] == "s3cr3t-value"
