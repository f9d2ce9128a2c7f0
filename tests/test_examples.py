"""The README's first command runs examples/hello.py; it must work and say what it did."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import agent_processes

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
