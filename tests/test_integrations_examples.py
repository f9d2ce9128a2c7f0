"""The integration examples run as a new user would run them, and say they worked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "TERM": "dumb"},
        check=True,
    )
    return result.stdout


@pytest.mark.slow
def test_torch_ddp_example() -> None:
    out = _run("torch_ddp.py")
    assert "identical weights on every rank: True" in out
    assert all(f"rank {r}:" in out for r in range(4))


@pytest.mark.slow
def test_sklearn_grid_search_example() -> None:
    assert "same as local: True" in _run("sklearn_grid_search.py")
