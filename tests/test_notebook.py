"""Notebooks: examples/notebook.ipynb runs in a real Jupyter kernel (nbclient), and
interrupting or restarting a kernel that has a pool open leaves no node running.

Kernels talk to the test over IPC sockets in a temporary directory, not TCP.
"""

from __future__ import annotations

import os
import queue
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from tests.conftest import agent_processes, wait_until

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "notebook.ipynb"


def _marked_agents(marker: str) -> list[psutil.Process]:
    """Agents started from one kernel: they inherit its environment, marker included."""
    found = []
    for process in agent_processes():
        try:
            if process.environ().get("SKYWARD_NOTEBOOK_TEST") == marker:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _kernel_env(marker: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "SKYWARD_NOTEBOOK_TEST": marker, "TERM": "dumb", **extra}


def _manager(tmp_path: Path) -> KernelManager:
    return KernelManager(
        kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel"), cache_ports=False
    )


def _text(outputs: list[Any]) -> str:
    parts = []
    for output in outputs:
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def test_example_notebook_runs_in_a_jupyter_kernel(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    km = _manager(tmp_path)
    client = NotebookClient(
        notebook, km=km, timeout=180, resources={"metadata": {"path": tmp_path}}
    )
    client.execute(env=_kernel_env(marker))
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    outputs = {cell.source.splitlines()[0]: _text(cell.outputs) for cell in code}
    # Functions defined in a cell ran on the nodes (pickled by value).
    assert outputs["square(7) >> pool"] == "49"
    assert outputs["where() @ pool"] == "('node 0 of 2', 'node 1 of 2')"
    assert outputs["sky.gather(*(square(i) for i in range(10))) >> pool"] == (
        "(0, 1, 4, 9, 16, 25, 36, 49, 64, 81)"
    )
    assert outputs["list(pool.map(square, range(5)))"] == "[0, 1, 4, 9, 16]"
    # The display rendered inside the notebook, as rich output under the cells.
    opened = next(cell for cell in code if cell.source.startswith("pool = "))
    assert any("text/html" in o.get("data", {}) for o in opened.outputs)
    assert "infrastructure ready in local" in _text(opened.outputs)
    assert "cost $0.0000" in outputs["pool.close()"]
    assert wait_until(lambda: not _marked_agents(marker), 10)


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[tuple[KernelManager, BlockingKernelClient, str]]:
    marker = uuid.uuid4().hex
    km = _manager(tmp_path)
    km.start_kernel(env=_kernel_env(marker, SKYWARD_HEARTBEAT_TIMEOUT="4"), cwd=str(tmp_path))
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    try:
        yield km, kc, marker
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)
        # Whatever the test did, nothing it started may survive it.
        assert wait_until(lambda: not _marked_agents(marker), 30)


def _run(kc: BlockingKernelClient, code: str, timeout: float = 120) -> dict[str, Any]:
    reply: dict[str, Any] = kc.execute_interactive(
        code, timeout=timeout, output_hook=lambda _: None
    )
    assert reply["content"]["status"] == "ok", reply["content"]
    return reply


def _wait_reply(kc: BlockingKernelClient, msg_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply: dict[str, Any] = kc.get_shell_msg(timeout=1)
        except queue.Empty:
            continue
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply
    raise AssertionError("no reply from the kernel")


SETUP = """
import time
import skyward as sky

@sky.compute
def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
"""


def test_interrupt_stops_the_call_and_a_with_block_closes_its_pool(
    kernel: tuple[KernelManager, BlockingKernelClient, str],
) -> None:
    km, kc, marker = kernel
    _run(kc, SETUP)
    msg_id = kc.execute(
        'with sky.ComputePool(provider=sky.Local(), nodes=2, display="quiet") as pool:\n'
        "    slow(600) @ pool\n"
    )
    assert wait_until(lambda: len(_marked_agents(marker)) == 2, 60), "the pool never started"
    time.sleep(0.5)  # the calls are on their way
    km.interrupt_kernel()  # what Ctrl-C / the stop button does
    reply = _wait_reply(kc, msg_id, 60)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert wait_until(lambda: not _marked_agents(marker), 20), "agents outlived the interrupt"
    # The kernel is still usable afterwards.
    _run(kc, "assert 1 + 1 == 2")


def test_interrupt_cancels_the_call_of_an_open_pool_which_stays_usable(
    kernel: tuple[KernelManager, BlockingKernelClient, str], tmp_path: Path
) -> None:
    km, kc, marker = kernel
    _run(kc, SETUP)
    _run(kc, 'pool = sky.ComputePool(provider=sky.Local(), nodes=1, display="quiet")\npool.open()')
    # The call writes its worker's pid, sleeps, then writes a file: its side effect.
    side_effect = tmp_path / "side-effect"
    msg_id = kc.execute(
        "@sky.compute\n"
        "def write_later(path):\n"
        "    import os, pathlib\n"
        "    pathlib.Path(path + '.pid').write_text(str(os.getpid()))\n"
        "    time.sleep(4)\n"
        "    pathlib.Path(path).write_text('ran to its end')\n"
        f"write_later({str(side_effect)!r}) >> pool\n"
    )
    pid_file = Path(f"{side_effect}.pid")
    assert wait_until(pid_file.exists, 60), "the call never started"
    started = time.monotonic()
    worker = int(pid_file.read_text())
    km.interrupt_kernel()  # what the stop button does
    reply = _wait_reply(kc, msg_id, 60)
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    # The interrupt cancelled the call on its node: its worker process is gone...
    assert wait_until(lambda: not psutil.pid_exists(worker) or _zombie(worker), 15)
    # ...a later cell uses the same pool...
    _run(kc, "assert pool.is_active\nassert slow(0.1) >> pool == 0.1")
    # ...and past the call's sleep, with the pool still open, nothing wrote the file.
    time.sleep(max(0.0, started + 5 - time.monotonic()))
    assert not side_effect.exists(), "the interrupted call ran on"
    _run(kc, "pool.close()", timeout=60)
    assert wait_until(lambda: not _marked_agents(marker), 20)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("now", [False, True], ids=["restart", "restart-kill"])
def test_kernel_restart_leaves_nothing_running(
    kernel: tuple[KernelManager, BlockingKernelClient, str], now: bool
) -> None:
    km, kc, marker = kernel
    _run(kc, SETUP)
    _run(kc, 'pool = sky.ComputePool(provider=sky.Local(), nodes=2, display="quiet")\npool.open()')
    kc.execute("slow(600) @ pool")
    assert wait_until(lambda: len(_marked_agents(marker)) == 2, 30)
    # A restart asks the kernel to shut down (its atexit hook closes the pool); with
    # now=True the kernel is killed outright and the nodes stop on their own when the
    # heartbeats stop (SKYWARD_HEARTBEAT_TIMEOUT=4 here, 30 by default).
    km.restart_kernel(now=now)
    limit = 20 if not now else 40
    assert wait_until(lambda: not _marked_agents(marker), limit), "agents outlived the kernel"
