"""Per-call limits: ``@sky.compute(timeout=, retries=, retry_on=)`` and ``pool.submit``'s.

A call past its ``timeout`` raises :class:`~skyward.errors.TaskTimeoutError` (its worker
process is killed and replaced). ``retries=N`` runs a call up to N more times when its
worker was lost, or when it raised one of the ``retry_on`` exception types, waiting a
little longer before each attempt; the final error says how many attempts were made.
"""

from __future__ import annotations

import math

from attrs import field, frozen

from skyward.errors import ConfigurationError, WorkerLostError

__all__ = ["MAX_RETRIES", "MAX_TIMEOUT", "CallOptions"]

MAX_TIMEOUT = 30 * 24 * 3600.0
"""Thirty days: longer than any pool should live."""
MAX_RETRIES = 100


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            "timeout", f"{value!r} is not a number of seconds", "Use e.g. timeout=600"
        )
    seconds = float(value)
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT:
        raise ConfigurationError(
            "timeout",
            f"{value!r} is not between 0 and {MAX_TIMEOUT:g} seconds",
            "Use e.g. timeout=600, or None for no limit",
        )
    return seconds


def _retries(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
        raise ConfigurationError(
            "retries",
            f"{value!r} is not a whole number from 0 to {MAX_RETRIES}",
            "Use e.g. retries=3",
        )
    return value


def _retry_on(value: object) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, tuple | list) else (value,)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ConfigurationError(
                "retry_on",
                f"{item!r} is not an exception type",
                "Use e.g. retry_on=(ConnectionError, TimeoutError)",
            )
    return tuple(items)


@frozen
class CallOptions:
    """How one call may run: a time limit and a retry policy."""

    timeout: float | None = field(default=None, converter=_timeout)
    """Seconds the call may run on its worker; ``None``: no limit (the pool's own)."""
    retries: int = field(default=0, converter=_retries)
    """How many more times to run a call that failed in a way ``retry_on`` covers."""
    retry_on: tuple[type[BaseException], ...] = field(default=(), converter=_retry_on)
    """Exception types (raised by the call) worth another attempt; a lost worker always is."""

    def merged(
        self,
        timeout: float | None = None,
        retries: int | None = None,
        retry_on: tuple[type[BaseException], ...] | None = None,
    ) -> CallOptions:
        """These options, with the ones given here taking precedence."""
        return CallOptions(
            timeout=self.timeout if timeout is None else timeout,
            retries=self.retries if retries is None else retries,
            retry_on=self.retry_on if retry_on is None else retry_on,
        )

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based) that failed with ``error`` gets another."""
        if attempt > self.retries:
            return False
        return isinstance(error, (WorkerLostError, *self.retry_on))

    @staticmethod
    def backoff(attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        return min(0.1 * 2.0 ** (attempt - 1), 5.0)
