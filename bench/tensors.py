"""Tensor transfer on Local: a torch CPU tensor against a numpy array of the same size,
as an argument and as a result, interleaved in one run.

``python -m bench.tensors [MiB] [rounds]`` prints MiB/s per row and torch's share of
numpy's rate. :func:`measure` is what ``make bench`` runs (``bench/tools.py``).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import skyward as sky

MiB = 2**20


@sky.compute
def nbytes_of(value: Any) -> int:
    """The argument direction: receive the value, answer its size."""
    return int(value.nbytes if hasattr(value, "nbytes") else value.numel() * value.element_size())


@sky.compute
def make(kind: str, nbytes: int) -> Any:
    """The result direction: build the value on the node and send it back."""
    if kind == "torch":
        import torch

        return torch.ones(nbytes // 4, dtype=torch.float32)
    import numpy as np

    return np.ones(nbytes // 4, dtype=np.float32)


def _values(nbytes: int) -> dict[str, Any]:
    import numpy as np
    import torch

    return {
        "numpy": np.ones(nbytes // 4, dtype=np.float32),
        "torch": torch.ones(nbytes // 4, dtype=torch.float32),
    }


def measure(pool: sky.ComputePool, nbytes: int, rounds: int) -> dict[str, list[float]]:
    """MiB/s of each (kind, direction), rounds interleaved, kinds alternating first."""
    values = _values(nbytes)
    rates: dict[str, list[float]] = {}
    for kind in values:  # warm both paths (torch's import on the node included)
        nbytes_of(values[kind]) >> pool
        make(kind, nbytes) >> pool
    for r in range(rounds):
        kinds = list(values) if r % 2 == 0 else list(values)[::-1]
        for kind in kinds:
            start = time.perf_counter()
            assert nbytes_of(values[kind]) >> pool == nbytes
            rates.setdefault(f"{kind} argument", []).append(
                nbytes / MiB / (time.perf_counter() - start)
            )
            start = time.perf_counter()
            got = make(kind, nbytes) >> pool
            rates.setdefault(f"{kind} result", []).append(
                nbytes / MiB / (time.perf_counter() - start)
            )
            assert type(got).__module__.split(".")[0] == kind
            del got
    return rates


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with sky.ComputePool(provider=sky.Local(), display="quiet") as pool:
        rates = measure(pool, mib * MiB, rounds)
    medians = {name: statistics.median(v) for name, v in rates.items()}
    for name, rate in medians.items():
        print(f"{name:16} {rate:8.0f} MiB/s")
    for direction in ("argument", "result"):
        share = medians[f"torch {direction}"] / medians[f"numpy {direction}"]
        print(f"torch ÷ numpy, {direction}: {share:.0%}")


if __name__ == "__main__":
    main()
