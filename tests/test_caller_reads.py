"""A lone call's answer is read by the thread that waits for it (no reader-thread hand-off)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import skyward as sky
from skyward import node
from tests.ssh_hosts import ClientKey

Factory = Callable[..., sky.ComputePool]


@sky.compute
def echo(x: int) -> int:
    return x


@sky.compute
def chatty(x: int) -> int:
    print(f"line {x}", flush=True)
    return x


def _finishers(events: list[tuple[str, sky.SkywardEvent]]) -> list[str]:
    return [name for name, e in events if isinstance(e, sky.TaskFinished)]


def test_the_waiting_thread_reads_its_own_answer(local_pool_factory: Factory) -> None:
    events: list[tuple[str, sky.SkywardEvent]] = []

    def record(event: sky.SkywardEvent) -> None:
        events.append((threading.current_thread().name, event))

    main = threading.current_thread().name
    with local_pool_factory(nodes=1, executor="thread", on_event=record) as pool:
        assert [echo(i) >> pool for i in range(20)] == list(range(20))
        # The reader thread may be reading a metrics sample as an answer arrives: then it
        # reads the answer too. Most answers are read by the caller.
        finishers = _finishers(events)
        assert finishers.count(main) >= 15, finishers
        events.clear()
        node.CALLER_READS = False
        try:
            assert [echo(i) >> pool for i in range(10)] == list(range(10))
        finally:
            node.CALLER_READS = True
        # Switched off, the reader thread reads (an answer in before the pool attached its
        # callback is reported by the caller).
        finishers = _finishers(events)
        assert finishers.count(main) <= 3, finishers


def test_output_arriving_while_nobody_waits_is_still_read(local_pool_factory: Factory) -> None:
    lines: list[str] = []

    def record(event: sky.SkywardEvent) -> None:
        if isinstance(event, sky.LogLine):
            lines.append(event.line)

    with local_pool_factory(nodes=1, executor="thread", on_event=record) as pool:
        future = pool.submit(chatty(7))
        time.sleep(0.5)  # nobody waits: the reader thread takes the answer and the line
        assert future.done()
        assert future.result() == 7
        assert chatty(8) >> pool == 8
        deadline = time.monotonic() + 5
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lines == ["line 7", "line 8"]


def test_two_threads_waiting_on_one_node_both_get_their_answers(
    local_pool_factory: Factory,
) -> None:
    with local_pool_factory(nodes=1, concurrency=2, executor="thread") as pool:
        results: dict[int, list[int]] = {0: [], 1: []}

        def work(k: int) -> None:
            for i in range(50):
                results[k].append(echo(100 * k + i) >> pool)

        threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results == {k: [100 * k + i for i in range(50)] for k in (0, 1)}


def test_over_ssh_the_waiting_thread_reads_its_own_answer(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    from tests.test_ssh_pool import ssh_provider

    events: list[tuple[str, sky.SkywardEvent]] = []

    def record(event: sky.SkywardEvent) -> None:
        events.append((threading.current_thread().name, event))

    provider = ssh_provider(ssh_hosts(1), ssh_client_key, ssh_known_hosts)
    main = threading.current_thread().name
    with sky.ComputePool(provider=provider, display="quiet", on_event=record) as pool:
        assert [echo(i) >> pool for i in range(20)] == list(range(20))
        finishers = _finishers(events)
        assert finishers.count(main) >= 15, finishers
        # Broken mid-read (what Ctrl-C inside a frame does): the channel is dropped, the
        # client reconnects, and the pool serves the next calls.
        client = pool._cluster.clients[0]  # type: ignore[union-attr]
        assert client._shared is not None
        client._break(client._shared[1])
        assert [echo(i) >> pool for i in range(5)] == list(range(5))
