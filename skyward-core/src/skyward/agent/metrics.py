"""Resource samples a node streams to the client (``Metrics`` events)."""

from __future__ import annotations

from typing import Any

from skyward import messages
from skyward.gpus import per_gpu_metrics

__all__ = ["sample"]


def sample(psutil: Any) -> messages.Sample:
    """CPU and memory of the machine, and each GPU the node sees (the first also in the
    flat ``gpu_*`` fields)."""
    memory = psutil.virtual_memory()
    gpus = tuple(
        messages.GpuSample(
            index=int(g["index"]),
            utilization=g.get("utilization"),
            memory_used_mb=g.get("memory_used_mb"),
            memory_total_mb=g.get("memory_total_mb"),
            temperature=g.get("temperature_c"),
        )
        for g in per_gpu_metrics()
    )
    first = gpus[0] if gpus else None
    return messages.Sample(
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        memory_percent=float(memory.percent),
        memory_used_mb=(memory.total - memory.available) / 2**20,
        memory_total_mb=memory.total / 2**20,
        gpu_utilization=first.utilization if first else None,
        gpu_memory_used_mb=first.memory_used_mb if first else None,
        gpu_memory_total_mb=first.memory_total_mb if first else None,
        gpu_temperature=first.temperature if first else None,
        gpus=gpus,
    )
