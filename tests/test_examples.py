"""Every program in examples/ runs and says what it did; none leaves an agent behind.

The README's first command runs examples/hello.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from tests.conftest import agent_processes, wait_until

ROOT = Path(__file__).resolve().parent.parent


def test_hello_example_runs_on_three_local_nodes() -> None:
    env = {**os.environ, "TERM": "dumb"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "hello.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    out = result.stdout
    assert "hello everyone from node 0 of 3" in out
    assert "hello everyone from node 1 of 3" in out
    assert "hello everyone from node 2 of 3" in out
    assert "3² + 4² = 25" in out
    assert "squares: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in out
    assert "sum of 0..999 = 499500" in out
    # The display goes to stderr as plain lines: no escape codes off a terminal.
    assert "infrastructure ready in local" in result.stderr
    assert "cost $0.0000" in result.stderr
    assert "\x1b" not in result.stderr
    pool_id = re.search(r"provisioned: (sky-[0-9a-f]+)-node0", result.stderr)
    assert pool_id is not None
    assert agent_processes(pool_id.group(1)) == []


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make example", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


# -- one program per README section --------------------------------------------------------

EXPECTED: dict[str, list[str]] = {
    "operators.py": [
        "one worker: 49",
        "every node: (4, 4)",
        "in parallel: 9 16",
        "gather: (0, 1, 4, 9, 16)",
        "gather, as completed: [0, 1, 4, 9, 16]",
        "gather, errors kept: [0, 1, 2, 'ValueError', 4]",
        "submit: 81",
        "map: [0, 1, 4, 9, 16, 25]",
    ],
    "sharding.py": [
        "node 0: 334 numbers, sum 55611",
        "node 1: 333 numbers, sum 166500",
        "node 2: 333 numbers, sum 277389",
        "total: 499500 expected: 499500",
        "shards aligned: True",
        "locally: (0, 1000, 499500)",
    ],
    "cluster_info.py": [
        "node 0/2 (head), worker 0 of 2",
        "node 0/2 (head), worker 1 of 2",
        "node 1/2 (worker node), worker 0 of 2",
        "node 1/2 (worker node), worker 1 of 2",
        "accelerator None",
    ],
    "events_and_callbacks.py": [
        "node 0 said: HELLO",
        "node 1 said: HELLO",
        "the pool cost $0.0000",
        "InstanceProvisioned: 2",
        "BootstrapCompleted: 2",
        "LogLine: 2",
        "CostFinal: 1",
    ],
    "fallback.py": [
        "hello from the provider that worked",
        "first provider failed: ssh: cannot connect to",
        "the connection was refused",
    ],
    "timeouts_and_budget.py": [
        "timed out: node 0, worker 0: the call ran past its timeout of 1s",
        "succeeded on attempt 3",
    ],
}


def _agents_marked(marker: str) -> list[str]:
    """Agents started by one example run: they inherit its environment, marker included."""
    found = []
    for process in agent_processes():
        try:
            if process.environ().get("SKYWARD_EXAMPLE_RUN") == marker:
                found.append(str(process.pid))
        except psutil.Error:
            continue
    return found


# Programs whose frameworks make them slow to run: their own tests run them.
TESTED_ELSEWHERE = {
    "torch_ddp.py": "tests/test_integrations_examples.py",
    "sklearn_grid_search.py": "tests/test_integrations_examples.py",
}


def test_every_example_program_is_tested() -> None:
    programs = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert programs == {"hello.py", *EXPECTED, *TESTED_ELSEWHERE}
    for program, test in TESTED_ELSEWHERE.items():
        assert f'"{program}"' in (ROOT / test).read_text(), f"{test} does not run {program}"


@pytest.mark.parametrize("program", sorted(EXPECTED))
def test_example_program_runs_and_says_what_it_did(program: str) -> None:
    marker = uuid.uuid4().hex
    env = {**os.environ, "TERM": "dumb", "SKYWARD_EXAMPLE_RUN": marker}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / program)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for expected in EXPECTED[program]:
        assert expected in result.stdout, f"{expected!r} not in:\n{result.stdout}"
    assert wait_until(lambda: not _agents_marked(marker), 10), "an agent outlived its example"
