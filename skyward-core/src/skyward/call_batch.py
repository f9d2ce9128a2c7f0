"""Calls sent together, pickled as far as sending them needs (the client's side).

A batch (``gather``, ``run_batch``, the next calls of a ``map``, ``@ pool``) pickles each
of its functions once, as a :class:`~skyward.refs.FunctionBlob`. A call whose arguments
are all scalars (:func:`~skyward.messages.scalar_arguments`) cannot fail to pickle: it
stays the caller's :class:`~skyward.compute.PendingCompute` until its chunk is pickled
whole (:meth:`CallBatch.pack`), so waiting costs it no object of its own (the garbage
collector walks every object a batch of thousands keeps alive, again and again). Any
other call is pickled at once, so an argument that cannot be pickled fails the batch
before any of it is sent.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

from skyward import chunks, function_blobs, messages, refs
from skyward.call_options import CallOptions
from skyward.compute import PendingCompute, is_generator_function

__all__ = ["CallBatch"]


class CallBatch:
    """The calls of a batch, in order, with their options."""

    __slots__ = ("_blobs", "_calls", "chunkable", "options")

    def __init__(self, computations: Sequence[PendingCompute[Any]]) -> None:
        """Pickle what must be pickled now; raises
        :class:`~skyward.errors.SerializationError` for a call that cannot be."""
        blobs: dict[int, refs.FunctionBlob] = {}
        alone: dict[int, bool] = {}
        deferred = messages.SEND_FUNCTIONS_ONCE
        scalar_arguments = messages.scalar_arguments
        calls: list[Any] = []  # a PendingCompute (scalar arguments) or a Payload
        chunkable: list[bool] = []
        for pending in computations:
            fn = pending.fn
            blob = blobs.get(id(fn))
            if blob is None:
                blob = blobs[id(fn)] = function_blobs.function_blob(fn)[0]
                alone[id(fn)] = is_generator_function(fn)
            if deferred and scalar_arguments(pending.args, pending.kwargs):
                calls.append(pending)
            else:
                calls.append(
                    messages.Payload.call(
                        fn, pending.args, pending.kwargs, blob=(blob, blob.captured)
                    )
                )
            # A call with a time limit of its own goes alone (a chunk has one clock), as
            # does a generator function's (its items stream).
            chunkable.append(pending.options.timeout is None and not alone[id(fn)])
        self._blobs = blobs
        self._calls = calls
        self.options = [pending.options for pending in computations]
        self.chunkable = chunkable

    @classmethod
    def repeated(cls, payload: messages.Payload, options: CallOptions, count: int) -> CallBatch:
        """The same pickled call ``count`` times (``@ pool``: once per worker), never
        chunked."""
        batch = cls(())
        batch._calls = [payload] * count
        batch.options = [options] * count
        batch.chunkable = [False] * count
        return batch

    def __len__(self) -> int:
        return len(self._calls)

    def payload(self, index: int) -> messages.Payload:
        """Call ``index`` as a task of its own (sent alone: a small batch, a retry)."""
        call = self._calls[index]
        if type(call) is messages.Payload:
            return call
        blob = self._blobs[id(call.fn)]
        return messages.Payload.call(call.fn, call.args, call.kwargs, blob=(blob, blob.captured))

    def key(self, index: int) -> str:
        """What the call's cost is remembered by: its function (blob id)."""
        call = self._calls[index]
        if type(call) is messages.Payload:
            first = call.refs[0] if call.refs else None
            return first.id if isinstance(first, refs.FunctionBlob) else ""
        return self._blobs[id(call.fn)].id

    def pack(self, start: int, end: int) -> messages.Payload:
        """One task's payload that runs calls ``start`` to ``end - 1`` with
        :func:`~skyward.chunks.run_chunk`, pickled whole by the C pickler: a scalar call as
        ``(function, args, kwargs)``, its function blob written once through the pickler's
        memo; a pickled call as its pickle's bytes (its buffers out of band)."""
        blobs = self._blobs
        wire: list[Any] = []
        found: dict[int, Any] = {}
        for call in self._calls[start:end]:
            if type(call) is messages.Payload:
                wire.append(call)
                for ref in call.refs:
                    found[id(ref)] = ref
                continue
            blob = blobs[id(call.fn)]
            wire.append((blob, call.args, call.kwargs))
            if id(blob) not in found:
                found[id(blob)] = blob
                for captured in blob.captured:
                    found[id(captured)] = captured
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps((chunks.run_chunk, (wire,), {}), 5, buffer_callback=buffers.append)
        return messages.Payload(data, tuple(buffers), tuple(found.values()))
