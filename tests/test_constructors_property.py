"""Property-based tests over every public constructor: any value for any parameter either
builds or raises a ``ValueError`` subclass (a ``ConfigurationError``) naming the
parameter — never a ``TypeError``, ``OverflowError`` or a crash deeper in — and nothing
reaches a provider while that happens.

Values come from a deliberately hostile strategy: wrong types, NaN and infinities, huge
and negative numbers, strings with newlines, NUL bytes and shell metacharacters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skyward as sky
from skyward.accelerators import AcceleratorSpec
from skyward.errors import ConfigurationError
from skyward.offers import Offer
from skyward.spec import ComputeSpec
from tests.aws_fakes import AwsEnv

HOSTILE_TEXT = st.text(
    alphabet=st.sampled_from(
        [*"aZ09 _-./:@=[]~\n\r\t\x00\x7f'\"`$;&|<>()*?!\\{}#%,+", "é", "\u202e", "😀"]
    ),
    max_size=12,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    HOSTILE_TEXT,
    st.binary(max_size=6),
    st.sampled_from([object(), int, sky.Local, b"", (), frozenset(), 1j]),
)
ANYTHING = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.tuples(SCALARS, SCALARS),
    st.dictionaries(SCALARS.filter(lambda v: v.__hash__ is not None), SCALARS, max_size=3),
)
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def builds_or_names(
    field: str, make: Callable[[], object], kept: Callable[[Any], bool] | None = None
) -> None:
    """``make()`` either works (and then ``kept(result)`` holds: the value was stored as
    the type the field promises) or raises a ConfigurationError naming ``field``."""
    error: ConfigurationError | None = None
    try:
        built = make()
    except ConfigurationError as raised:
        error = raised
    if error is None:
        assert kept is None or kept(built), f"{field} accepted a value of the wrong type"
        return
    assert isinstance(error, ValueError)
    # The field, or (for a part of one, like an accelerator's count) the message.
    words = field.rsplit(".", maxsplit=1)[-1].replace("_", " ").lower()
    named = field in error.field or words in str(error).lower()
    assert named, f"{field!r} not named by {error.field!r}: {error}"
    assert error.fix, "the error says how to fix it"


# -- a provider that counts every call -------------------------------------------------------


class CountingProvider:
    """A provider configuration whose live side counts calls; validation is allowed."""

    provider_name: ClassVar[str] = "counting"
    calls: ClassVar[list[str]] = []

    def validate(self, spec: ComputeSpec) -> None:
        return None

    def create(self) -> Any:
        CountingProvider.calls.append("create")
        raise AssertionError("a provider was created while constructing a pool")


@pytest.fixture
def counting() -> Iterator[type[CountingProvider]]:
    CountingProvider.calls.clear()
    yield CountingProvider
    assert CountingProvider.calls == []


POOL_PARAMETERS = [
    "selection",
    "image",
    "nodes",
    "machine",
    "accelerator",
    "cpu",
    "memory",
    "volume",
    "volumes",
    "allocation",
    "timeout",
    "env",
    "concurrency",
    "display",
    "on_event",
    "collect_metrics",
]


@pytest.mark.parametrize("name", POOL_PARAMETERS)
@PROPERTY
@given(value=ANYTHING)
def test_compute_pool(name: str, value: object, counting: type[CountingProvider]) -> None:
    builds_or_names(name, lambda: sky.ComputePool(provider=counting(), **{name: value}))
    assert counting.calls == []


@PROPERTY
@given(env=st.dictionaries(HOSTILE_TEXT, HOSTILE_TEXT, max_size=3))
def test_compute_pool_env(env: dict[str, str], counting: type[CountingProvider]) -> None:
    builds_or_names("env", lambda: sky.ComputePool(provider=counting(), env=env))


@pytest.mark.parametrize("name", ["root", "cache_dir"])
@PROPERTY
@given(value=ANYTHING)
def test_local(name: str, value: object) -> None:
    builds_or_names(
        name,
        lambda: sky.Local(**{name: value}),
        lambda local: isinstance(getattr(local, name), str | None),
    )


@pytest.mark.parametrize("name", ["hosts", "known_hosts", "connect_timeout", "ssh_config"])
@PROPERTY
@given(value=ANYTHING)
def test_ssh(name: str, value: object) -> None:
    options: dict[str, object] = {"hosts": ["u@127.0.0.1"], name: value}
    builds_or_names(name, lambda: sky.SSH(**options), _ssh_kept)


def _ssh_kept(config: sky.SSH) -> bool:
    return (
        all(isinstance(h, sky.SSHHost) for h in config.hosts)
        and (config.known_hosts is None or all(isinstance(p, str) for p in config.known_hosts))
        and isinstance(config.connect_timeout, int | float)
        and not isinstance(config.connect_timeout, bool)
        and isinstance(config.ssh_config, str | None)
    )


@PROPERTY
@given(hosts=st.lists(st.one_of(HOSTILE_TEXT, SCALARS), min_size=1, max_size=3))
def test_ssh_host_strings(hosts: list[object]) -> None:
    builds_or_names("hosts", lambda: sky.SSH(hosts=hosts))


@pytest.mark.parametrize("name", ["host", "user", "port", "identity_file", "jump"])
@PROPERTY
@given(value=ANYTHING)
def test_ssh_host(name: str, value: object) -> None:
    options: dict[str, object] = {"host": "10.0.0.5", name: value}
    builds_or_names(
        name,
        lambda: sky.SSHHost(**options),  # type: ignore[arg-type]
        lambda h: (
            isinstance(h.host, str)
            and isinstance(h.user, str | None)
            and (h.port is None or (type(h.port) is int and 0 < h.port < 65536))
            and isinstance(h.identity_file, str | None)
            and isinstance(h.jump, sky.SSHHost | None)
        ),
    )


@pytest.mark.parametrize("name", ["python", "pip", "pip_extra_index_url", "apt", "env"])
@PROPERTY
@given(value=st.one_of(ANYTHING, st.lists(HOSTILE_TEXT, max_size=3)))
def test_image(name: str, value: object) -> None:
    builds_or_names(f"image.{name}", lambda: sky.Image(**{name: value}))


@pytest.mark.parametrize("name", ["size_gb", "mount_path"])
@PROPERTY
@given(value=ANYTHING)
def test_volume(name: str, value: object) -> None:
    options: dict[str, object] = {"size_gb": 10, "mount_path": "/data", name: value}
    builds_or_names(
        name,
        lambda: sky.Volume(**options),  # type: ignore[arg-type]
        lambda v: type(v.size_gb) is int and isinstance(v.mount_path, str),
    )


@pytest.mark.parametrize("name", ["mount_path", "bucket", "prefix", "read_only"])
@PROPERTY
@given(value=ANYTHING)
def test_s3_volume(name: str, value: object) -> None:
    options: dict[str, object] = {"mount_path": "/data", "bucket": "my-bucket", name: value}
    builds_or_names(
        name,
        lambda: sky.S3Volume(**options),  # type: ignore[arg-type]
        lambda v: (
            isinstance(v.mount_path, str)
            and isinstance(v.bucket, str)
            and isinstance(v.prefix, str)
            and type(v.read_only) is bool
        ),
    )


FACTORIES: Sequence[tuple[str, Callable[..., AcceleratorSpec]]] = [
    ("NVIDIA.A100", AcceleratorSpec.NVIDIA.A100),
    ("NVIDIA.H100", AcceleratorSpec.NVIDIA.H100),
    ("NVIDIA.L4", AcceleratorSpec.NVIDIA.L4),
]


@pytest.mark.parametrize(
    ("label", "factory", "name"),
    [
        (label, factory, name)
        for label, factory in FACTORIES
        for name in inspect.signature(factory).parameters
    ],
)
@PROPERTY
@given(value=ANYTHING)
def test_accelerator_factories(
    label: str, factory: Callable[..., AcceleratorSpec], name: str, value: object
) -> None:
    builds_or_names(name, lambda: factory(**{name: value}))


AWS_PARAMETERS = [
    "region",
    "ami",
    "subnet_id",
    "security_group_id",
    "instance_profile_arn",
    "username",
    "instance_timeout",
    "allocation_strategy",
    "use_ssm",
    "ssh_cidr",
]


@pytest.mark.parametrize("name", AWS_PARAMETERS)
@PROPERTY
@given(value=ANYTHING)
def test_aws(name: str, value: object, aws_env: AwsEnv) -> None:
    aws_env.moto.reset_calls()
    builds_or_names(name, lambda: sky.AWS(**{name: value}))
    assert aws_env.moto.calls == [], "constructing AWS(...) called AWS"


def test_the_counting_provider_would_notice_a_call(counting: type[CountingProvider]) -> None:
    pool = sky.ComputePool(provider=counting())
    offer = Offer(provider="counting", instance_type="x", vcpus=1, memory_gb=1)
    assert offer.instance_type == "x"
    with pytest.raises(Exception, match="created"), pool:
        pass
    counting.calls.clear()
