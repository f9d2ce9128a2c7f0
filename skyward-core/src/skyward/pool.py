"""``ComputePool``, ``@sky.pool`` and ``MultiPool``: open machines, run calls, close them.

A pool validates its whole spec at construction (no provider is called), provisions on
``__enter__``, and tears everything down on ``__exit__`` — after a return, an exception,
Ctrl-C, or SIGTERM — and at its ``timeout`` at the latest.

Ctrl-C while waiting for calls of a pool that stays open (a notebook's pool, opened in an
earlier cell) cancels them: each is dropped from its node's queue or its worker process is
killed and replaced, the pool stays usable, and the ``KeyboardInterrupt`` goes on up.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import contextvars
import functools
import itertools
import logging
import queue
import signal
import threading
import time
import types
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

import attrs

from skyward import callbacks, chunks, context, messages, wire
from skyward.call_batch import CallBatch
from skyward.call_options import CallOptions
from skyward.chunk_calls import Chunk
from skyward.compute import ComputeFunction, compute, is_generator_function
from skyward.cost import CostTracker
from skyward.errors import (
    BudgetExceededError,
    ConfigurationError,
    PoolClosedError,
    PoolTimeoutError,
    SerializationError,
    WorkerLostError,
)
from skyward.events import (
    BatchSubmitted,
    CostFinal,
    Error,
    PoolStopping,
    SkywardEvent,
    TaskFinished,
    TaskSubmitted,
)
from skyward.node import STREAM_WINDOW, rebuild_exception
from skyward.provisioning import AgentSettings, Cluster, provision
from skyward.selection import SelectionLike, check_selection
from skyward.spec import (
    ComputeSpec,
    DisplayMode,
    Executor,
    build_spec,
    check_callable,
    check_display,
    check_providers,
)

if TYPE_CHECKING:
    from skyward.accelerators import AcceleratorSpec
    from skyward.allocation import AllocationLike
    from skyward.compute import PendingBatch, PendingCompute, PendingGather
    from skyward.image import Image
    from skyward.node import NodeClient
    from skyward.provider import ProviderConfig
    from skyward.volumes import VolumeLike

__all__ = ["ComputePool", "MultiPool", "current_pool", "pool"]

Waitable = Future[Any]
"""A sent call's outcome."""
Sent = Future[Any] | Chunk
"""What sending a batch gives: a call's future, or a whole chunk (taken at once)."""

P = ParamSpec("P")
R = TypeVar("R")

_log = logging.getLogger("skyward.pool")
_open_pools: weakref.WeakSet[ComputePool] = weakref.WeakSet()


def current_pool() -> ComputePool | None:
    """The innermost pool active in this context (what ``>> sky`` sends to)."""
    pool = context.current_pool()
    return pool if isinstance(pool, ComputePool) else None


class _Scheduler:
    """Least-loaded dispatch with a bounded window per node (four calls per worker), so
    batches pipeline."""

    def __init__(self, clients: list[NodeClient]) -> None:
        self._clients = clients
        self._load = [0] * len(clients)
        self._cond = threading.Condition()

    def acquire(self) -> int:
        refill = False
        with self._cond:
            while True:
                live = [i for i, c in enumerate(self._clients) if c.alive]
                if not live:
                    raise WorkerLostError(-1, "no node of the pool is reachable")
                best = min(live, key=lambda i: self._load[i] / self._clients[i].workers)
                window = 4 * self._clients[best].workers
                # A batch that filled the window waits until half of it is free, then
                # refills it in one write rather than one write per freed call.
                if self._load[best] < (window + 1) // 2 or (
                    not refill and self._load[best] < window
                ):
                    self._load[best] += 1
                    return best
                if wire.has_held():
                    # Calls this thread holds back (a batch being sent) go out before it
                    # waits for room they free; not under the lock, which the threads
                    # reading results need.
                    refill = True
                    self._cond.release()
                    try:
                        wire.flush_held()
                    finally:
                        self._cond.acquire()
                    continue
                self._cond.wait(0.5)

    def release(self, index: int) -> None:
        with self._cond:
            self._load[index] -= 1
            self._cond.notify()


def _servable_providers(
    configs: Sequence[ProviderConfig], spec: ComputeSpec
) -> tuple[tuple[ProviderConfig, ...], tuple[tuple[str, ConfigurationError], ...]]:
    """The providers whose ``validate`` accepts ``spec``, and each refused one's reason.

    A single provider's refusal is raised as it is. Of several, those that refuse are
    skipped; when every one refuses, one ``ConfigurationError`` names each reason (its
    field is theirs when they all name the same one)."""
    servable: list[ProviderConfig] = []
    skipped: list[tuple[str, ConfigurationError]] = []
    for config in configs:
        try:
            config.validate(spec)
        except ConfigurationError as error:
            if len(configs) == 1:
                raise
            skipped.append((config.provider_name, error))
        else:
            servable.append(config)
    if not servable:
        fields = {error.field for _, error in skipped}
        reasons = "; ".join(f"{name}: {error}" for name, error in skipped)
        raise ConfigurationError(
            fields.pop() if len(fields) == 1 else "provider",
            f"no provider can serve this pool ({reasons})",
            "Change what the pool asks for, or add a provider that can serve it",
        )
    return tuple(servable), tuple(skipped)


class ComputePool:
    """A set of machines that exists for the duration of a ``with`` block.

    Every parameter is validated here, before any provider is called; a bad value raises a
    :class:`~skyward.errors.ConfigurationError` (a ``ValueError``) naming it.
    """

    def __init__(
        self,
        provider: ProviderConfig | Sequence[ProviderConfig],
        *,
        selection: SelectionLike = "first",
        image: Image | None = None,
        nodes: int = 1,
        machine: str | None = None,
        accelerator: str | AcceleratorSpec | None = None,
        cpu: int | None = None,
        memory: str | None = None,
        volume: Sequence[VolumeLike] | None = None,
        volumes: Sequence[VolumeLike] | None = None,
        allocation: AllocationLike = "spot-if-available",
        timeout: int = 3600,
        env: dict[str, str] | None = None,
        concurrency: int | Literal["auto"] = "auto",
        display: DisplayMode = "log",
        on_event: callbacks.Callback | None = None,
        collect_metrics: bool = True,
        max_cost: float | None = None,
        max_hourly_cost: float | None = None,
        executor: Executor = "process",
    ) -> None:
        self.providers: tuple[ProviderConfig, ...] = check_providers(provider)
        self.selector = check_selection(selection)
        self.spec: ComputeSpec = build_spec(
            nodes=nodes,
            machine=machine,
            accelerator=accelerator,
            cpu=cpu,
            memory=memory,
            image=image,
            allocation=allocation,
            volume=volume,
            volumes=volumes,
            timeout=timeout,
            env=env,
            concurrency=concurrency,
            max_cost=max_cost,
            max_hourly_cost=max_hourly_cost,
            executor=executor,
        )
        self.display: DisplayMode = check_display(display)
        self.on_event = check_callable("on_event", on_event)
        if not isinstance(collect_metrics, bool):
            raise ConfigurationError(
                "collect_metrics", f"{collect_metrics!r} is not a bool", "Use True or False"
            )
        self.collect_metrics = collect_metrics
        # SKYWARD_* settings are input too: a bad one fails here, before any provider call.
        self._settings = AgentSettings.from_env(collect_metrics=collect_metrics)
        # A provider that cannot serve this spec (DigitalOcean asked for spot) is skipped,
        # its reason reported when the pool opens; only when none can is it an error.
        self.providers, self._skipped = _servable_providers(self.providers, self.spec)
        self.pool_id = ""
        self._cluster: Cluster | None = None
        self._scheduler: _Scheduler | None = None
        self._emit: Callable[[SkywardEvent], None] = lambda _: None
        self._display: Any = None
        self._cost: CostTracker | None = None
        self._token: contextvars.Token[context.Runner | None] | None = None
        self._timer: threading.Timer | None = None
        self._ended: PoolTimeoutError | BudgetExceededError | None = None
        self._lock = threading.Lock()
        # Held for a whole teardown: a second close() (``with`` exit while the timer
        # closes the pool) waits until everything is gone instead of returning at once.
        self._closing = threading.Lock()
        self._previous_sigterm: Any = None
        self._task_numbers = itertools.count(1)
        self._chunk_sizer = chunks.ChunkSizer()

    # -- life -------------------------------------------------------------------------

    def __enter__(self) -> ComputePool:
        self.open()
        self._token = context.enter(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            context.leave(self._token)
            self._token = None
        self.close()

    def open(self) -> None:
        """Provision the machines and start the agents (what ``with`` does on entry)."""
        if self._cluster is not None:
            raise PoolClosedError("this pool is already open")
        self.pool_id = f"sky-{uuid.uuid4().hex[:12]}"
        from skyward.display import make_display  # rich loads only when a pool opens

        self._display = make_display(self.display)
        self._cost = CostTracker(budget=self.spec.max_cost)
        self._emit = callbacks.compose(
            *callbacks.registered(), self.on_event, self._cost, self._display
        )
        for name, reason in self._skipped:
            self._emit(Error(f"{name}: skipped, it cannot serve this pool: {reason}"))
        self._install_sigterm()
        settings = attrs.evolve(self._settings, deadline=time.monotonic() + self.spec.timeout)
        try:
            self._cluster = provision(
                self.providers, self.selector, self.spec, self.pool_id, settings, self._emit
            )
        except BaseException:
            self._finish()
            raise
        self._scheduler = _Scheduler(self._cluster.clients)
        _open_pools.add(self)
        self._start_timer(self._cluster, settings)

    def _start_timer(self, cluster: Cluster, settings: AgentSettings) -> None:
        """Close the pool at its timeout (counted from open) or when its budget is spent."""
        end = cluster.lifetime_end(settings)
        if end is None:
            return
        reason: PoolTimeoutError | BudgetExceededError
        if cluster.budget_deadline is not None and end == cluster.budget_deadline:
            assert self.spec.max_cost is not None
            reason = BudgetExceededError(self.spec.max_cost, self.spec.max_cost)
        else:
            reason = PoolTimeoutError(f"the pool reached its timeout of {self.spec.timeout}s")
        self._timer = threading.Timer(max(0.0, end - time.monotonic()), self._expire, (reason,))
        self._timer.daemon = True
        self._timer.start()

    def close(self) -> None:
        """Tear everything down (what ``with`` does on exit). Idempotent; a call made while
        another thread tears the pool down returns when that teardown has finished."""
        with self._closing:
            with self._lock:
                cluster, self._cluster = self._cluster, None
            if self._timer is not None:
                self._timer.cancel()
            if cluster is None:
                return
            _open_pools.discard(self)
            with _sigint_deferred():
                self._emit(PoolStopping())
                cluster.shutdown()
                self._finish()

    def _finish(self) -> None:
        if self._cost is not None:
            final: CostFinal = self._cost.final()
            self._emit(final)
        if self._display is not None and hasattr(self._display, "close"):
            self._display.close()
        self._restore_sigterm()

    def _expire(self, reason: PoolTimeoutError | BudgetExceededError) -> None:
        if isinstance(reason, BudgetExceededError) and self._cost is not None:
            spent = self._cost.snapshot().accumulated_cost
            reason = BudgetExceededError(reason.budget, spent)
        self._ended = reason
        self._emit(Error(f"{reason}; shutting down"))
        self.close()

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the program handles SIGTERM itself; do not take it over

        def on_sigterm(signum: int, frame: types.FrameType | None) -> None:
            raise SystemExit(128 + signum)

        self._previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def _restore_sigterm(self) -> None:
        if (
            self._previous_sigterm is not None
            and threading.current_thread() is threading.main_thread()
        ):
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    # -- state ------------------------------------------------------------------------

    @property
    def is_active(self) -> bool:
        """True while the pool is provisioned."""
        return self._cluster is not None

    @property
    def workers(self) -> int:
        """Workers of the whole pool: what the nodes reported once open (``concurrency=
        "auto"`` is decided by each node), the spec's estimate before."""
        cluster = self._cluster
        if cluster is not None and cluster.clients:
            return sum(client.workers for client in cluster.clients)
        return self.spec.nodes * self.spec.expected_workers_per_node

    @property
    def instance_count(self) -> int:
        """Number of instances (``nodes``) of the pool."""
        cluster = self._cluster
        return len(cluster.instances) if cluster is not None else 0

    def _active(self) -> tuple[Cluster, _Scheduler]:
        cluster, scheduler = self._cluster, self._scheduler
        if cluster is None or scheduler is None:
            if self._ended is not None:
                raise self._ended
            raise PoolClosedError("the pool is not active: use it inside `with ComputePool(...)`")
        return cluster, scheduler

    # -- work -------------------------------------------------------------------------

    def _send(
        self,
        payload: messages.Payload,
        options: CallOptions,
        target: tuple[int, int] | None,
        future: Future[Any] | None = None,
    ) -> tuple[Future[Any], int]:
        """One attempt: to ``target`` (node, worker), or the least-loaded node; returns the
        attempt's future (``future`` when given) and the node it went to."""
        cluster, scheduler = self._active()
        if target is not None:
            node, worker = target
            future = cluster.clients[node].submit_payload(
                payload, worker=worker, timeout=options.timeout, future=future
            )
            return future, node
        index = scheduler.acquire()
        try:
            future = cluster.clients[index].submit_payload(
                payload, timeout=options.timeout, future=future
            )
        except BaseException:
            scheduler.release(index)
            raise
        future.add_done_callback(lambda _: scheduler.release(index))
        return future, index

    def _dispatch(
        self,
        payload: messages.Payload,
        options: CallOptions,
        target: tuple[int, int] | None = None,
        *,
        first: int = 1,
        outcome: Future[Any] | None = None,
    ) -> Future[Any]:
        """Send a call, with its retries: the future holds the last attempt's outcome.

        Each attempt is reported as ``TaskSubmitted`` and ``TaskFinished`` (for the display's
        task counts and progress). Cancelling the future cancels the attempt on its node
        and any retry still to come. ``first`` numbers the first attempt (a call retried
        alone after its chunk); ``outcome`` is the future to settle, if the caller made it."""
        if outcome is None:
            outcome = _CallFuture()
        task = next(self._task_numbers)
        worker = target[1] if target is not None else None
        if first == 1 and options.retries == 0:
            return self._dispatch_once(payload, options, target, outcome, task, worker)
        current: list[Future[Any]] = []

        def attempt(number: int) -> None:
            if outcome.done():
                return  # cancelled while a retry waited
            try:
                future, node = self._send(payload, options, target)
            except KeyboardInterrupt:
                # Ctrl-C while the call waited for room on a node (the caller's thread):
                # the caller must see it now, not after sending the rest of its batch.
                outcome.cancel()
                raise
            except BaseException as error:
                _settle(outcome.set_exception, self._explain(error, number))
                return
            current[:] = [future]
            if outcome.cancelled():  # cancelled while it was being sent
                future.cancel()
            sent = time.monotonic()
            self._emit(TaskSubmitted(task, node, number, worker))
            future.add_done_callback(lambda done: settle(done, number, node, sent))

        def settle(done: Future[Any], number: int, node: int, sent: float) -> None:
            seconds = time.monotonic() - sent
            if done.cancelled():
                self._emit(TaskFinished(task, node, False, seconds, number))
                return
            error = done.exception()
            self._emit(TaskFinished(task, node, error is None, seconds, number))
            if error is None:
                _settle(outcome.set_result, done.result())
            elif options.should_retry(error, number) and self.is_active and not outcome.done():
                # Never on the connection's reader thread: the next send may wait.
                timer = threading.Timer(options.backoff(number), attempt, (number + 1,))
                timer.daemon = True
                timer.start()
            else:
                _settle(outcome.set_exception, self._explain(error, number))

        def on_outcome(done: Future[Any]) -> None:
            if done.cancelled():
                for future in list(current):
                    future.cancel()  # the node client sends Cancel to the agent

        outcome.add_done_callback(on_outcome)
        attempt(first)
        return outcome

    def _dispatch_once(
        self,
        payload: messages.Payload,
        options: CallOptions,
        target: tuple[int, int] | None,
        outcome: Future[Any],
        task: int,
        worker: int | None,
    ) -> Future[Any]:
        """A call that is never retried: its one attempt settles ``outcome`` itself (no
        second future, no callbacks between them; a warm call's client side is mostly
        such bookkeeping)."""
        if isinstance(outcome, _CallFuture):
            outcome.explain = lambda error: self._explain(error, 1)
        try:
            _, node = self._send(payload, options, target, outcome)
        except KeyboardInterrupt:
            outcome.cancel()
            raise
        except BaseException as error:
            _settle(outcome.set_exception, self._explain(error, 1))
            return outcome
        sent = time.monotonic()
        self._emit(TaskSubmitted(task, node, 1, worker))
        if isinstance(outcome, _CallFuture):
            cluster = self._cluster
            if cluster is not None:
                outcome.reader = cluster.clients[node].read_until

        def finished(done: Future[Any]) -> None:
            ok = not done.cancelled() and done.exception() is None
            self._emit(TaskFinished(task, node, ok, time.monotonic() - sent, 1))

        outcome.add_done_callback(finished)
        return outcome

    def _dispatch_all(
        self,
        batch: CallBatch,
        *,
        targets: Sequence[tuple[int, int]] = (),
    ) -> list[Sent]:
        """Send several calls. Sending waits while the nodes' windows are full: Ctrl-C
        then cancels the calls already sent.

        Of a batch larger than the pool's window, consecutive chunkable calls share tasks
        (see :mod:`skyward.chunks`), each one :class:`~skyward.chunk_calls.Chunk` in the
        list, taken whole, not a future per call.
        ``targets``: the (node, worker) of each call, when they are pinned (never chunked)."""
        sent: list[Sent] = []
        workers = self.workers
        total = len(batch)
        chunkable = batch.chunkable
        chunking = chunks.ENABLED and total > 4 * workers and any(chunkable)
        # Held calls go out as a few writes per node, not one each (the scheduler
        # sends them before it waits for room).
        with _cancelled_on_interrupt(sent), wire.holding():
            index = 0
            while index < total:
                if not (chunking and chunkable[index]):
                    target = targets[index] if targets else None
                    sent.append(self._dispatch(batch.payload(index), batch.options[index], target))
                    index += 1
                    continue
                key = batch.key(index)
                size = self._chunk_sizer.size(key, total - index, workers)
                end = index + 1
                while end < total and end - index < size and chunkable[end]:
                    end += 1
                sent.append(self._dispatch_chunk(batch, index, end, key))
                index = end
        return sent

    def _dispatch_chunk(
        self,
        batch: CallBatch,
        start: int,
        end: int,
        key: str,
    ) -> Chunk:
        """Send calls ``start`` to ``end - 1`` of ``batch`` as one chunk, with a future per
        call or (``futures=False``) the lighter slots of a caller that waits in order. A
        call that fails is retried on its own (as its options allow); the chunk is
        cancelled on its node only once every call in it was cancelled."""
        sent_chunk: list[Future[Any]] = []

        def cancel_chunk() -> None:
            for future in list(sent_chunk):
                future.cancel()  # the node client sends Cancel to the agent

        count = end - start
        chunk = Chunk(count, _CallFuture, cancel_chunk)
        first_task = next(self._task_numbers)
        for _ in range(count - 1):
            next(self._task_numbers)

        def retry(index: int, error: BaseException) -> bool:
            """Send a failed call again on its own, if its options say so."""
            options = batch.options[start + index]
            if not (options.should_retry(error, 1) and self.is_active):
                return False
            outcome = chunk.retry(index)
            if outcome is not None:
                # Alone this time, through the usual retries (attempt 2 onwards); never on
                # the connection's reader thread, as the next send may wait.
                timer = threading.Timer(
                    options.backoff(1),
                    lambda: self._dispatch(
                        batch.payload(start + index), options, first=2, outcome=outcome
                    ),
                )
                timer.daemon = True
                timer.start()
            return True

        def on_chunk(done: Future[Any], node: int, sent: float) -> None:
            seconds = time.monotonic() - sent
            if done.cancelled():
                self._emit(TaskFinished(first_task, node, False, seconds, 1, count))
                return
            error = done.exception()
            results: list[Any] = []
            if error is None:
                try:
                    took, results = chunks.unpack(done.result(), count)
                except SerializationError as bad:
                    error = bad
                else:
                    self._chunk_sizer.observe(key, count, took)
                    if chunks.all_plain(results):  # every call returned a scalar: the norm
                        self._emit(TaskFinished(first_task, node, True, seconds, 1, count))
                        chunk.settle_values(results)
                        return
            settled: list[tuple[int, Any, BaseException | None]] = []
            oks: list[bool] = []
            for index in range(count):
                failure: BaseException | None = error
                value: Any = None
                if failure is None:
                    try:
                        value, failed = chunks.outcome(results[index])
                    except Exception as broken:
                        failure = SerializationError(
                            f"node {node}: the result cannot be unpickled here: {broken!r}"
                        )
                    else:
                        if failed is not None:
                            failure = rebuild_exception(failed)
                oks.append(failure is None)
                if failure is None:
                    settled.append((index, value, None))
                elif chunk.pending(index) and not retry(index, failure):
                    settled.append((index, None, self._explain(failure, 1)))
            # One event per run of calls with the same outcome (all of them, mostly).
            done_so_far = 0
            for ok, run in itertools.groupby(oks):
                length = len(list(run))
                self._emit(TaskFinished(first_task + done_so_far, node, ok, seconds, 1, length))
                done_so_far += length
            chunk.settle_all(settled)

        try:
            future, node = self._send(batch.pack(start, end), batch.options[start], None)
        except KeyboardInterrupt:
            chunk.cancel()
            raise
        except BaseException as error:
            explained = self._explain(error, 1)
            chunk.settle_all([(index, None, explained) for index in range(count)])
            return chunk
        sent_chunk.append(future)
        sent = time.monotonic()
        self._emit(TaskSubmitted(first_task, node, 1, None, count))
        future.add_done_callback(lambda done: on_chunk(done, node, sent))
        return chunk

    def _explain(self, error: BaseException, attempts: int) -> BaseException:
        if isinstance(error, WorkerLostError | PoolClosedError) and self._ended is not None:
            return self._ended
        if attempts > 1:
            error.add_note(f"skyward: the call failed on each of its {attempts} attempts")
        return error

    def submit(
        self,
        pending: PendingCompute[R],
        *,
        timeout: float | None = None,
        retries: int | None = None,
        retry_on: tuple[type[BaseException], ...] | None = None,
    ) -> Future[R]:
        """Send one computation to the least-loaded worker; its result arrives in the future.

        ``timeout``, ``retries`` and ``retry_on`` override what ``@sky.compute`` set for
        this call. The computation is pickled here: an unpicklable argument raises
        :class:`~skyward.errors.SerializationError` at once.

        ``future.cancel()`` works until the result is in, even while the call runs: the
        node drops it or kills the worker process running it (on ``executor="thread"`` it
        runs on; its result is dropped). Ctrl-C in ``future.result()`` cancels the call.
        """
        options = pending.options.merged(timeout, retries, retry_on)
        return self._dispatch(_payload(pending), options)

    def map(
        self, fn: Callable[..., R], *iterables: Iterable[Any], ordered: bool = True
    ) -> Iterator[R]:
        """Run ``fn`` over the items of ``iterables`` (as the built-in ``map`` pairs them),
        lazily: calls are sent a few per worker ahead of what has been consumed.

        ``ordered=False`` yields results in the order they complete. ``fn`` is a
        ``@sky.compute`` function or a plain one. Calls sent ahead and not consumed are
        cancelled when the iterator stops early (a failure, ``break``, Ctrl-C), as
        ``concurrent.futures.Executor.map`` does.
        """
        function = fn if isinstance(fn, ComputeFunction) else compute(fn)
        sizes = [len(it) for it in iterables if isinstance(it, Sized)]
        sized = bool(sizes) and len(sizes) == len(iterables)
        if sized:
            self._emit(BatchSubmitted(min(sizes)))
        total = min(sizes) if sized else None
        return self._map(function, zip(*iterables, strict=False), ordered, total)

    def _map(
        self,
        fn: ComputeFunction[..., R],
        items: Iterator[tuple[Any, ...]],
        ordered: bool,
        total: int | None,
    ) -> Iterator[R]:
        """``total``: how many calls a sized iterable makes (``None``: a lazy one)."""
        batched = total is not None
        cluster, _ = self._active()
        workers = sum(c.workers for c in cluster.clients)
        ahead = 4 * workers
        sent_groups = _Groups(ordered)
        in_flight = 0  # calls sent and not yet taken
        # Over a sized iterable, calls go in chunks as in gather (see skyward.chunks),
        # sized by what the node measured.
        chunked = (
            batched
            and chunks.ENABLED
            and fn.options.timeout is None
            and not is_generator_function(fn.local)
        )
        key: str | None = None
        size = 1
        sent = 0
        current: Sent | None = None
        values: Iterator[Any] = iter(())
        try:
            while True:
                # Calls sent up to the window go out together, flushed before this
                # generator yields or waits. Only over sized iterables (lists, ranges):
                # a lazy one may block between items, and a call already made must not
                # wait for the next item.
                with wire.holding() if batched else contextlib.nullcontext():
                    while in_flight < ahead * size:
                        group = list(itertools.islice(items, size))
                        if not group:
                            break
                        sent += len(group)
                        batch = CallBatch([fn(*args) for args in group])
                        if key is None:
                            key = batch.key(0)
                        if chunked:  # a chunk of one too: the node measures it
                            sent_groups.add(self._dispatch_chunk(batch, 0, len(batch), key))
                        else:
                            sent_groups.add(self._dispatch(batch.payload(0), batch.options[0]))
                        in_flight += len(batch)
                        if chunked:
                            left = max(1, (total or 0) - sent)
                            size = self._chunk_sizer.size(key, left, workers)
                try:
                    value = next(values)
                except StopIteration:
                    if not sent_groups:
                        return
                    current = sent_groups.take()
                    values = self._values_of(current)
                    continue
                in_flight -= 1
                yield value
        finally:
            _cancel([*sent_groups, *([current] if current is not None else [])])

    def _values_of(self, sent: Sent) -> Iterator[Any]:
        """The values of a call or a chunk, in order; raises a call's exception."""
        if not isinstance(sent, Chunk):
            yield self._result(sent)
            return
        try:
            yield from sent.iter_values()
        except WorkerLostError:
            self._raise_if_ended()
            raise

    def _result(self, future: Waitable) -> Any:
        try:
            return future.result()
        except WorkerLostError:
            self._raise_if_ended()
            raise

    def _raise_if_ended(self) -> None:
        """A call lost with its worker once the pool has ended raises why the pool ended
        (its nodes went with it), not the loss."""
        if self._ended is not None:
            raise self._ended from None

    def run(self, pending: PendingCompute[R]) -> R:
        """Run one computation on the least-loaded worker and return its result (for a
        generator function: an iterator of its items, streamed as the node yields them)."""
        if is_generator_function(pending.fn):
            items: Any = self._stream(pending)
            return items  # type: ignore[no-any-return]
        result: R = self._result(self._dispatch(_payload(pending), pending.options))
        return result  # Ctrl-C in _result cancels the call (see _CallFuture)

    stream_window: int = STREAM_WINDOW
    """Items a streamed call's node may send ahead of what its consumer took."""

    def _stream(self, pending: PendingCompute[Any]) -> Iterator[Any]:
        """A streamed call: never retried (its items may already be consumed). Its node
        counts as busy until the stream ends or the iterator is closed."""
        payload = _payload(pending)
        cluster, scheduler = self._active()
        index = scheduler.acquire()
        try:
            future, items = cluster.clients[index].submit_stream(
                payload, window=self.stream_window, timeout=pending.options.timeout
            )
        except BaseException:
            scheduler.release(index)
            raise
        future.add_done_callback(lambda _: scheduler.release(index))
        return items

    def run_batch(self, batch: PendingBatch[*tuple[Any, ...]]) -> tuple[Any, ...]:
        """Run every computation of a batch in parallel; results in the batch's order.

        Every computation is pickled before the first is sent: one that cannot be sent
        fails the batch before any of it runs.
        """
        calls = CallBatch(batch.computations)
        self._emit(BatchSubmitted(len(calls)))
        futures = self._dispatch_all(calls)
        with _cancelled_on_interrupt(futures):
            return self._in_order(futures, keep_exceptions=False)

    def run_gather(self, gathered: PendingGather) -> tuple[Any, ...] | Iterator[Any]:
        """``gather(..., ordered=False / return_exceptions=True) >> pool``."""
        calls = CallBatch(gathered.batch.computations)
        self._emit(BatchSubmitted(len(calls)))
        futures = self._dispatch_all(calls)
        if gathered.ordered:
            with _cancelled_on_interrupt(futures):
                return self._in_order(futures, gathered.return_exceptions)
        return self._as_completed(futures, gathered.return_exceptions)

    def _in_order(self, waiting: list[Sent], keep_exceptions: bool) -> tuple[Any, ...]:
        """The results of calls and chunks, in order (see :meth:`_outcome`)."""
        out: list[Any] = []
        for item in waiting:
            if not isinstance(item, Chunk):
                out.append(self._outcome(item, keep_exceptions))
                continue
            try:
                out.extend(item.values(keep_exceptions))
            except WorkerLostError:
                self._raise_if_ended()
                raise
        return tuple(out)

    def _as_completed(self, sent: list[Sent], keep: bool) -> Iterator[Any]:
        """The results of calls and chunks in the order they complete (a chunk's in
        order, at once)."""
        groups = _Groups(ordered=False)
        try:
            for item in sent:
                groups.add(item)
            while groups:
                yield from self._in_order([groups.take()], keep)
        finally:
            _cancel(sent)  # stopped early: nobody will take the rest

    def _outcome(self, future: Waitable, keep_exceptions: bool) -> Any:
        try:
            return self._result(future)
        except Exception as error:
            if keep_exceptions:
                return error
            raise

    def broadcast(self, pending: PendingCompute[R]) -> tuple[R, ...]:
        """Run the computation once on every worker of every node; results ordered by
        node, then worker (with one worker per node: once per node)."""
        payload = _payload(pending)
        cluster, _ = self._active()
        targets = [
            (node, worker)
            for node, client in enumerate(cluster.clients)
            for worker in range(client.workers)
        ]
        batch = CallBatch.repeated(payload, pending.options, len(targets))
        futures = self._dispatch_all(batch, targets=targets)
        with _cancelled_on_interrupt(futures):
            return self._in_order(futures, keep_exceptions=False)

    def __repr__(self) -> str:
        state = "active" if self.is_active else "inactive"
        names = ", ".join(p.provider_name for p in self.providers)
        return f"<ComputePool {self.pool_id or '(not opened)'} {state} on {names}>"


class _CallFuture(Future[R]):
    """A call's future: Ctrl-C while waiting for it cancels the call (on its node too).

    ``explain`` rewrites an exception set on it (a node's "the pool was shut down" becomes
    why the pool ended), for a future the node client settles directly."""

    explain: Callable[[BaseException], BaseException] | None = None
    reader: Callable[[Future[Any]], None] | None = None
    """Reads the connection its answer comes on until it is done (``NodeClient.read_until``)."""

    def set_exception(self, exception: BaseException | None) -> None:
        if self.explain is not None and exception is not None:
            exception = self.explain(exception)
        super().set_exception(exception)

    def result(self, timeout: float | None = None) -> R:
        try:
            reader = self.reader
            if reader is not None and timeout is None and not self.done():
                reader(self)
            return super().result(timeout)
        except KeyboardInterrupt:
            self.cancel()
            raise

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        except KeyboardInterrupt:
            self.cancel()
            raise


class _Groups:
    """Calls and chunks sent and not yet taken: in the order sent, or (``ordered=False``)
    in the order they complete, each queued as it completes so taking the next one does
    not look at everything in flight."""

    def __init__(self, ordered: bool) -> None:
        self._ordered = ordered
        self._waiting: dict[Sent, None] = {}  # insertion-ordered
        self._done: queue.SimpleQueue[Sent] = queue.SimpleQueue()

    def add(self, sent: Sent) -> None:
        self._waiting[sent] = None
        if not self._ordered:
            sent.add_done_callback(self._done.put)

    def take(self) -> Sent:
        """The next call or chunk (in completion order: waits for one to complete)."""
        sent = next(iter(self._waiting)) if self._ordered else self._done.get()
        del self._waiting[sent]
        return sent

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[Sent]:
        return iter(list(self._waiting))


def _settle(setter: Callable[[Any], None], outcome: Any) -> None:
    """Set a call's outcome unless it was cancelled meanwhile (its answer is dropped)."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        setter(outcome)


def _cancel(futures: Iterable[Sent]) -> None:
    for future in list(futures):
        future.cancel()


@contextlib.contextmanager
def _cancelled_on_interrupt(futures: Sequence[Sent]) -> Iterator[None]:
    """Ctrl-C while waiting for several calls cancels every one of them."""
    try:
        yield
    except KeyboardInterrupt:
        _cancel(futures)
        raise


def _payload(pending: PendingCompute[Any]) -> messages.Payload:
    """Pickle a call; raises :class:`~skyward.errors.SerializationError` before sending."""
    return messages.Payload.call(pending.fn, pending.args, pending.kwargs)


class _SigintDeferred:
    """Hold Ctrl-C while tearing down, so a second Ctrl-C cannot strand machines."""

    def __enter__(self) -> None:
        self._previous: Any = None
        self._received = False
        if threading.current_thread() is threading.main_thread():

            def remember(signum: int, frame: types.FrameType | None) -> None:
                self._received = True

            self._previous = signal.signal(signal.SIGINT, remember)

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        if self._received and exc_info[0] is None:
            raise KeyboardInterrupt


def _sigint_deferred() -> _SigintDeferred:
    return _SigintDeferred()


def pool(
    provider: ProviderConfig | Sequence[ProviderConfig], **options: Any
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function to run inside a pool: ``>> sky`` / ``@ sky`` reach that pool.

    Takes the same parameters as :class:`ComputePool`; they are validated when the
    decorator is applied. Each call of the function provisions and tears down a pool.
    """
    ComputePool(provider, **options)  # validate now, not at the first call

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with ComputePool(provider, **options):
                return fn(*args, **kwargs)

        return run

    return decorate


class MultiPool:
    """Several pools provisioned in parallel; all of them are cleaned up if one fails."""

    def __init__(self, *pools: ComputePool) -> None:
        if not pools:
            raise ConfigurationError("pools", "no pool given", "Pass one or more ComputePool")
        for item in pools:
            if not isinstance(item, ComputePool):
                raise ConfigurationError(
                    "pools", f"{item!r} is not a ComputePool", "Pass ComputePool instances"
                )
        self.pools = pools

    def __enter__(self) -> tuple[ComputePool, ...]:
        with ThreadPoolExecutor(max_workers=len(self.pools)) as executor:
            futures = [executor.submit(p.open) for p in self.pools]
            errors = []
            for future in futures:
                try:
                    future.result()
                except BaseException as error:
                    errors.append(error)
        if errors:
            self._close_all()
            raise errors[0]
        return self.pools

    def __exit__(self, *exc_info: object) -> None:
        self._close_all()

    def _close_all(self) -> None:
        with ThreadPoolExecutor(max_workers=len(self.pools)) as executor:
            list(executor.map(lambda p: p.close(), self.pools))


@atexit.register
def _close_forgotten_pools() -> None:
    """A pool opened with ``open()`` and never closed still goes when Python exits."""
    for forgotten in list(_open_pools):
        try:
            forgotten.close()
        except Exception:
            _log.exception("closing pool %s at exit", forgotten.pool_id)
