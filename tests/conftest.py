"""Fixtures shared by every test module.

Helpers that find leftover node agents live here so every teardown test asks the same
question the same way: is any ``skyward.agent`` process of this pool still alive?
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

import skyward as sky
from skyward import plugins


def agent_processes(pool_id: str | None = None) -> list[psutil.Process]:
    """Live agent processes (of one pool, or of any pool)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if "skyward.agent" not in (process.info["cmdline"] or []):
                continue
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            owner = process.environ().get("SKYWARD_POOL_ID")
        except psutil.Error:
            continue
        if pool_id is None or owner == pool_id:
            found.append(process)
    return found


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@pytest.fixture
def events() -> list[Any]:
    """A list that a pool's ``on_event`` can append to."""
    return []


@pytest.fixture
def fresh_plugins() -> Iterator[None]:
    """A fresh plugin manager for the test, and again after it."""
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def local_pool_factory() -> Iterator[Callable[..., sky.ComputePool]]:
    """Make quiet Local pools; fails the test if any leaves an agent behind."""
    made: list[sky.ComputePool] = []

    def make(**options: Any) -> sky.ComputePool:
        options.setdefault("display", "quiet")
        pool = sky.ComputePool(provider=options.pop("provider", sky.Local()), **options)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()
        if pool.pool_id:
            assert wait_until(lambda p=pool: not agent_processes(p.pool_id), 10), (
                f"agents of {pool.pool_id} still alive"
            )


@pytest.fixture(autouse=True, scope="session")
def _quick_metrics() -> Iterator[None]:
    os.environ.setdefault("SKYWARD_METRICS_INTERVAL", "0.5")
    return
