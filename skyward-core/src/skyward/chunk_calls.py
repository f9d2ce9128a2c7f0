"""The client's side of a chunk (see :mod:`skyward.chunks`): each call's outcome.

A chunk settles all its calls at once, when its answer arrives. Its callers (``gather``,
``run_batch``, ``map``) wait on the :class:`Chunk` itself and take its values at once, in
the order sent or as chunks complete: no object per call (a future is five more objects
the garbage collector walks while a batch of thousands is in flight, and that walk once
cost more than the rest of a call's client side). A call that failed and is sent again
alone answers to a future of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from typing import Any

__all__ = ["Chunk"]

_PENDING, _DONE, _FAILED, _CANCELLED, _RETRIED = range(5)


class Chunk:
    """The outcomes of a chunk's calls, and who waits for them."""

    def __init__(
        self,
        count: int,
        make_future: Callable[[], Future[Any]],
        cancel_chunk: Callable[[], None],
    ) -> None:
        """``make_future``: the future a call sent again alone answers to;
        ``cancel_chunk`` stops the chunk on its node (once every call was cancelled)."""
        self._cond = threading.Condition(threading.Lock())
        self._state = [_PENDING] * count
        self._values: list[Any] = [None] * count
        self._retries: dict[int, Future[Any]] = {}
        self._live = count
        self._make_future = make_future
        self._cancel_chunk = cancel_chunk
        self._when_settled: list[Callable[[Chunk], None]] | None = []

    # -- settling (the connection's reader thread) -------------------------------------

    def pending(self, index: int) -> bool:
        """False once the call is settled or cancelled (its answer is then dropped)."""
        return self._state[index] == _PENDING

    def settle_all(self, outcomes: list[tuple[int, Any, BaseException | None]]) -> None:
        """Settle several calls: ``(index, value, error)`` each (an answer to a call
        cancelled meanwhile is dropped)."""
        state, values = self._state, self._values
        with self._cond:
            for index, value, error in outcomes:
                if state[index] == _PENDING:
                    state[index] = _DONE if error is None else _FAILED
                    values[index] = value if error is None else error
            self._cond.notify_all()
        self._maybe_settled()

    def settle_values(self, values: list[Any]) -> None:
        """Settle every call with its value (the chunk's answer held no failure)."""
        with self._cond:
            if self._state.count(_PENDING) == len(self._state):
                self._state = [_DONE] * len(values)
                self._values = list(values)
            else:  # some were cancelled meanwhile: their answers are dropped
                for index, value in enumerate(values):
                    if self._state[index] == _PENDING:
                        self._state[index] = _DONE
                        self._values[index] = value
            self._cond.notify_all()
        self._maybe_settled()

    def retry(self, index: int) -> Future[Any] | None:
        """The call is sent again on its own: the future its answer goes to (``None``
        when it was cancelled meanwhile)."""
        with self._cond:
            if self._state[index] != _PENDING:
                return None
            outcome = self._make_future()
            self._state[index] = _RETRIED
            self._retries[index] = outcome
            self._cond.notify_all()
        self._maybe_settled()
        return outcome

    # -- the caller's side -------------------------------------------------------------

    def _call_result(self, index: int) -> Any:
        """Call ``index``'s value, once it is not pending: raises its exception, or
        ``CancelledError``; waits for the answer of a call sent again alone."""
        try:
            with self._cond:
                state, value = self._state[index], self._values[index]
            if state == _RETRIED:
                return self._retries[index].result()
        except KeyboardInterrupt:
            self._cancel_call(index)
            self._maybe_settled()  # Ctrl-C while waiting cancels it, as a future's does
            raise
        if state == _CANCELLED:
            raise CancelledError()
        if state == _FAILED:
            raise value
        return value

    def _cancel_call(self, index: int) -> bool:
        with self._cond:
            state = self._state[index]
            if state == _PENDING:
                self._state[index] = _CANCELLED
                self._cond.notify_all()
        if state == _RETRIED:
            return self._retries[index].cancel()
        if state != _PENDING:
            return state == _CANCELLED
        self._call_cancelled()
        return True

    def values(self, keep_exceptions: bool = False) -> list[Any]:
        """Every call's value in order, once all are in (a caller that takes a whole
        chunk at once: no per-call object, one wait). Raises the first call's exception
        in order, or with ``keep_exceptions`` puts it in the list instead."""
        states, values = self._all_in()
        if _FAILED not in states and _RETRIED not in states and _CANCELLED not in states:
            return values
        out: list[Any] = []
        for index, state in enumerate(states):
            try:
                out.append(self._call_result(index) if state != _DONE else values[index])
            except Exception as error:
                if not keep_exceptions:
                    raise
                out.append(error)
        return out

    def iter_values(self) -> Iterator[Any]:
        """Every call's value in order, once all are in; a call's exception is raised
        where it stands, after the values before it (``map``)."""
        states, values = self._all_in()
        for index, state in enumerate(states):
            yield values[index] if state == _DONE else self._call_result(index)

    def _all_in(self) -> tuple[list[int], list[Any]]:
        """Wait until no call waits for the node's answer: the states and values then."""
        try:
            with self._cond:
                self._cond.wait_for(lambda: _PENDING not in self._state)
                return list(self._state), list(self._values)
        except KeyboardInterrupt:
            self.cancel()  # Ctrl-C while waiting cancels the calls, as a future's does
            raise

    def cancel(self) -> bool:
        """Cancel every call not settled yet; the chunk then stops on its node."""
        cancelled = [self._cancel_call(index) for index in range(len(self._state))]
        self._maybe_settled()
        return any(cancelled)

    def add_done_callback(self, callback: Callable[[Chunk], None]) -> None:
        """Call ``callback(chunk)`` once no call of the chunk waits for the node's answer
        (each settled, cancelled or sent again alone): at once if that is so already.
        For a caller that takes chunks as they complete (``gather(..., ordered=False)``);
        :meth:`values` then waits only for calls retried alone."""
        with self._cond:
            if self._when_settled is not None:
                self._when_settled.append(callback)
                return
        callback(self)

    def _maybe_settled(self) -> None:
        with self._cond:
            if self._when_settled is None or _PENDING in self._state:
                return
            callbacks, self._when_settled = self._when_settled, None
        for callback in callbacks:
            callback(self)

    def _call_cancelled(self) -> None:
        with self._cond:
            self._live -= 1
            last = self._live == 0
        if last:
            self._cancel_chunk()
