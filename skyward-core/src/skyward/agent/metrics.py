"""Resource samples a node streams to the client (``Metrics`` events)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from skyward import messages

__all__ = ["sample"]


def sample(psutil: Any) -> messages.Sample:
    memory = psutil.virtual_memory()
    gpu = _gpu_sample()
    return messages.Sample(
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        memory_percent=float(memory.percent),
        memory_used_mb=(memory.total - memory.available) / 2**20,
        memory_total_mb=memory.total / 2**20,
        **gpu,
    )


def _gpu_sample() -> dict[str, float | None]:
    """First GPU's figures from ``nvidia-smi``; empty where there is no NVIDIA GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {}
    query = "utilization.gpu,memory.used,memory.total,temperature.gpu"
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        util, used, total, temp = (float(v) for v in out.splitlines()[0].split(","))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {}
    return {
        "gpu_utilization": util,
        "gpu_memory_used_mb": used,
        "gpu_memory_total_mb": total,
        "gpu_temperature": temp,
    }
