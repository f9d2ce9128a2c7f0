"""A call's function as a :class:`~skyward.refs.FunctionBlob`, pickled again only when
something it captured changed.

Pickling a function by value (cloudpickle) costs 40 to 90 µs, more than the rest of a warm
call's client side. So the blob is kept per function object with a *witness*: the identity
of everything cloudpickle puts into the function's pickle (its code, defaults, closure
cells, the globals its code names, and the same for each function it captures by value).
While every identity still holds, the pickle would come out the same and the blob is
reused; an edited function (a new object in a notebook), a rebound global or a reassigned
closure variable fails the witness and is pickled again, so a changed function is still
sent again under its new hash.

Identities cannot see a change made in place (an element appended to a captured list, a
numpy array written into), so only functions whose captured values are all immutable are
kept: numbers, strings, tuples and frozensets of them, modules, refs, and functions and
classes that cloudpickle pickles by reference (by name). A function that captures anything
else is pickled on every call, exactly as before.
"""

from __future__ import annotations

import enum
import types
import weakref
from collections.abc import Callable
from typing import Any

from skyward import refs, wire

__all__ = ["function_blob"]

_MISSING = object()

_SCALARS = frozenset(
    {
        int,
        float,
        complex,
        str,
        bytes,
        bool,
        type(None),
        type(Ellipsis),
        type(NotImplemented),
        range,
    }
)


def _by_reference_rule() -> Callable[[Any], bool] | None:
    # cloudpickle's own rule for "pickled by name" (private): without it nothing is kept,
    # which is slower but never wrong.
    try:
        from cloudpickle import cloudpickle as implementation
    except ImportError:
        return None
    rule = getattr(implementation, "_should_pickle_by_reference", None)
    return rule if callable(rule) else None


class _Witness:
    """What must still hold for a kept pickle to be what pickling again would give."""

    __slots__ = ("attrs", "cells", "dicts", "names")

    def __init__(self) -> None:
        self.attrs: list[tuple[Any, str, Any]] = []
        """``getattr(obj, name) is value``: a function's code and defaults."""
        self.cells: list[tuple[Any, Any]] = []
        """``cell.cell_contents is value`` (``_MISSING``: still empty)."""
        self.names: list[tuple[dict[str, Any], str, Any]] = []
        """``namespace.get(name, _MISSING) is value``: the globals the code names."""
        self.dicts: list[tuple[dict[str, Any], tuple[tuple[str, Any], ...]]] = []
        """Dicts in the pickle (keyword defaults, a function's attributes): same entries."""

    def holds(self) -> bool:
        for obj, name, value in self.attrs:
            if getattr(obj, name) is not value:
                return False
        for cell, value in self.cells:
            if _contents(cell) is not value:
                return False
        for namespace, name, value in self.names:
            if namespace.get(name, _MISSING) is not value:
                return False
        for mapping, items in self.dicts:
            if len(mapping) != len(items):
                return False
            for key, value in items:
                if mapping.get(key, _MISSING) is not value:
                    return False
        return True


def _contents(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell (a name assigned later in the enclosing scope)
        return _MISSING


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


class _Capture:
    """Walks what a function's pickle holds; ``keepable`` turns False at the first value
    that could change in place."""

    def __init__(self, by_reference: Callable[[Any], bool]) -> None:
        self.by_reference = by_reference
        self.witness = _Witness()
        self.seen: set[int] = set()

    def function(self, fn: types.FunctionType) -> bool:
        if id(fn) in self.seen:
            return True
        self.seen.add(id(fn))
        witness = self.witness
        for name in ("__code__", "__defaults__", "__kwdefaults__", "__annotations__"):
            witness.attrs.append((fn, name, getattr(fn, name)))
        if fn.__defaults__ is not None and not self.value(fn.__defaults__):
            return False
        for mapping in (fn.__kwdefaults__, fn.__annotations__, fn.__dict__):
            if mapping:
                if not all(self.value(v) for v in mapping.values()):
                    return False
                witness.dicts.append((mapping, tuple(mapping.items())))
            elif mapping is not None:
                witness.dicts.append((mapping, ()))
        for cell in fn.__closure__ or ():
            contents = _contents(cell)
            witness.cells.append((cell, contents))
            if contents is not _MISSING and not self.value(contents):
                return False
        namespace = fn.__globals__
        for name in _code_names(fn.__code__):
            value = namespace.get(name, _MISSING)
            witness.names.append((namespace, name, value))
            if value is not _MISSING and not self.value(value):
                return False
        return True

    def value(self, value: Any) -> bool:
        kind = type(value)
        if kind in _SCALARS or kind is refs.Ref:
            return True
        if kind is tuple or kind is frozenset:
            return all(self.value(item) for item in value)
        if kind is types.BuiltinFunctionType:
            return True
        if isinstance(value, types.ModuleType):  # subclasses too: `skyward` itself is one
            return self.by_reference(value)
        if kind is types.FunctionType:
            return self.by_reference(value) or self.function(value)
        if isinstance(value, type):
            return self.by_reference(value)
        if isinstance(value, enum.Enum):
            return self.by_reference(kind)
        return False


_kept: weakref.WeakKeyDictionary[Any, tuple[_Witness, refs.FunctionBlob, tuple[Any, ...]]] = (
    weakref.WeakKeyDictionary()
)
_rules: list[Callable[[Any], bool] | None] = []


def function_blob(fn: Any) -> tuple[refs.FunctionBlob, tuple[Any, ...]]:
    """``fn`` pickled as a blob, and the :class:`~skyward.refs.Ref` values it captures.

    :raises SerializationError: when ``fn`` cannot be pickled.
    """
    kept = _kept.get(fn) if type(fn) is types.FunctionType else None
    if kept is not None:
        witness, blob, found = kept
        if witness.holds() and not any(ref.released for ref in found):
            return blob, found
    # The witness is taken before pickling: a change made meanwhile (another thread) fails
    # it next time instead of going unseen.
    if not _rules:
        _rules.append(_by_reference_rule())
    rule = _rules[0]
    capture = None
    if rule is not None and type(fn) is types.FunctionType:
        capture = _Capture(rule)
        if not capture.function(fn):
            capture = None
            _kept.pop(fn, None)
    with refs.collecting() as collected:
        blob = refs.FunctionBlob(*wire.dumps(fn))
    found = tuple({id(r): r for r in collected}.values())
    blob.captured = found
    if capture is not None:
        _kept[fn] = (capture.witness, blob, found)
    return blob, found
