"""What starting a node agent imports: only the node side and what it shares with the client.

Every pool entry starts one agent interpreter per node, and on a small machine (or for a
cached cold start) its imports are most of what opening a pool costs. These tests fail
when the agent's import path grows the client's modules again (the pool, providers,
plugins, display), or psutil / importlib.metadata before it is ready. They look at
``sys.modules`` of a fresh interpreter, not at time.

They also hold the lazy ``skyward/__init__`` to its promise: every public name still
resolves, ``dir()`` lists it, and ``sky.compute`` / ``sky.pool`` stay functions whichever
submodule was imported first.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle

import skyward as sky
from skyward.agent_process import start_agent_process, stop_process_group
from skyward.provider import AgentConfig

PACKAGE = Path(sky.__file__).resolve().parent

# The skyward modules a node agent and its worker processes may import.
AGENT_MODULES = {
    "skyward",
    "skyward.buffers",
    "skyward.cluster",
    "skyward.errors",
    "skyward.exit_status",
    "skyward.gpus",
    "skyward.handshake",
    "skyward.messages",
    "skyward.reducers",
    "skyward.refs",
    "skyward.wire",
}
# Third-party packages it may import (the rest must be the standard library).
AGENT_THIRD_PARTY = {"attr", "attrs", "cloudpickle"}
# Never before the agent is ready: each costs tens of milliseconds per agent.
NEVER = {"psutil", "pluggy", "paramiko", "rich", "importlib.metadata"}


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_the_agent_imports_only_the_node_side() -> None:
    modules = _modules_after(
        "import skyward.agent, skyward.agent.server, skyward.agent.worker, skyward.agent.workers"
    )
    ours = {m for m in modules if m == "skyward" or m.startswith("skyward.")}
    extra = {m for m in ours if not m.startswith("skyward.agent")} - AGENT_MODULES
    assert not extra, f"the agent now imports client modules: {sorted(extra)}"
    third_party = {
        m.split(".")[0]
        for m in modules - ours
        if m.split(".")[0] not in sys.stdlib_module_names and not m.startswith("_")
    }
    assert third_party <= AGENT_THIRD_PARTY, sorted(third_party - AGENT_THIRD_PARTY)
    assert not modules & NEVER, sorted(modules & NEVER)


def test_import_skyward_imports_none_of_its_modules() -> None:
    modules = _modules_after("import skyward")
    assert {m for m in modules if m.startswith("skyward.")} == set()
    assert not modules & {"attr", "attrs", "cloudpickle", "pluggy", "paramiko", "psutil"}


def test_a_started_agent_has_not_loaded_psutil(tmp_path: Path) -> None:
    config = AgentConfig(
        node=0, total_nodes=1, concurrency=1, job_id="imports", head_addr="127.0.0.1",
        head_port=0, metrics_interval=None,
    )  # fmt: skip
    agent = start_agent_process(
        sys.executable, config, cwd=tmp_path / "agent", pool_id="imports", instance_id="i-0"
    )
    try:
        maps = Path(f"/proc/{agent.endpoint.pid}/maps").read_text()
        assert "psutil" not in maps  # its C extension: imported before the ready line
    finally:
        stop_process_group(agent.process)


def test_every_public_name_resolves_and_is_listed() -> None:
    listed = dir(sky)
    for name in sky.__all__:
        assert name in listed, name
        assert getattr(sky, name) is not None, name
    names = ", ".join(sky.__all__)
    namespace: dict[str, object] = {}
    exec(f"from skyward import {names}", namespace)
    assert set(sky.__all__) <= set(namespace)


def test_compute_and_pool_stay_functions_whichever_import_came_first() -> None:
    code = (
        "import importlib, skyward as sky\n"
        "importlib.import_module('skyward.pool'); importlib.import_module('skyward.compute')\n"
        "assert callable(sky.pool) and sky.pool.__module__ == 'skyward.pool'\n"
        "assert callable(sky.compute) and sky.compute.__module__ == 'skyward.compute'\n"
        "from skyward import compute, pool\n"
        "assert compute is sky.compute and pool is sky.pool\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_function_using_the_package_pickles_it_by_reference() -> None:
    def uses_sky() -> object:
        return sky.compute

    loaded = cloudpickle.loads(cloudpickle.dumps(uses_sky))
    assert loaded() is sky.compute


def test_lazy_names_match_the_type_checking_imports() -> None:
    """``_EXPORTS`` (what runs) and the ``if TYPE_CHECKING:`` imports (what checkers and
    editors see) name the same things from the same modules."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    (block,) = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
    ]
    seen = {
        (node.module, alias.name)
        for node in block.body
        if isinstance(node, ast.ImportFrom) and node.module and node.module != "skyward"
        if node.module.startswith("skyward")
        for alias in node.names
    }
    exported = {(module, name) for module, names in sky._EXPORTS.items() for name in names}
    assert seen == exported
    assert {name for _, name in exported} | {"integrations"} == set(sky.__all__)


def test_version_matches_the_distribution() -> None:
    # The agent says skyward.__version__ in its Hello (not importlib.metadata: too slow).
    assert sky.__version__ == importlib.metadata.version("skyward-core")


def test_predecessors_are_found_by_their_marker_without_psutil() -> None:
    from skyward.agent.children import NODE_MARKER_ENV, stop_predecessors

    def sleeper(marker: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, NODE_MARKER_ENV: marker}
        return subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)

    mine, other = sleeper("imports-pool/0"), sleeper("imports-pool/1")
    try:
        time.sleep(0.1)  # exec'd: its environment is the new one
        stop_predecessors("imports-pool/0")
        assert mine.wait(timeout=5) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for process in (mine, other):
            process.kill()
            process.wait()


class _Steps:
    def __init__(self) -> None:
        self.steps: list[tuple[str, bool]] = []

    def step(self, name: str, *, cached: bool = False) -> None:
        self.steps.append((name, cached))

    def log(self, line: str) -> None:
        pass


def test_local_venvs_get_bytecode_for_what_the_agent_imports(tmp_path: Path) -> None:
    """A cached image venv built before bytecode was compiled gets it on its next use,
    once; the agent's packages only."""
    from skyward.image import Image
    from skyward.providers.local_env import AGENT_PACKAGES, ensure_environment

    assert set(AGENT_PACKAGES) >= AGENT_THIRD_PARTY
    image = Image(pip=["humanize"])
    env_dir = tmp_path / "envs" / image.content_hash()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = env_dir / "lib" / version / "site-packages"
    shutil.copytree(
        Path(cloudpickle.__file__).parent,
        site_packages / "cloudpickle",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (site_packages / "other").mkdir()
    (site_packages / "other" / "__init__.py").write_text("x = 1\n")
    (env_dir / ".skyward-ready").write_text(image.content_hash() + "\n")
    reporter = _Steps()
    python = ensure_environment(image, tmp_path, reporter)
    assert python == str(env_dir / "bin" / "python")
    assert ("deps", True) in reporter.steps
    assert list((site_packages / "cloudpickle" / "__pycache__").glob("cloudpickle.*.pyc"))
    assert not (site_packages / "other" / "__pycache__").exists()
    assert (env_dir / ".skyward-bytecode").exists()
