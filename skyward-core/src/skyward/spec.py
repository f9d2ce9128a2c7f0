"""The pool's spec: everything ``ComputePool(...)`` was asked for, validated and normalized.

Validation happens here, before any provider is called: each bad value raises a
:class:`~skyward.errors.ConfigurationError` naming the field and the fix.
"""

from __future__ import annotations

import math
import posixpath
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

from attrs import field, frozen

from skyward.accelerators import AcceleratorSpec, parse_memory_gb
from skyward.allocation import AllocationStrategy, SpotIfAvailable, parse_allocation
from skyward.errors import ConfigurationError
from skyward.image import Image
from skyward.volumes import S3Volume, Volume, VolumeLike

__all__ = [
    "DISPLAY_MODES",
    "MAX_CONCURRENCY",
    "MAX_CPU",
    "MAX_NODES",
    "MAX_TIMEOUT",
    "ComputeSpec",
    "DisplayMode",
    "Executor",
    "build_spec",
    "check_providers",
]

DisplayMode: TypeAlias = Literal["log", "spinner", "quiet"]
Executor: TypeAlias = Literal["process", "thread"]
DISPLAY_MODES: tuple[DisplayMode, ...] = ("log", "spinner", "quiet")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Upper bounds: far above any real pool, low enough that a typo (an extra digit, ms for s)
# is caught here rather than by a cloud quota, a bill, or a timer thread that overflows.
MAX_NODES = 10_000
MAX_CPU = 4_096
MAX_CONCURRENCY = 10_000
MAX_TIMEOUT = 30 * 24 * 3600
"""30 days, in seconds; ``threading.Timer`` itself overflows near 292 years."""
MAX_MEMORY_GB = 100_000.0  # the largest machines have 32 TB
MAX_NAME = 256
# Linux refuses a single NAME=value string over 128 KiB (MAX_ARG_STRLEN) when a function
# starts a subprocess, and the whole environment counts against the argv limit.
MAX_ENV_VALUE = 128 * 1024 - 1024
MAX_ENV_TOTAL = 1024 * 1024


@frozen
class ComputeSpec:
    """What a pool needs from its machines, as selection and providers see it."""

    nodes: int = 1
    machine: str | None = None
    accelerator: AcceleratorSpec | None = None
    cpu: int | None = None
    memory_gb: float | None = None
    image: Image = field(factory=Image)
    allocation: AllocationStrategy = field(factory=SpotIfAvailable)
    volumes: tuple[VolumeLike, ...] = ()
    timeout: int = 3600
    env: Mapping[str, str] = field(default=MappingProxyType({}), repr=False)
    """May hold secrets (tokens, passwords), so it is never shown."""
    concurrency: int | Literal["auto"] = "auto"
    """Workers per node. ``"auto"`` (the default): each node runs one worker per GPU it
    has, one per MIG instance on MIG pools, and one without GPU; the node decides when it
    starts (:func:`skyward.gpus.plan_workers`) and ``instance_info().workers_per_node``
    says what it chose. An int is that many workers, whatever the GPUs."""
    executor: Executor = "process"
    """``"process"``: each worker is its own process; ``"thread"``: threads of the agent."""
    max_cost: float | None = None
    """Dollar budget of the whole pool: reaching it closes the pool."""
    max_hourly_cost: float | None = None
    """Cap on the pool's whole hourly price (every node), applied to offers before launch."""

    @property
    def expected_workers_per_node(self) -> int:
        """Workers per node as the client can tell before any node starts: the number
        given, or for ``"auto"`` the GPUs each node asks for (times the MIG instances per
        GPU on MIG pools), 1 without accelerator. A node's own plan, from the GPUs it
        finds, is the one that counts."""
        if self.concurrency != "auto":
            return self.concurrency
        accelerator = self.accelerator
        if accelerator is None or accelerator.vendor != "NVIDIA":
            return 1
        return max(1, math.ceil(accelerator.count)) * accelerator.mig_workers


def _positive_int(field: str, value: object, example: str, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(field, f"{value!r} is not a positive whole number", example)
    if value > most:
        raise ConfigurationError(field, f"{value} is more than the limit of {most}", example)
    return value


def _concurrency(value: object) -> int | Literal["auto"]:
    if value == "auto":
        return "auto"
    return _positive_int(
        "concurrency",
        value,
        'Use concurrency="auto" (one worker per GPU) or e.g. concurrency=4',
        MAX_CONCURRENCY,
    )


def _accelerator(value: object) -> AcceleratorSpec | None:
    if value is None or isinstance(value, AcceleratorSpec):
        return value
    if isinstance(value, str):
        from skyward.plugins import accelerator_catalog

        return accelerator_catalog().parse(value)
    raise ConfigurationError(
        "accelerator",
        f"{value!r} is neither an accelerator name nor an AcceleratorSpec",
        'Use e.g. "A100" or sky.AcceleratorSpec.NVIDIA.A100(count=8)',
    )


def _volumes(volume: object, volumes: object) -> tuple[VolumeLike, ...]:
    if volume is not None and volumes is not None:
        raise ConfigurationError(
            "volumes", "both volume= and volumes= were given", "Pass the list once, as volumes="
        )
    given = volumes if volumes is not None else volume
    if given is None:
        return ()
    if isinstance(given, Volume | S3Volume):
        given = [given]
    if not isinstance(given, Sequence) or isinstance(given, str):
        raise ConfigurationError(
            "volumes", f"{given!r} is not a list of volumes", "Use e.g. [sky.Volume(100, '/data')]"
        )
    for item in given:
        if not isinstance(item, Volume | S3Volume):
            raise ConfigurationError(
                "volumes", f"{item!r} is not a Volume or S3Volume", "Use sky.Volume or sky.S3Volume"
            )
    paths = [posixpath.normpath(v.mount_path) for v in given]
    if len(set(paths)) != len(paths):
        raise ConfigurationError(
            "volumes", f"mount paths repeat: {paths}", "Give each volume its own mount_path"
        )
    return tuple(given)


def _executor(value: object) -> Executor:
    if value == "process":
        return "process"
    if value == "thread":
        return "thread"
    raise ConfigurationError(
        "executor",
        f"{value!r} is not an executor",
        'Use "process" (each worker its own process) or "thread"',
    )


def _dollars(field: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            field, f"{value!r} is not an amount of US dollars", f"Use e.g. {field}=25.0"
        )
    amount = float(value)
    if not math.isfinite(amount) or amount <= 0:
        raise ConfigurationError(
            field,
            f"{value!r} is not a positive amount",
            f"Use e.g. {field}=25.0, or None for no limit",
        )
    return amount


def _env(value: object) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ConfigurationError("env", f"{value!r} is not a mapping", 'Use e.g. {"KEY": "value"}')
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise ConfigurationError(
                "env", f"{key!r} is not a valid variable name", "Use letters, digits and _"
            )
        if not isinstance(item, str):
            raise ConfigurationError(
                "env", f"the value of {key} is {type(item).__name__}, not str", "Pass str(value)"
            )
        if "\x00" in item:
            raise ConfigurationError(
                "env",
                f"the value of {key} contains a NUL character",
                "Remove it: environment values cannot hold NUL",
            )
        if len(key) > MAX_NAME or len(item) > MAX_ENV_VALUE:
            raise ConfigurationError(
                "env",
                f"{key[:40]!r} or its value is too long for an environment variable",
                f"Keep names under {MAX_NAME} characters and values under 127 KiB; "
                "send large data as a function argument",
            )
    if sum(len(k) + len(v) + 2 for k, v in value.items()) > MAX_ENV_TOTAL:
        raise ConfigurationError(
            "env", "the environment is larger than 1 MiB", "Send large data as function arguments"
        )
    return MappingProxyType(dict(value))


def _python_matches_client(image: Image) -> None:
    client = f"{sys.version_info.major}.{sys.version_info.minor}"
    if image.python != client:
        raise ConfigurationError(
            "image.python",
            f"nodes would run Python {image.python} but this client runs {client}; "
            "functions travel by value (cloudpickle) and need the same minor version",
            f'Leave python unset (it defaults to "{client}") or run the client on {image.python}',
        )


def build_spec(
    *,
    nodes: object = 1,
    machine: object = None,
    accelerator: object = None,
    cpu: object = None,
    memory: object = None,
    image: object = None,
    allocation: object = "spot-if-available",
    volume: object = None,
    volumes: object = None,
    timeout: object = 3600,
    env: object = None,
    concurrency: object = "auto",
    max_cost: object = None,
    max_hourly_cost: object = None,
    executor: object = "process",
) -> ComputeSpec:
    """Validate raw ``ComputePool`` arguments into a :class:`ComputeSpec`."""
    if image is None:
        image = Image()
    if not isinstance(image, Image):
        raise ConfigurationError("image", f"{image!r} is not an Image", "Use sky.Image(...)")
    _python_matches_client(image)
    if machine is not None and (
        not isinstance(machine, str)
        or not machine.strip()
        or not machine.isprintable()
        or len(machine) > MAX_NAME
    ):
        raise ConfigurationError(
            "machine", f"{machine!r} is not an instance type name", 'Use e.g. "p5.48xlarge"'
        )
    memory_gb: float | None = None
    if memory is not None:
        if not isinstance(memory, str | int | float) or isinstance(memory, bool):
            raise ConfigurationError("memory", f"{memory!r} is not a size", 'Use e.g. "32GB"')
        memory_gb = parse_memory_gb(memory)
        if memory_gb > MAX_MEMORY_GB:
            raise ConfigurationError(
                "memory", f"{memory!r} is more than any machine has", 'Use a size like "32GB"'
            )
    return ComputeSpec(
        nodes=_positive_int("nodes", nodes, "Use e.g. nodes=4", MAX_NODES),
        machine=machine,
        accelerator=_accelerator(accelerator),
        cpu=None if cpu is None else _positive_int("cpu", cpu, "Use e.g. cpu=8", MAX_CPU),
        memory_gb=memory_gb,
        image=image,
        allocation=parse_allocation(allocation),
        volumes=_volumes(volume, volumes),
        timeout=_positive_int(
            "timeout", timeout, "Use seconds, e.g. timeout=3600 (at most 30 days)", MAX_TIMEOUT
        ),
        env=_env(env),
        concurrency=_concurrency(concurrency),
        executor=_executor(executor),
        max_cost=_dollars("max_cost", max_cost),
        max_hourly_cost=_dollars("max_hourly_cost", max_hourly_cost),
    )


def check_display(value: object) -> DisplayMode:
    """Validate ``display=``."""
    for mode in DISPLAY_MODES:
        if value == mode:
            return mode
    raise ConfigurationError(
        "display", f"{value!r} is not a display mode", 'Use "log", "spinner" or "quiet"'
    )


def check_callable(field: str, value: object) -> Callable[..., Any] | None:
    """Validate an optional callable parameter (``on_event``)."""
    if value is not None and not callable(value):
        raise ConfigurationError(field, f"{value!r} is not callable", "Pass a function or None")
    return value


def check_providers(value: object) -> tuple[Any, ...]:
    """Validate ``provider=``: one provider configuration or a non-empty list of them.

    A configuration is an *instance* (``sky.Local()``): the class itself has ``create``
    and ``provider_name`` too, and would fail later with a confusing ``TypeError``.
    """
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if not items:
        raise ConfigurationError("provider", "the list is empty", "Give at least one provider")
    for item in items:
        if isinstance(item, type):
            raise ConfigurationError(
                "provider",
                f"{item.__name__} is a provider class, not a provider",
                f"Call it: provider=sky.{item.__name__}(...)",
            )
        if not (hasattr(item, "create") and hasattr(item, "provider_name")):
            raise ConfigurationError(
                "provider",
                f"{item!r} is not a provider",
                "Use e.g. sky.Local(), sky.AWS() or a list of them",
            )
    return tuple(items)
