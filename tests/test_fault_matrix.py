"""The fault matrix (see tests/fault_matrix.py): every target x every fault.

One test per applicable cell; "n/a" cells are not collected (the doc gives their reason),
known-bug cells run as strict xfails. Each cell ends by checking that the target lists
nothing left for the pool, and the node-side ledger checks that no task was lost or
doubled. The suite names no provider: targets come from ``fault_matrix.TARGETS``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import skyward as sky
from tests.conftest import wait_until
from tests.do_fakes import do_fake
from tests.fault_matrix import (
    FAULT_CHECKS,
    TARGETS,
    Client,
    Fault,
    Ledger,
    Target,
    record,
    record_then_fail,
    render,
)
from tests.verda_fakes import verda_env, verda_fake

__all__ = ["do_fake", "verda_env", "verda_fake"]  # fixtures of the DigitalOcean and Verda targets

ROOT = Path(__file__).resolve().parent.parent
LEFTOVER_WAIT = 8.0  # teardown is synchronous; this covers a loaded 2-core machine's lag
CALLS = [f"call{i}" for i in range(4)]

Runner = Callable[[Target, Fault, Ledger, list[str]], None]


def _pool(target: Target, fault: Fault) -> sky.ComputePool:
    return sky.ComputePool(
        provider=target.config(),
        nodes=target.nodes_for(fault),
        display="quiet",
        **target.pool_options(),
    )


def _run_calls(pool: sky.ComputePool, ledger: Ledger) -> None:
    results = sky.gather(*(record(str(ledger), c) for c in CALLS)) >> pool
    assert list(results) == CALLS


def run_return(target: Target, fault: Fault, ledger: Ledger, pools: list[str]) -> None:
    pool = _pool(target, fault)
    try:
        with pool:
            _run_calls(pool, ledger)
    finally:
        pools.append(pool.pool_id)
    ledger.assert_once(*CALLS)


def run_exception(target: Target, fault: Fault, ledger: Ledger, pools: list[str]) -> None:
    pool = _pool(target, fault)

    def body() -> None:
        with pool:
            assert record(str(ledger), "first") >> pool == "first"
            record_then_fail(str(ledger), "failing") >> pool

    try:
        with pytest.raises(RuntimeError, match="inside the pool"):
            body()
    finally:
        pools.append(pool.pool_id)
    ledger.assert_once("first", "failing")


def _signalled(sig: signal.Signals, heartbeat: float) -> Runner:
    def run(target: Target, fault: Fault, ledger: Ledger, pools: list[str]) -> None:
        client = Client.start(target, target.nodes_for(fault), ledger, heartbeat)
        pools.append(client.pool_id)
        try:
            ledger.wait_started("in-flight")
            client.process.send_signal(sig)
            code, err = client.finish()
        finally:
            if client.process.poll() is None:
                client.process.kill()
                client.process.wait()
        if sig is signal.SIGINT:
            assert code != 0, err
            assert "KeyboardInterrupt" in err, err
        elif sig is signal.SIGTERM:
            assert code == 128 + signal.SIGTERM, err
        else:
            assert code == -signal.SIGKILL
            down = client.down(target.provider, target.down_args())
            assert down.returncode == 0, down.stderr
        ledger.assert_once("first")
        ledger.assert_cut_short("in-flight")

    return run


def run_partial_launch(target: Target, fault: Fault, ledger: Ledger, pools: list[str]) -> None:
    pool = _pool(target, fault)

    def body() -> None:
        with pool:
            record(str(ledger), "never") >> pool

    try:
        with target.partial_launch(), pytest.raises(sky.SkywardError):
            body()
    finally:
        pools.append(pool.pool_id)
    assert ledger.call_ids() == [], "no call may run on a pool that failed to open"


def run_api_faults_launch(target: Target, fault: Fault, ledger: Ledger, pools: list[str]) -> None:
    pool = _pool(target, fault)
    with target.api_faults("launch"):
        try:
            with pool:
                _run_calls(pool, ledger)
        finally:
            pools.append(pool.pool_id)
    ledger.assert_once(*CALLS)


def run_api_faults_teardown(target: Target, fault: Fault, ledger: Ledger, pools: list[str]) -> None:
    pool = _pool(target, fault)
    with contextlib.ExitStack() as faults:
        try:
            with pool:
                _run_calls(pool, ledger)
                faults.enter_context(target.api_faults("teardown"))
        finally:
            pools.append(pool.pool_id)
    ledger.assert_once(*CALLS)


def run_node_loss(target: Target, fault: Fault, ledger: Ledger, pools: list[str]) -> None:
    pool = _pool(target, fault)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            record(str(ledger), "doomed", 30) >> pool
        except BaseException as error:
            errors.append(error)

    try:
        with pool:
            caller = threading.Thread(target=call, daemon=True)
            caller.start()
            ledger.wait_started("doomed")
            target.lose_node(pool, ledger.node_of("doomed"))
            caller.join(timeout=90)
            assert not caller.is_alive(), "the call on the lost node never returned"
            assert len(errors) == 1, errors
            assert isinstance(errors[0], sky.WorkerLostError), errors
            _run_calls(pool, ledger)
    finally:
        pools.append(pool.pool_id)
    ledger.assert_cut_short("doomed")
    ledger.assert_once(*CALLS)


def run_partition(target: Target, fault: Fault, ledger: Ledger, pools: list[str]) -> None:
    pool = _pool(target, fault)
    results: list[str] = []
    try:
        with pool:
            assert record(str(ledger), "before") >> pool == "before"
            caller = threading.Thread(
                target=lambda: results.append(record(str(ledger), "across", 5) >> pool),
                daemon=True,
            )
            caller.start()
            ledger.wait_started("across")
            target.partition(3)
            caller.join(timeout=90)
            assert results == ["across"], "the call across the partition completes"
            assert record(str(ledger), "after") >> pool == "after"
    finally:
        pools.append(pool.pool_id)
    ledger.assert_once("before", "across", "after")


RUNNERS: dict[Fault, Runner] = {
    Fault.RETURN: run_return,
    Fault.EXCEPTION: run_exception,
    Fault.CTRL_C: _signalled(signal.SIGINT, heartbeat=30),
    Fault.SIGTERM: _signalled(signal.SIGTERM, heartbeat=30),
    # 300 s: the agents must not leave on their own; only the sweep may clean up
    Fault.SIGKILL_DOWN: _signalled(signal.SIGKILL, heartbeat=300),
    Fault.PARTIAL_LAUNCH: run_partial_launch,
    Fault.API_FAULTS_LAUNCH: run_api_faults_launch,
    Fault.API_FAULTS_TEARDOWN: run_api_faults_teardown,
    Fault.NODE_LOSS: run_node_loss,
    Fault.PARTITION: run_partition,
}


def _cells() -> list[object]:
    cells: list[object] = []
    for target in TARGETS:
        for fault in Fault:
            if fault in target.not_applicable:
                continue  # documented "n/a" with its reason; nothing to run
            marks = []
            if fault in target.known_bugs:
                marks.append(pytest.mark.xfail(strict=True, reason=target.known_bugs[fault]))
            cells.append(pytest.param(target, fault, id=f"{target.name}-{fault.name}", marks=marks))
    return cells


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    made = Ledger.fresh()
    yield made
    made.remove()


def _assert_nothing_left(target: Target, pool_id: str) -> None:
    empty: dict[str, list[str]] = {kind: [] for kind in target.leftovers(pool_id)}
    wait_until(lambda: target.leftovers(pool_id) == empty, LEFTOVER_WAIT, 0.25)
    assert target.leftovers(pool_id) == empty


@pytest.mark.parametrize(("target_type", "fault"), _cells())
def test_cell(
    target_type: type[Target], fault: Fault, ledger: Ledger, request: pytest.FixtureRequest
) -> None:
    target = target_type()
    target.setup(request, fault)
    pools: list[str] = []
    try:
        RUNNERS[fault](target, fault, ledger, pools)
        for pool_id in pools:
            assert pool_id, "the pool never got an id"
            _assert_nothing_left(target, pool_id)
    finally:
        for pool_id in pools:
            if pool_id:
                target.cleanup(pool_id)


def test_every_fault_has_a_runner_and_a_description() -> None:
    assert set(RUNNERS) == set(Fault)
    assert set(FAULT_CHECKS) == set(Fault)
    for target in TARGETS:
        assert not set(target.not_applicable) & set(target.known_bugs), target.name


def test_the_ledger_catches_lost_doubled_and_unfinished_calls(ledger: Ledger) -> None:
    """The checks the cells rely on can fail: a ledger written by hand, as nodes would."""
    (ledger.directory / "once").write_text("start 0\nend 0\n")
    (ledger.directory / "doubled").write_text("start 0\nend 0\nstart 1\nend 1\n")
    (ledger.directory / "cut").write_text("start 1\n")
    (ledger.directory / "rerun").write_text("start 0\nstart 1\n")
    ledger.assert_once("once")
    ledger.assert_cut_short("cut")
    assert ledger.node_of("cut") == 1
    checks: list[tuple[Callable[[str], None], str]] = [
        (ledger.assert_once, "doubled"),
        (ledger.assert_once, "cut"),
        (ledger.assert_once, "lost"),
        (ledger.assert_cut_short, "rerun"),
        (ledger.assert_cut_short, "once"),
        (ledger.assert_cut_short, "lost"),
    ]
    for check, call_id in checks:
        with pytest.raises(AssertionError, match=call_id):
            check(call_id)


def test_the_reliability_doc_is_current() -> None:
    actual = (ROOT / "docs" / "reliability.md").read_text()
    assert actual == render(), "run `make reliability-doc` to regenerate docs/reliability.md"
