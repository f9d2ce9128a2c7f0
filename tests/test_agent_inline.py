"""One thread worker: the thread that reads a call runs it (no hand-off on the way in).

What must hold all the same: prints travel before the result, the worker index is the
slot's, and a long call does not leave the connection unread (heartbeats, cancellations of
queued calls, calls queued behind it).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from skyward import cluster, handshake, messages, wire
from skyward.agent_process import (
    AgentProcess,
    connect_loopback,
    start_agent_process,
    stop_process_group,
)
from skyward.provider import AgentConfig
from tests.test_agent import _config as agent_config

# Raw tasks bypass @sky.compute, which would register this module by value itself.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _config(**overrides: object) -> AgentConfig:
    """An agent with one thread worker unless told otherwise (the inline path)."""
    return agent_config(**{"executor": "thread", **overrides})


Session = tuple[AgentProcess, wire.FrameReader, wire.FrameWriter]


@pytest.fixture
def session(tmp_path: Path) -> Iterator[object]:
    started: list[AgentProcess] = []

    def run(config: AgentConfig) -> Session:
        agent = start_agent_process(
            sys.executable,
            config,
            cwd=tmp_path / f"agent{len(started)}",
            pool_id="test-pool",
            instance_id=f"i-{len(started)}",
            base_env=dict(os.environ),
        )
        started.append(agent)
        sock = connect_loopback(agent.endpoint.port)
        handshake.prove(sock, config.key)
        reader, writer = wire.FrameReader(sock), wire.FrameWriter(sock)
        assert isinstance(reader.read(), messages.Hello)
        return agent, reader, writer

    yield run
    for agent in started:
        stop_process_group(agent.process)


def _reconnect(agent: AgentProcess, config: AgentConfig) -> tuple[messages.Hello, Session]:
    sock = connect_loopback(agent.endpoint.port)
    handshake.prove(sock, config.key)
    reader, writer = wire.FrameReader(sock), wire.FrameWriter(sock)
    hello = reader.read()
    assert isinstance(hello, messages.Hello)
    return hello, (agent, reader, writer)


def _call(task_id: int, fn: object, *args: object) -> messages.Task:
    return messages.Task(task_id, messages.Payload.of((fn, args, {})))


def _result(reader: wire.FrameReader) -> messages.Result:
    while True:
        message = reader.read()
        if isinstance(message, messages.Result):
            return message


def _print_lines(count: int) -> str:
    for index in range(count):
        print(f"line {index}")
    return "done"


def _where() -> tuple[int, int]:
    info = cluster.instance_info()
    return info.worker, info.workers_per_node


def _thread_name() -> str:
    import threading

    return threading.current_thread().name


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_prints_arrive_before_the_result(session, executor: str) -> None:  # type: ignore[no-untyped-def]
    _agent, reader, writer = session(_config(executor=executor))
    for task_id in range(1, 4):
        writer.send(_call(task_id, _print_lines, 300))
        lines: list[str] = []
        while True:
            message = reader.read()
            if isinstance(message, messages.Log):
                lines.append(message.line)
            elif isinstance(message, messages.Result):
                break
        assert message.id == task_id
        assert message.value is not None
        assert message.value.open() == "done"
        assert lines == [f"line {index}" for index in range(300)]


def test_the_call_runs_as_the_slots_worker(session) -> None:  # type: ignore[no-untyped-def]
    _agent, reader, writer = session(_config())
    for task_id in (1, 2):
        writer.send(_call(task_id, _where))
        result = _result(reader)
        assert result.value is not None
        assert result.value.open() == (0, 1)
    # Run by the thread that read it, not handed to the slot's own thread ("w0").
    writer.send(_call(3, _thread_name))
    result = _result(reader)
    assert result.value is not None
    assert result.value.open() != "w0"


def test_pipelined_calls_are_all_answered_in_order(session) -> None:  # type: ignore[no-untyped-def]
    _agent, reader, writer = session(_config())
    for task_id in range(1, 201):
        writer.send(_call(task_id, _nap, 0.0))
    answered = [_result(reader).id for _ in range(200)]
    assert answered == list(range(1, 201))


def test_a_long_call_leaves_the_connection_read(session) -> None:  # type: ignore[no-untyped-def]
    # The heartbeat timeout is shorter than the call: only heartbeats read while it runs
    # keep the agent alive.
    agent, reader, writer = session(_config(heartbeat_timeout=1.0))
    started = time.monotonic()
    writer.send(_call(1, _nap, 2.5))
    time.sleep(0.3)
    writer.send(_call(2, _nap, 0.0))  # queued behind the running call
    writer.send(_call(3, _nap, 0.0))
    writer.send(messages.Cancel(2))
    first = _result(reader)
    # The cancellation was read while call 1 ran: answered long before it ends.
    assert first.id == 2
    assert first.failure is not None
    assert first.failure.type_name.endswith("CancelledError")
    assert time.monotonic() - started < 2.0
    while time.monotonic() - started < 2.2:
        writer.send(messages.Heartbeat())
        time.sleep(0.2)
    answers = {}
    for _ in range(2):
        result = _result(reader)
        answers[result.id] = result
    assert sorted(answers) == [1, 3]  # 3 ran after 1, on the slot's own thread
    assert answers[1].value is not None
    assert answers[1].value.open() == 2.5
    assert agent.process.poll() is None
    # The thread now reading the connection runs the next call itself, as the first did.
    writer.send(_call(4, _where))
    result = _result(reader)
    assert result.id == 4
    assert result.value is not None
    assert result.value.open() == (0, 1)


def _say(text: str) -> str:
    print(text)
    return text


def test_thread_workers_drain_output_at_the_same_time(session) -> None:  # type: ignore[no-untyped-def]
    # Two worker threads answer calls at once: each result's drain of the output pipes
    # runs in its own thread, concurrently with the other's.
    _agent, reader, writer = session(_config(concurrency=2))
    count = 400
    for task_id in range(1, count + 1):
        writer.send(_call(task_id, _say, f"said {task_id}"))
    results: set[int] = set()
    lines: set[str] = set()
    deadline = time.monotonic() + 60
    while len(results) < count and time.monotonic() < deadline:
        message = reader.read()
        if isinstance(message, messages.Result):
            assert message.failure is None, message.failure
            assert f"said {message.id}" in lines  # its line came before it
            results.add(message.id)
        elif isinstance(message, messages.Log):
            lines.add(message.line)
    assert results == set(range(1, count + 1))


@pytest.mark.parametrize("close_after", [0.01, 0.4])
def test_a_dropped_connection_keeps_the_calls_result(session, close_after: float) -> None:  # type: ignore[no-untyped-def]
    # The connection drops while the thread that read the call runs it: before the
    # watchdog let another thread read on (0.01 s), or after (0.4 s). Either way the
    # result waits for the next connection, which is told the call is running.
    config = _config()
    agent, reader, writer = session(config)
    writer.send(_call(1, _nap, 0.8))
    time.sleep(close_after)
    reader._stream.close()  # type: ignore[attr-defined]
    hello, (_, reader, writer) = _reconnect(agent, config)
    assert 1 in hello.inflight + hello.completed
    result = _result(reader)
    assert result.id == 1
    assert result.value is not None
    assert result.value.open() == 0.8
    writer.send(messages.Ack((1,)))
    writer.send(_call(2, _where))  # and the agent runs calls as before
    result = _result(reader)
    assert result.id == 2
    assert result.value is not None
    assert result.value.open() == (0, 1)
