"""The functions every tool runs: the same no-op for everyone.

Skyward and the floor ship this module by value (cloudpickle), as Skyward does for any
module outside site-packages; Ray, Dask, joblib and multiprocessing import it by reference
in their workers (``PYTHONPATH`` names the repository root, set by ``bench/run.py``).
"""

from __future__ import annotations

from typing import Any


def noop() -> None:
    """Does nothing: what is measured is everything around the call."""


def noop_i(i: int) -> None:
    """A no-op taking an argument, for the ``map``-style APIs."""


def cpu_spin(i: int) -> int:
    """About a millisecond of pure-Python work that holds the GIL throughout."""
    total = 0
    for k in range(20_000):
        total += k * k % 7
    return total + i


def consume(array: Any) -> int:
    """Bulk transfer: receive a large array, send back something small."""
    return int(array.nbytes)
