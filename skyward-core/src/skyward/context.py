"""The pool a piece of code runs in: what ``>> sky`` and ``@ sky`` send to.

A small module of its own so that :mod:`skyward.compute` (the operators) and
:mod:`skyward.pool` (which sets it) do not import each other.
"""

from __future__ import annotations

import contextvars
from typing import Any, Protocol, runtime_checkable

__all__ = ["Runner", "current_pool", "enter", "leave"]


@runtime_checkable
class Runner(Protocol):
    """What the operators need of a pool (``ComputePool`` is one)."""

    def run(self, pending: Any) -> Any: ...
    def run_batch(self, batch: Any) -> tuple[Any, ...]: ...
    def broadcast(self, pending: Any) -> tuple[Any, ...]: ...


_current: contextvars.ContextVar[Runner | None] = contextvars.ContextVar(
    "skyward_pool", default=None
)


def current_pool() -> Runner | None:
    """The innermost pool active in this context (what ``>> sky`` sends to)."""
    return _current.get()


def enter(pool: Runner) -> contextvars.Token[Runner | None]:
    """Make ``pool`` the current one; :func:`leave` with the token restores the previous."""
    return _current.set(pool)


def leave(token: contextvars.Token[Runner | None]) -> None:
    _current.reset(token)
