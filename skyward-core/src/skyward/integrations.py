"""``sky.integrations``: distributed-framework integrations, resolved through plugins.

``sky.integrations.torch``, ``.jax``, ``.keras``, ``.tensorflow``, ``.transformers``,
``.JoblibPool``, ``.ScikitLearnPool``, ``.joblib_backend`` and ``.sklearn_backend`` come from
the ``skyward-integrations`` package through the ``register_frameworks`` hook. Core only
resolves the names; when the package is missing, the error says how to install it.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

__all__ = ["Framework"]


@frozen
class Framework:
    """One integration a plugin registers.

    ``entry`` is what ``sky.integrations.<name>`` evaluates to: usually a decorator factory
    (``sky.integrations.torch(backend="nccl")``) or a pool class (``JoblibPool``).
    """

    name: str
    """Attribute name under ``sky.integrations``."""
    entry: Any
    """The object users get."""


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    from skyward.plugins import framework

    return framework(name).entry
