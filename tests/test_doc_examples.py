"""Every Python example in the README and on the documentation site runs or is type-checked.

A fenced ``python`` block is one of:

- an include of a program in ``examples/`` (``--8<-- "examples/x.py"``): tests/test_examples.py
  runs those programs;
- marked on its first line ``# needs <what> (type-checked by the tests, not run)``, for code
  that needs a cloud account or machines of your own: mypy --strict checks it;
- ``# excerpt of <path>``: each line is taken from that tested file and must still be in it;
- anything else: it runs here, as a program, on ``sky.Local()``, and is type-checked too.

The generated hook reference (docs/plugins/hooks.md) shows signatures, not examples; its
test checks it against the code.
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
from attrs import frozen

from tests.conftest import agent_processes, wait_until

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SIGNATURES_ONLY = {ROOT / "docs" / "plugins" / "hooks.md"}
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.M | re.S)
NEEDS = re.compile(r"^# needs [^\n]+ \(type-checked by the tests, not run\)$")
EXCERPT = re.compile(r"^# excerpt of (\S+)$")
INCLUDE = re.compile(r'^--8<-- "([^"]+)"$')


@frozen
class Block:
    source: Path
    line: int
    code: str

    @property
    def name(self) -> str:
        return f"{self.source.relative_to(ROOT)}:{self.line}"

    @property
    def first_line(self) -> str:
        return self.code.split("\n", 1)[0].strip()

    @property
    def kind(self) -> str:
        if INCLUDE.match(self.code.strip()):
            return "include"
        if NEEDS.match(self.first_line):
            return "typecheck"
        if EXCERPT.match(self.first_line):
            return "excerpt"
        return "run"


def blocks() -> list[Block]:
    found = []
    for source in SOURCES:
        if source in SIGNATURES_ONLY:
            continue
        text = source.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Block(source, line, match.group(1)))
    return found


BLOCKS = blocks()
RUNNABLE = [b for b in BLOCKS if b.kind == "run"]


def test_examples_are_found_in_readme_and_site() -> None:
    kinds = {b.kind for b in BLOCKS}
    assert kinds == {"include", "typecheck", "excerpt", "run"}
    assert any(b.source.name == "README.md" and b.kind == "run" for b in BLOCKS)


def test_included_programs_are_the_tested_examples() -> None:
    for block in BLOCKS:
        if block.kind == "include":
            path = INCLUDE.match(block.code.strip())
            assert path is not None
            target = ROOT / path.group(1)
            assert target.parent == ROOT / "examples", block.name
            assert target.is_file(), block.name


def test_excerpts_match_their_files() -> None:
    for block in BLOCKS:
        if block.kind != "excerpt":
            continue
        match = EXCERPT.match(block.first_line)
        assert match is not None
        original = (ROOT / match.group(1)).read_text()
        for line in block.code.splitlines()[1:]:
            code = line.split("  #")[0].removesuffix(" ...").strip()
            if code and code != "...":
                assert code in original, f"{block.name}: {code!r} is not in {match.group(1)}"


def _agents_marked(marker: str) -> list[psutil.Process]:
    found = []
    for process in agent_processes():
        try:
            if process.environ().get("SKYWARD_DOC_EXAMPLE") == marker:
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.name for b in RUNNABLE])
def test_example_runs_on_local(block: Block, tmp_path: Path) -> None:
    program = tmp_path / "example.py"
    program.write_text(block.code)
    marker = uuid.uuid4().hex
    env = {**os.environ, "TERM": "dumb", "SKYWARD_DOC_EXAMPLE": marker}
    result = subprocess.run(
        [sys.executable, str(program)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert result.returncode == 0, (
        f"{block.name} failed:\n{result.stderr[-3000:]}\nAn example that needs a cloud account "
        "or machines of your own starts with the line "
        "`# needs a cloud account (type-checked by the tests, not run)`."
    )
    assert wait_until(lambda: not _agents_marked(marker), 10), f"{block.name} left agents"


@pytest.mark.slow
def test_examples_type_check(tmp_path: Path) -> None:
    checked = [b for b in BLOCKS if b.kind in ("run", "typecheck")]
    for index, block in enumerate(checked):
        # Blank lines up to the fence, so mypy's line numbers are the page's.
        padding = "\n" * block.line
        (tmp_path / f"doc_example_{index}.py").write_text(padding + block.code)
    # Frameworks the examples import (torch) are not test dependencies: they type as Any.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--ignore-missing-imports",
            "--no-warn-unused-ignores",
            "--config-file",
            os.devnull,
            "--cache-dir",
            str(ROOT / ".mypy_cache" / "doc-examples"),
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    names = {f"doc_example_{i}.py": str(b.source.relative_to(ROOT)) for i, b in enumerate(checked)}
    report = result.stdout
    for file, name in names.items():
        report = report.replace(str(tmp_path / file), name).replace(file, name)
    assert result.returncode == 0, report
