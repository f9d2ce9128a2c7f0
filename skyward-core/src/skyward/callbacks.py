"""Callbacks: how events reach listeners.

A callback takes an event and may return a new event; a returned event is emitted in turn
through the same chain (the cost tracker answers a ``Metrics`` tick with a ``CostUpdate``).
``use_callback`` registers callbacks for a block of code; ``emit`` sends to every callback
registered in the current context.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeAlias

from skyward.events import SkywardEvent

__all__ = ["Callback", "compose", "emit", "use_callback"]

Callback: TypeAlias = Callable[[SkywardEvent], SkywardEvent | None]
"""A listener: receives an event, may return a follow-up event to emit."""

_log = logging.getLogger("skyward.callbacks")

# Derived events may themselves derive events; a cycle must not hang the pool.
_MAX_DERIVED_DEPTH = 8

_registered: contextvars.ContextVar[tuple[Callback, ...]] = contextvars.ContextVar(
    "skyward_callbacks", default=()
)


def _deliver(callbacks: tuple[Callback, ...], event: SkywardEvent, depth: int) -> None:
    for callback in callbacks:
        try:
            derived = callback(event)
        except Exception:
            # A broken listener must never break the pool it listens to.
            _log.exception("callback %r failed on %r", callback, event)
            continue
        if derived is not None and depth < _MAX_DERIVED_DEPTH:
            _deliver(callbacks, derived, depth + 1)


def compose(*callbacks: Callback | None) -> Callable[[SkywardEvent], None]:
    """Merge callbacks into one that calls each in order.

    ``None`` entries are skipped. An event a callback returns is sent through the whole
    composed chain, so every listener sees derived events too. The composed callback
    returns ``None``: what it derives it has already delivered.
    """
    chain = tuple(c for c in callbacks if c is not None)

    def composed(event: SkywardEvent) -> None:
        _deliver(chain, event, 0)

    return composed


def emit(event: SkywardEvent) -> None:
    """Send ``event`` to every callback registered with :func:`use_callback` here."""
    _deliver(_registered.get(), event, 0)


def registered() -> tuple[Callback, ...]:
    """The callbacks registered in the current context, outermost first."""
    return _registered.get()


@contextmanager
def use_callback(*callbacks: Callback) -> Iterator[None]:
    """Register callbacks for the duration of a ``with`` block.

    Pools entered inside the block send their events to these callbacks as well.
    """
    token = _registered.set(_registered.get() + callbacks)
    try:
        yield
    finally:
        _registered.reset(token)
