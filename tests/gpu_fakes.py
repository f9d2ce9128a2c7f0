"""Fixtures for GPU tests without a GPU: the fake ``nvidia-smi`` and its machines.

``tests/bin/nvidia-smi`` is the fake (``tests/fake_nvidia_smi.py``); ``tests/data/nvidia-smi/``
holds one directory per machine (see its README for where the outputs come from).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
FAKE_SMI = TESTS / "bin" / "nvidia-smi"
MACHINES = TESTS / "data" / "nvidia-smi"


def smi_env(machine: str | Path, **extra: str) -> dict[str, str]:
    """Environment that makes Skyward (and the MIG step) run the fake against ``machine``
    (a directory name under ``tests/data/nvidia-smi`` or a path). Nothing else of the test
    runner's environment leaks in (a real ``CUDA_VISIBLE_DEVICES`` would change answers)."""
    path = Path(machine) if Path(machine).is_absolute() else MACHINES / machine
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "SKYWARD_NVIDIA_SMI": str(FAKE_SMI),
        "FAKE_NVIDIA_SMI_MACHINE": str(path),
        "FAKE_NVIDIA_SMI_PYTHON": sys.executable,
        **extra,
    }


def copy_machine(name: str, into: Path) -> Path:
    """A writable copy of a machine (the MIG commands change its ``machine.json``)."""
    target = into / name
    shutil.copytree(MACHINES / name, target)
    return target


def machine_state(path: Path) -> dict[str, object]:
    state: dict[str, object] = json.loads((path / "machine.json").read_text())
    return state
