"""The ``skyward`` command run as a user runs it: a fresh process, its output captured."""

from __future__ import annotations

import subprocess
import sys

__all__ = ["skyward_cli"]


def skyward_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m skyward.cli ARGS``; the caller checks the exit status (and can show
    stderr when it is not 0)."""
    return subprocess.run(
        [sys.executable, "-m", "skyward.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
