"""The joblib backend that sends joblib's batches to a Skyward pool.

This module imports joblib at load; :mod:`skyward_integrations.joblib` imports it only when a
backend is made, so ``sky.integrations`` loads without joblib installed.

How a ``Parallel`` call flows: joblib groups tasks into ``BatchedCalls`` (auto-batching grows
a batch until it takes about half a second, so thousands of tiny tasks cost a few round trips),
:meth:`SkywardBackend.submit` sends each batch whole to the least-loaded worker with
``pool.submit`` and hands joblib's completion callback to a thread of its own (joblib dispatches
the next batch from that callback: doing so on the connection's reader thread would stall every
other result behind a pickle and a socket write).
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, SequentialBackend

from skyward.compute import PendingCompute, _ship_module_by_value
from skyward.pool import ComputePool

__all__ = ["SkywardBackend", "pool_workers"]

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
        _ship_module_by_value(module)


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
        with self._lock:
            if self._callbacks is None:
                self._callbacks = ThreadPoolExecutor(1, thread_name_prefix="skyward-joblib")
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Any, callback: Callable[[Any], None] | None = None) -> Future[Any]:
        for item in getattr(func, "items", ()):
            _prepare_item(item[0])
        # The batch itself is the function: joblib pickles it (its tasks by value when they
        # come from the user's script), and the node needs only joblib to run it.
        future: Future[Any] = self.pool.submit(PendingCompute(func, (), {}))
        self.batches_sent += 1
        if callback is not None:
            future.add_done_callback(lambda done: self._hop(callback, done))
        return future

    def _hop(self, callback: Callable[[Any], None], done: Future[Any]) -> None:
        with self._lock:
            executor = self._callbacks
            if executor is None:
                return  # Parallel has finished (an error ended it): nobody waits for this
            executor.submit(callback, done)

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        return out.result()

    def get_nested_backend(self) -> tuple[Any, int | None]:
        # Pickled inside every batch: it must be small and must not hold the pool.
        return SequentialBackend(nesting_level=self.nesting_level + 1), None

    def terminate(self) -> None:
        with self._lock:
            executor, self._callbacks = self._callbacks, None
        if executor is not None:
            executor.shutdown(wait=False)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        # Batches already sent finish on their workers; joblib ignores their results (its
        # callback checks that the call is aborting), so nothing needs cancelling here.
        return

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a SkywardBackend holds the client's pool and is never sent to a node")
