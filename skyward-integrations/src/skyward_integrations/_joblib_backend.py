"""The joblib backend that sends joblib's batches to a Skyward pool.

This module imports joblib at load; :mod:`skyward_integrations.joblib` imports it only when a
backend is made, so ``sky.integrations`` loads without joblib installed.

How a ``Parallel`` call flows: joblib groups tasks into ``BatchedCalls`` (auto-batching grows
a batch until it takes about half a second, so thousands of tiny tasks cost a few round trips),
:meth:`SkywardBackend.submit` sends each batch whole to the least-loaded worker with
``pool.submit`` and hands joblib's completion callback to a thread of its own (joblib dispatches
the next batch from that callback: doing so on the connection's reader thread would stall every
other result behind a pickle and a socket write). A large argument that many tasks share
(``GridSearchCV``'s ``X`` and ``y``) is put once (:func:`sky.put <skyward.put>`): each node
receives it once per ``Parallel`` call, however many batches use it.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from attrs import define
from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, SequentialBackend

from skyward.compute import PendingCompute, ship_module_by_value
from skyward.pool import ComputePool
from skyward.refs import Ref, put

__all__ = ["SHARE_BYTES", "SkywardBackend", "nbytes", "pool_workers", "run_batch"]

# Warning categories from these packages can be rebuilt on a node running scikit-learn; any
# other non-stdlib category (pytest's, a cloud SDK's) may not exist there.
_NODE_SAFE_MODULES = frozenset({"builtins", "sklearn", "numpy", "scipy", "joblib"})


def pool_workers(pool: ComputePool) -> int:
    """Workers in the pool (every node's)."""
    return pool.workers


def _safe_category(category: object) -> bool:
    module = str(getattr(category, "__module__", "")).split(".", maxsplit=1)[0]
    return module in _NODE_SAFE_MODULES or module in sys.stdlib_module_names


def _prepare_item(function: Any) -> None:
    """Make one task of a batch safe to send: ship the user's module by value (a script or
    test module the node cannot import) and keep only warning filters the node can rebuild.

    scikit-learn wraps every task in a ``_FuncWrapper`` that carries a copy of the client's
    ``warnings.filters``; the copy is trimmed on this task only, never the global list.
    """
    filters = getattr(function, "warning_filters", None)
    if isinstance(filters, list):
        function.warning_filters = [f for f in filters if _safe_category(f[2])]
    inner = getattr(function, "function", function)  # sklearn's _FuncWrapper
    while isinstance(inner, functools.partial):
        inner = inner.func
    module = getattr(inner, "__module__", None)
    if isinstance(module, str):
        ship_module_by_value(module)


def run_batch(batch: Callable[[], list[Any]]) -> list[Any]:
    """On the node: run one of joblib's batches (its tasks in order)."""
    return batch()


SHARE_BYTES = 1024 * 1024
"""Arguments larger than this go to each node once per ``Parallel`` call (a
:func:`sky.put <skyward.put>` ref), not once per batch; one that a single task uses leaves
the nodes as soon as that task is done. It is joblib's own ``max_nbytes`` (default ``"1M"``,
above which its process backends memory-map arrays, read-only): ``Parallel(max_nbytes=...)``
or ``parallel_config(max_nbytes=...)`` changes it, ``None`` sends everything with its batch."""

_SMALL = (type(None), bool, int, float, complex, str)


def nbytes(value: object) -> int:
    """The size of an argument's data, without pickling it; 0 when it cannot be told
    cheaply (such arguments travel with their batch)."""
    if isinstance(value, _SMALL):
        return 0
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, memoryview):
        return value.nbytes
    module = type(value).__module__.split(".", maxsplit=1)[0]
    if module == "numpy":
        size = getattr(value, "nbytes", 0)  # arrays; scalars are tiny anyway
        return size if isinstance(size, int) else 0
    if module == "pandas":
        usage = getattr(value, "memory_usage", None)  # DataFrame and Series
        if callable(usage):
            return int(
                usage(index=True, deep=False).sum() if hasattr(value, "columns") else usage()
            )
    if module == "scipy":  # sparse matrices and arrays: their three arrays
        parts = (getattr(value, name, None) for name in ("data", "indices", "indptr"))
        return sum(int(getattr(part, "nbytes", 0)) for part in parts)
    return 0


@define
class _Shared:
    """A large argument put for the current ``Parallel`` call."""

    value: object
    ref: Ref[Any]
    uses: int = 0
    """Tasks that carried it."""
    inflight: int = 0
    """Of those, tasks whose batch has not finished."""


class SkywardBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib backend over a :class:`~skyward.ComputePool`; use it with
    ``joblib.parallel_config(backend=SkywardBackend(pool))`` (or
    ``sky.integrations.joblib_backend(pool)``).

    ``n_jobs=-1`` (the default) means every worker of the pool; ``-2`` all but one, and so
    on. At least two jobs are always reported: with one, joblib would run every task in the
    client and never use the pool.
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    uses_threads = False
    supports_sharedmem = False
    default_n_jobs = -1
    # A round trip to a cloud node is tens of milliseconds: batches of about half a second
    # keep that overhead small while still spreading work over every worker.
    MIN_IDEAL_BATCH_DURATION = 0.5
    MAX_IDEAL_BATCH_DURATION = 5.0

    def __init__(self, pool: ComputePool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool = pool
        self._lock = threading.Lock()
        self._callbacks: ThreadPoolExecutor | None = None
        # Large arguments already put, by identity (the value is held so its id stays its
        # own): GridSearchCV passes the same X and y to every fit.
        self._shared: dict[int, _Shared] = {}
        self._share_lock = threading.Lock()
        self._share_bytes: int | None = SHARE_BYTES
        self.batches_sent = 0
        """Batches sent to the pool so far (auto-batching keeps this far below the tasks)."""

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 has no meaning")
        workers = pool_workers(self.pool)
        if n_jobs is None or n_jobs < 0:
            wanted = max(workers + 1 + (n_jobs if n_jobs is not None else -1), 1)
        else:
            wanted = n_jobs
        return max(wanted, 2)

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, **backend_kwargs: Any) -> int:
        self.parallel = parallel
        # joblib hands its max_nbytes over already in bytes (or None: share nothing).
        limit = backend_kwargs.get("max_nbytes", SHARE_BYTES)
        self._share_bytes = limit if isinstance(limit, int) else None
        with self._lock:
            if self._callbacks is None:
                self._callbacks = ThreadPoolExecutor(1, thread_name_prefix="skyward-joblib")
        return self.effective_n_jobs(n_jobs)

    def _share(self, value: Any, used: list[_Shared]) -> Any:
        """``value``, or for a large one the ref each node receives once (unpickling it on
        the node gives the task the value itself); ``used`` collects the refs."""
        if isinstance(value, _SMALL):
            return value
        # Its own lock: the reader thread's callbacks must not wait behind a large put.
        with self._share_lock:
            entry = self._shared.get(id(value))
            if entry is None or entry.value is not value:
                if self._share_bytes is None or nbytes(value) <= self._share_bytes:
                    return value
                entry = _Shared(value, put(value))
                self._shared[id(value)] = entry
            entry.uses += 1
            entry.inflight += 1
            used.append(entry)
            return entry.ref

    def _batch_done(self, used: list[_Shared]) -> None:
        """A batch finished: an argument only it used is dropped from the nodes now (a
        stream of large chunks must not pile up there until the end of the call)."""
        done: list[Ref[Any]] = []
        with self._share_lock:
            for entry in used:
                entry.inflight -= 1
            for entry in used:
                key = id(entry.value)
                if entry.inflight == 0 and entry.uses == 1 and self._shared.get(key) is entry:
                    del self._shared[key]
                    done.append(entry.ref)
        for ref in done:
            ref.release()

    def submit(self, func: Any, callback: Callable[[Any], None] | None = None) -> Future[Any]:
        used: list[_Shared] = []
        items = getattr(func, "items", None)
        if isinstance(items, list):
            for index, (function, args, kwargs) in enumerate(items):
                _prepare_item(function)
                items[index] = (
                    function,
                    tuple(self._share(a, used) for a in args),
                    {k: self._share(v, used) for k, v in kwargs.items()},
                )
        # The batch is the argument of one fixed function: nodes keep each distinct function
        # they are sent (by hash) until the pool closes, so each batch must not be one.
        future: Future[Any] = self.pool.submit(PendingCompute(run_batch, (func,), {}))
        self.batches_sent += 1
        if callback is not None or used:
            future.add_done_callback(lambda done: self._hop(callback, done, used))
        return future

    def _hop(
        self, callback: Callable[[Any], None] | None, done: Future[Any], used: list[_Shared]
    ) -> None:
        with self._lock:
            executor = self._callbacks
            if executor is None:
                return  # Parallel has finished (an error ended it): nobody waits for this
            if used:
                executor.submit(self._batch_done, used)
            if callback is not None:
                executor.submit(callback, done)

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        return out.result()

    def get_nested_backend(self) -> tuple[Any, int | None]:
        # Pickled inside every batch: it must be small and must not hold the pool.
        return SequentialBackend(nesting_level=self.nesting_level + 1), None

    def terminate(self) -> None:
        with self._lock:
            executor, self._callbacks = self._callbacks, None
        with self._share_lock:
            shared, self._shared = self._shared, {}
        if executor is not None:
            executor.shutdown(wait=False)
        # The Parallel call is over: its large arguments leave the nodes.
        for entry in shared.values():
            entry.ref.release()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        # Batches already sent finish on their workers; joblib ignores their results (its
        # callback checks that the call is aborting), so nothing needs cancelling here.
        return

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a SkywardBackend holds the client's pool and is never sent to a node")
