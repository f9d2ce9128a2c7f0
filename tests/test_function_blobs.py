"""A call's function is pickled once and kept while nothing it captured changed."""

from __future__ import annotations

from typing import Any

import pytest

import skyward as sky
from skyward.errors import SerializationError
from skyward.function_blobs import function_blob


def _define(source: str, namespace: dict[str, Any] | None = None) -> Any:
    """A function as a notebook cell defines it (module ``__main__``-like: by value)."""
    namespace = {} if namespace is None else namespace
    namespace.setdefault("__name__", "notebook_cell")
    exec(source, namespace)
    return namespace["f"]


def test_an_unchanged_function_keeps_its_blob() -> None:
    f = _define("SCALE = 3\ndef f(x):\n    return x * SCALE\n")
    first, _ = function_blob(f)
    again, _ = function_blob(f)
    assert again is first, "nothing changed: the pickle is reused, not made again"


def test_a_rebound_global_gives_a_new_blob() -> None:
    namespace: dict[str, Any] = {}
    f = _define("SCALE = 3\ndef f(x):\n    return x * SCALE\n", namespace)
    first, _ = function_blob(f)
    namespace["SCALE"] = 4
    second, _ = function_blob(f)
    assert second.id != first.id
    namespace["SCALE"] = 3
    assert function_blob(f)[0].id == first.id, "same captured values, same hash"


def test_a_global_defined_later_gives_a_new_blob() -> None:
    namespace: dict[str, Any] = {}
    f = _define("def f(x):\n    return helper(x)\n", namespace)
    first, _ = function_blob(f)
    exec("def helper(x):\n    return x + 1\n", namespace)
    assert function_blob(f)[0].id != first.id


def test_an_edited_helper_function_gives_a_new_blob() -> None:
    namespace: dict[str, Any] = {"__name__": "notebook_cell"}
    exec("def helper(x):\n    return x + 1\n", namespace)
    f = _define("def f(x):\n    return helper(x)\n", namespace)
    first, _ = function_blob(f)
    assert function_blob(f)[0] is first
    exec("def helper(x):\n    return x + 2\n", namespace)  # the helper's cell, edited
    assert function_blob(f)[0].id != first.id


def test_a_changed_closure_variable_and_defaults_give_new_blobs() -> None:
    def outer() -> Any:
        offset = 1

        def f(x: int, scale: int = 2, *, bias: int = 0) -> int:
            return x * scale + offset + bias

        def bump() -> None:
            nonlocal offset
            offset += 1

        return f, bump

    f, bump = outer()
    first, _ = function_blob(f)
    assert function_blob(f)[0] is first
    bump()
    second, _ = function_blob(f)
    assert second.id != first.id
    f.__defaults__ = (5,)
    third, _ = function_blob(f)
    assert third.id != second.id
    f.__kwdefaults__["bias"] = 7  # in place, in a dict the pickle holds
    assert function_blob(f)[0].id != third.id


def test_a_function_capturing_something_mutable_is_pickled_each_call() -> None:
    namespace: dict[str, Any] = {}
    f = _define("TABLE = [1, 2]\ndef f(i):\n    return TABLE[i]\n", namespace)
    first, _ = function_blob(f)
    namespace["TABLE"].append(3)  # in place: identities cannot show it
    second, _ = function_blob(f)
    assert second is not first
    assert second.id != first.id, "the appended element is in the new pickle"


def test_refs_captured_by_a_kept_function_are_found_every_call() -> None:
    ref = sky.put([1, 2, 3])
    namespace: dict[str, Any] = {"REF": ref}
    f = _define("def f(i):\n    return REF\n", namespace)
    first, found = function_blob(f)
    assert found == (ref,)
    again, found_again = function_blob(f)
    assert again is first
    assert found_again == (ref,)
    ref.release()
    with pytest.raises(SerializationError, match="released"):
        function_blob(f)


def test_functions_and_modules_by_reference_count_as_unchanging() -> None:
    import json

    namespace: dict[str, Any] = {"json": json, "dumps": json.dumps}
    f = _define("def f(x):\n    return json.loads(dumps(x))\n", namespace)
    first, _ = function_blob(f)
    assert function_blob(f)[0] is first


def test_a_function_that_uses_sky_is_kept() -> None:
    f = _define("import skyward as sky\ndef f(x):\n    return sky.instance_info(), x\n")
    first, _ = function_blob(f)
    assert function_blob(f)[0] is first
