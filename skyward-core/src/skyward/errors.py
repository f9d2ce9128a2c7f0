"""Every exception Skyward raises on purpose.

One base, :class:`SkywardError`. Mistakes in what the user asked for also subclass
:class:`ValueError`, so ``except ValueError`` keeps working for code that does not know us.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AgentAuthenticationError",
    "AllProvidersFailedError",
    "BudgetExceededError",
    "CapacityError",
    "ConfigurationError",
    "ConnectError",
    "HostKeyError",
    "NoAvailableProviderError",
    "PluginError",
    "PluginNotInstalledError",
    "PoolClosedError",
    "PoolTimeoutError",
    "ProvisioningError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "SkywardError",
    "TaskTimeoutError",
    "WorkerLostError",
]


class SkywardError(Exception):
    """Base class of every error Skyward raises on purpose."""


class ConfigurationError(SkywardError, ValueError):
    """A value the user gave is wrong. Raised before any provider is called.

    ``field`` names the parameter; the message says what is wrong and how to fix it.
    """

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}: {problem}. {fix}")

    def __reduce__(self) -> tuple[type[ConfigurationError], tuple[str, str, str]]:
        # Raised on nodes too (a framework set-up refusing a bad value): rebuilt on the
        # client as itself, not as a RemoteError.
        return (type(self), (self.field, self.problem, self.fix))


class PluginError(SkywardError):
    """A plugin misbehaved (bad registration, name clash, failing hook).

    ``plugin`` names the plugin, so the user knows whom to blame.
    """

    def __init__(self, plugin: str, message: str) -> None:
        self.plugin = plugin
        super().__init__(f"plugin {plugin!r}: {message}")


class PluginNotInstalledError(SkywardError, ImportError):
    """A name (``sky.AWS``, ``sky.integrations.torch``) needs a package that is not installed."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message, name=name)


class ProvisioningError(SkywardError):
    """A provider could not create, reach or bootstrap the machines of a pool."""

    def __init__(self, provider: str, message: str) -> None:
        self.provider = provider
        super().__init__(f"{provider}: {message}")


class CapacityError(ProvisioningError):
    """The provider has no capacity for the requested offer; selection may try the next one."""


class NoAvailableProviderError(SkywardError):
    """No provider has an offer that matches the pool's requirements."""


class AllProvidersFailedError(SkywardError):
    """Every candidate provider failed to provision; ``failures`` holds each cause."""

    def __init__(self, failures: list[tuple[str, BaseException]]) -> None:
        self.failures = failures
        detail = "; ".join(
            str(error) if str(error).startswith(f"{name}:") else f"{name}: {error}"
            for name, error in failures
        )
        super().__init__(f"all providers failed to provision the pool ({detail})")


class PoolClosedError(SkywardError):
    """Work was sent to a pool that is not active (not entered yet, or already closed)."""


class PoolTimeoutError(SkywardError):
    """The pool reached its ``timeout`` (its hard lifetime) and was shut down."""


class BudgetExceededError(SkywardError):
    """The pool spent its ``max_cost`` and was shut down.

    ``budget`` and ``spent`` are in US dollars, as the cost events compute them.
    """

    def __init__(self, budget: float, spent: float) -> None:
        self.budget = budget
        self.spent = spent
        super().__init__(
            f"the pool spent ${spent:.4f} of its max_cost of ${budget:.4f} and was shut down"
        )


class AgentAuthenticationError(SkywardError, ConnectionError):
    """A connection to (or from) a node agent did not prove it holds the pool's key.

    The agent ignores such a connection; the client refuses to talk to such an agent.
    """


class SerializationError(SkywardError, TypeError):
    """A function, argument or result cannot be pickled. Nothing was sent; the pool is fine."""


class WorkerLostError(SkywardError):
    """The node running a task went away before answering; the task may not have finished.

    ``cause`` says why when it is known: an exit code, a signal, the out-of-memory killer,
    the agent's watchdog or lifetime, or the connection.
    """

    def __init__(
        self, node: int, message: str, cause: str | None = None, worker: int | None = None
    ) -> None:
        self.node = node
        self.message = message
        self.cause = cause
        self.worker = worker
        where = f"node {node}" if worker is None else f"node {node}, worker {worker}"
        detail = f" ({cause})" if cause else ""
        super().__init__(f"{where}: {message}{detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Built on the node, raised on the client: keep every field across the pickle.
        return (type(self), (self.node, self.message, self.cause, self.worker))


class TaskTimeoutError(SkywardError, TimeoutError):
    """A call ran past its ``timeout``. With process workers its worker was killed and
    replaced; a thread worker cannot be stopped and runs on in the background."""

    def __init__(self, timeout: float, where: str) -> None:
        self.timeout = timeout
        self.where = where
        super().__init__(f"{where}: the call ran past its timeout of {timeout:g}s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.timeout, self.where))


class RemoteTraceback(Exception):
    """Carries the remote traceback text as the ``__cause__`` of a re-raised remote error."""

    def __init__(self, tb: str) -> None:
        self.tb = tb
        super().__init__(tb)

    def __str__(self) -> str:
        return f"\n\nRemote traceback:\n{self.tb}"


class RemoteError(SkywardError):
    """A remote exception whose type could not be recreated on the client.

    ``type_name`` is the remote type's qualified name and ``remote_traceback`` its traceback.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        self.type_name = type_name
        self.remote_traceback = remote_traceback
        super().__init__(f"{type_name}: {message}")


class HostKeyError(SkywardError):
    """A host's SSH key is unknown or differs from the trusted one; nothing was sent to it.

    ``fingerprint`` is the SHA256 fingerprint of the key the host presented.
    """

    def __init__(self, host: str, fingerprint: str, message: str) -> None:
        self.host = host
        self.fingerprint = fingerprint
        super().__init__(message)


class ConnectError(ProvisioningError):
    """A host could not be reached or logged into within the allowed time."""
