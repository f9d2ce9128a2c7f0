"""``@sky.integrations.transformers``: Hugging Face ``Trainer`` runs distributed.

The Trainer (through accelerate) switches to distributed data parallel when it finds
torchrun's environment and reuses a process group that already exists; this sets both up
exactly as :func:`skyward_integrations.torch.torch` does, so a ``Trainer`` built inside the
function trains on every worker with its data sharded per rank.
"""

from __future__ import annotations

from typing import Any

from skyward_integrations._distributed import DEFAULT_TIMEOUT
from skyward_integrations.torch import torch

__all__ = ["transformers"]


def transformers(
    fn: Any = None, /, *, backend: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> Any:
    """Set up torch.distributed for Hugging Face's ``Trainer`` on every worker.

    :param backend: ``"nccl"`` or ``"gloo"`` (default: nccl on GPUs, else gloo); pass the
        same to ``TrainingArguments(ddp_backend=...)``.
    :param timeout: seconds every rank waits for the others.
    """
    return torch(fn, backend=backend, timeout=timeout)
