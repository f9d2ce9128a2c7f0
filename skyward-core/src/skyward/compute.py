"""The programming model: ``@sky.compute``, ``PendingCompute``, ``PendingBatch``, ``gather``.

Calling a compute function runs nothing: it builds a :class:`PendingCompute`. An operator
sends it somewhere: ``>> pool`` runs it on one worker, ``@ pool`` on every node, and
``a & b`` groups computations into a :class:`PendingBatch` that runs in parallel.
``>> sky`` / ``@ sky`` (the ``skyward`` module itself) mean "the pool this code runs in".
"""

from __future__ import annotations

import functools
import inspect
import sys
import sysconfig
import types
from collections.abc import Callable
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    ParamSpec,
    TypeVar,
    TypeVarTuple,
    overload,
)

import cloudpickle

from skyward.call_options import CallOptions
from skyward.context import Runner, current_pool
from skyward.errors import ConfigurationError, PoolClosedError

if TYPE_CHECKING:
    from skyward.pool import ComputePool

__all__ = [
    "ComputeFunction",
    "PendingBatch",
    "PendingCompute",
    "PendingGather",
    "compute",
    "gather",
    "ship_module_by_value",
]

P = ParamSpec("P")
R = TypeVar("R")
R2 = TypeVar("R2")
Ts = TypeVarTuple("Ts")


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    return tuple(sorted(roots))


@functools.cache
def _ship_module_by_value(module_name: str) -> None:
    """Send the user's own modules by value: the node has their packages, not their files.

    Installed packages and the standard library stay by reference (the image installs
    them); a module that lives anywhere else (a script's directory, a test folder) is
    registered with cloudpickle so its functions and classes travel with the call.
    """
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if module is None or module_name == "__main__" or path is None:
        return
    if module_name.split(".", maxsplit=1)[0] == "skyward" or path.startswith(_installed_roots()):
        return
    cloudpickle.register_pickle_by_value(module)


def ship_module_by_value(module_name: str) -> None:
    """Send the functions and classes of module ``module_name`` to nodes by value.

    What ``@sky.compute`` does for the module of each function it wraps, for code that
    sends other callables to a pool (a joblib backend sends joblib's tasks): a module
    outside the installed packages and the standard library (a script, a test folder) is
    registered with cloudpickle, since nodes cannot import it; any other is left alone.
    Checked once per module name.
    """
    _ship_module_by_value(module_name)


class ComputeFunction(Generic[P, R]):
    """A function made lazy by ``@sky.compute``: calling it returns a ``PendingCompute``."""

    def __init__(self, fn: Callable[P, R], options: CallOptions | None = None) -> None:
        functools.update_wrapper(self, fn)
        self._fn = fn
        self.options = options or CallOptions()
        """The per-call limits every call of this function carries."""

    @property
    def local(self) -> Callable[P, R]:
        """The original function, to run here and now."""
        return self._fn

    _shipped = False

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> PendingCompute[R]:
        if not self._shipped:  # once per function: a batch makes thousands of calls
            _ship_module_by_value(self._fn.__module__)
            self._shipped = True
        return PendingCompute(self._fn, args, kwargs, self.options)

    def __repr__(self) -> str:
        return f"<compute function {self._fn.__qualname__}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ComputeFunction, (self._fn, self.options))


@overload
def compute(fn: Callable[P, R], /) -> ComputeFunction[P, R]: ...
@overload
def compute(
    *,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: tuple[type[BaseException], ...] = (),
) -> Callable[[Callable[P, R]], ComputeFunction[P, R]]: ...
def compute(
    fn: Callable[P, R] | None = None,
    /,
    *,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: tuple[type[BaseException], ...] = (),
) -> ComputeFunction[P, R] | Callable[[Callable[P, R]], ComputeFunction[P, R]]:
    """Make ``fn`` lazy: ``fn(...)`` returns a :class:`PendingCompute` to send to a pool.

    Used bare (``@sky.compute``) or with per-call limits
    (``@sky.compute(timeout=600, retries=2, retry_on=(ConnectionError,))``): a call past
    ``timeout`` seconds raises :class:`~skyward.errors.TaskTimeoutError`; ``retries`` runs
    a call again when its worker was lost or it raised one of ``retry_on``.
    """
    options = CallOptions(timeout=timeout, retries=retries, retry_on=retry_on)
    if fn is None:
        return lambda function: ComputeFunction(function, options)
    if not callable(fn):
        raise ConfigurationError(
            "fn", f"{fn!r} is not a function", "Decorate a function: @sky.compute def f(): ..."
        )
    return ComputeFunction(fn, options)


_RUNNER_TYPES: set[type] = set()


def _implicit_pool(target: object) -> ComputePool:
    """Resolve the right-hand side of ``>>``/``@``: a pool, or ``sky`` for the current one."""
    # isinstance() against a runtime-checkable Protocol walks its members each time
    # (~13 µs a call): remember the types that passed.
    if type(target) in _RUNNER_TYPES:
        return target  # type: ignore[return-value]
    if isinstance(target, Runner):
        _RUNNER_TYPES.add(type(target))
        return target  # type: ignore[return-value]
    if isinstance(target, types.ModuleType) and target.__name__ == "skyward":
        pool = current_pool()
        if pool is None:
            raise PoolClosedError(
                "`>> sky` / `@ sky` need an active pool: use them inside a function decorated "
                "with @sky.pool(...) or a `with sky.ComputePool(...)` block, or send to a pool"
            )
        return pool  # type: ignore[return-value]
    raise TypeError(f"cannot send a computation to {target!r}: expected a ComputePool or `sky`")


def is_generator_function(fn: Any) -> bool:
    """Whether calling ``fn`` makes a generator (a call whose items stream)."""
    # inspect's check unwraps partials and methods, at a few µs a call: plain functions
    # answer from their code flags.
    if type(fn) is types.FunctionType:
        return bool(fn.__code__.co_flags & inspect.CO_GENERATOR)
    return inspect.isgeneratorfunction(fn)


class PendingCompute(Generic[R]):
    """A deferred call: a function with its arguments, not yet run."""

    __slots__ = ("args", "fn", "kwargs", "options")

    def __init__(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: CallOptions | None = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.options = options or CallOptions()

    def __rshift__(self, target: ComputePool | types.ModuleType) -> R:
        """Run on one worker (the least loaded) and return the result."""
        return _implicit_pool(target).run(self)

    def __matmul__(self, target: ComputePool | types.ModuleType) -> tuple[R, ...]:
        """Run on every worker of every node; results ordered by node, then worker."""
        return _implicit_pool(target).broadcast(self)

    @overload
    def __and__(self, other: PendingCompute[R2]) -> PendingBatch[R, R2]: ...
    @overload
    def __and__(self, other: PendingBatch[*Ts]) -> PendingBatch[R, *Ts]: ...
    def __and__(self, other: PendingCompute[Any] | PendingBatch[*Ts]) -> PendingBatch[Any]:
        """Group with another computation; the batch runs in parallel."""
        if isinstance(other, PendingBatch):
            return PendingBatch(self, *other.computations)
        if isinstance(other, PendingCompute):
            return PendingBatch(self, other)
        return NotImplemented

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return f"<PendingCompute {name}(...)>"


class PendingBatch(Generic[*Ts]):
    """Computations that run in parallel; ``>> pool`` returns their results as a tuple."""

    __slots__ = ("computations",)

    def __init__(self, *computations: PendingCompute[Any]) -> None:
        for item in computations:
            if not isinstance(item, PendingCompute):
                raise TypeError(
                    f"{item!r} is not a pending computation: call a @sky.compute function"
                )
        self.computations: tuple[PendingCompute[Any], ...] = computations

    def __and__(self, other: PendingCompute[R2]) -> PendingBatch[*Ts, R2]:
        extra: object = other  # untyped callers may pass a batch too
        if isinstance(extra, PendingBatch):
            return PendingBatch(*self.computations, *extra.computations)
        if isinstance(extra, PendingCompute):
            return PendingBatch(*self.computations, extra)
        return NotImplemented

    def __rshift__(self, target: ComputePool | types.ModuleType) -> tuple[*Ts]:
        """Run every computation, spread over the pool's workers; results in order."""
        results: Any = _implicit_pool(target).run_batch(self)
        return results  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self.computations)

    def __repr__(self) -> str:
        return f"<PendingBatch of {len(self.computations)}>"


class PendingGather:
    """``gather(..., ordered=False)`` or ``return_exceptions=True``: ``>> pool`` returns
    an iterator of results in the order they complete (or, ordered, a tuple), with
    exceptions in place of results when ``return_exceptions``."""

    __slots__ = ("batch", "ordered", "return_exceptions")

    def __init__(self, batch: PendingBatch[Any], *, ordered: bool, return_exceptions: bool) -> None:
        self.batch = batch
        self.ordered = ordered
        self.return_exceptions = return_exceptions

    def __rshift__(self, target: ComputePool | types.ModuleType) -> Any:
        pool = _implicit_pool(target)
        return pool.run_gather(self)

    def __len__(self) -> int:
        return len(self.batch)

    def __repr__(self) -> str:
        return f"<PendingGather of {len(self.batch)}, ordered={self.ordered}>"


@overload
def gather(
    *computations: PendingCompute[Any],
    ordered: Literal[True] = True,
    return_exceptions: Literal[False] = False,
) -> PendingBatch[*tuple[Any, ...]]: ...
@overload
def gather(
    *computations: PendingCompute[Any], ordered: bool = True, return_exceptions: bool = False
) -> PendingGather: ...
def gather(
    *computations: PendingCompute[Any], ordered: bool = True, return_exceptions: bool = False
) -> PendingBatch[*tuple[Any, ...]] | PendingGather:
    """Group any number of computations to run in parallel: ``gather(*calls) >> pool``.

    By default ``>> pool`` returns the results as a tuple in call order and raises the
    first failure. ``ordered=False`` returns an iterator that yields each result as it
    completes; ``return_exceptions=True`` puts a failed call's exception where its result
    would be instead of raising it.
    """
    batch: PendingBatch[*tuple[Any, ...]] = PendingBatch(*computations)
    if ordered and not return_exceptions:
        return batch
    return PendingGather(batch, ordered=ordered, return_exceptions=return_exceptions)
