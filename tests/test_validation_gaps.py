"""Bad values that used to slip through validation (issue 9, item 15).

Each case is a :class:`ConfigurationError` (a ``ValueError``) naming the field, raised
before any provider is called.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import skyward as sky
from skyward.env_settings import env_seconds
from skyward.errors import ConfigurationError
from skyward.image import BootstrapStep
from skyward.selection import check_selection
from skyward.spec import MAX_TIMEOUT, ComputeSpec, check_providers
from skyward.ssh.hosts import SSHHost


def _field_of(make: Callable[[], object]) -> str:
    with pytest.raises(ConfigurationError) as caught:
        make()
    assert isinstance(caught.value, ValueError)
    return caught.value.field


def test_pool_env_value_with_a_nul_byte() -> None:
    assert _field_of(lambda: sky.ComputePool(provider=sky.Local(), env={"A": "x\x00y"})) == "env"


@pytest.mark.parametrize("root", [5, b"/tmp", "", "  ", "/tmp/a\x00b", ["/tmp"]])
def test_local_root_must_be_a_path(root: object) -> None:
    assert _field_of(lambda: sky.Local(root=root)) == "root"  # type: ignore[arg-type]


def test_local_accepts_a_pathlike(tmp_path: Path) -> None:
    assert sky.Local(root=tmp_path, cache_dir=tmp_path).root == str(tmp_path)  # type: ignore[arg-type]
    assert _field_of(lambda: sky.Local(cache_dir=3.5)) == "cache_dir"  # type: ignore[arg-type]


@pytest.mark.parametrize("selection", [int, str, dict, sky.Local, lambda: None, lambda a: a])
def test_selection_must_be_a_selector(selection: object) -> None:
    assert _field_of(lambda: check_selection(selection)) == "selection"


def test_a_selector_returning_none_is_a_clear_error() -> None:
    selector = check_selection(lambda providers, spec: None)
    providers = (sky.Local().create(),)
    with pytest.raises(ConfigurationError, match="returned None") as caught:
        selector(providers, ComputeSpec())
    assert caught.value.field == "selection"


def test_a_pool_whose_selector_returns_a_stranger_fails_clearly() -> None:
    stranger = sky.Local().create()
    before = threading.active_count()
    pool = sky.ComputePool(
        provider=sky.Local(), selection=lambda providers, spec: stranger, display="quiet"
    )
    with pytest.raises(ConfigurationError, match="not one of the providers"), pool:
        pass
    assert threading.active_count() <= before + 1


@pytest.mark.parametrize("value", [sky.Local, sky.SSH, [sky.Local()], [sky.Local(), sky.Local]])
def test_a_provider_class_is_not_a_provider(value: Any) -> None:
    if isinstance(value, list) and all(not isinstance(v, type) for v in value):
        assert check_providers(value) == tuple(value)
        return
    with pytest.raises(ConfigurationError, match="Call it") as caught:
        check_providers(value)
    assert caught.value.field == "provider"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("timeout", 10**10),
        ("timeout", MAX_TIMEOUT + 1),
        ("nodes", 10**6),
        ("concurrency", 10**6),
        ("cpu", 10**5),
    ],
)
def test_upper_bounds(name: str, value: int) -> None:
    assert _field_of(lambda: sky.ComputePool(provider=sky.Local(), **{name: value})) == name


def test_the_longest_timeout_still_fits_a_timer() -> None:
    pool = sky.ComputePool(provider=sky.Local(), timeout=MAX_TIMEOUT)
    assert pool.spec.timeout == MAX_TIMEOUT
    assert MAX_TIMEOUT < threading.TIMEOUT_MAX


@pytest.mark.parametrize("value", [5, b"/k", ["~/.ssh/known_hosts", 3], {"a": 1}, "", "a\x00"])
def test_ssh_known_hosts_must_be_paths(value: object) -> None:
    assert _field_of(lambda: sky.SSH(hosts=["a@127.0.0.1"], known_hosts=value)) == "known_hosts"  # type: ignore[arg-type]


def test_ssh_known_hosts_accepts_pathlikes(tmp_path: Path) -> None:
    config = sky.SSH(hosts=["a@127.0.0.1"], known_hosts=[tmp_path / "k"])  # type: ignore[list-item]
    assert config.known_hosts == (str(tmp_path / "k"),)
    assert _field_of(lambda: sky.SSH(hosts=["a@b"], ssh_config=7)) == "ssh_config"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"port": "22"}, "port"),
        ({"port": 22.0}, "port"),
        ({"port": True}, "port"),
        ({"port": 0}, "port"),
        ({"user": 5}, "user"),
        ({"user": "a b"}, "user"),
        ({"user": "root\n"}, "user"),
        ({"identity_file": 5}, "identity_file"),
        ({"jump": "bastion"}, "jump"),
    ],
)
def test_ssh_host_fields(options: dict[str, Any], field: str) -> None:
    assert _field_of(lambda: SSHHost("10.0.0.5", **options)) == field


@pytest.mark.parametrize("host", [5, "", "a b", "host\n", "a;rm -rf ~", "$(id)"])
def test_ssh_host_names(host: object) -> None:
    assert _field_of(lambda: SSHHost(host)) == "host"  # type: ignore[arg-type]


def test_ssh_host_strings_with_a_trailing_newline() -> None:
    assert _field_of(lambda: sky.SSH(hosts=["ubuntu@10.0.0.5\n:22"])) == "hosts"


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: sky.Image(apt=["ffmpeg\n"]), "image.apt"),
        (lambda: sky.Image(apt=["ffmpeg=1.0\n"]), "image.apt"),
        (lambda: sky.Image(env={"HF_HOME\n": "/x"}), "image.env"),
        (lambda: sky.Image(python="3.11\n3"), "image.python"),
        (lambda: BootstrapStep(name="mount\n", script="true"), "BootstrapStep.name"),
        (lambda: sky.ComputePool(provider=sky.Local(), env={"KEY\n": "v"}), "env"),
    ],
)
def test_names_with_a_trailing_newline(make: Callable[[], object], field: str) -> None:
    assert _field_of(make) == field


@pytest.mark.parametrize("raw", ["nan", "-1", "0", "inf", "abc", "1e9", "-inf"])
def test_bad_heartbeat_timeouts(raw: str) -> None:
    environ = {"SKYWARD_HEARTBEAT_TIMEOUT": raw}
    with pytest.raises(ConfigurationError, match="SKYWARD_HEARTBEAT_TIMEOUT"):
        env_seconds("SKYWARD_HEARTBEAT_TIMEOUT", 30.0, environ=environ)


def test_good_heartbeat_timeouts() -> None:
    name = "SKYWARD_HEARTBEAT_TIMEOUT"
    assert env_seconds(name, 30.0, environ={}) == 30.0
    assert env_seconds(name, 30.0, environ={name: " "}) == 30.0
    assert env_seconds(name, 30.0, environ={name: "2.5"}) == 2.5
    assert math.isfinite(env_seconds(name, 30.0, environ={name: "86400"}))


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: sky.Volume(size_gb=10**12, mount_path="/d"), "volume.size_gb"),
        (lambda: sky.Volume(size_gb=10, mount_path="/d\n"), "volume.mount_path"),
        (lambda: sky.S3Volume(mount_path="/d", bucket="b b\n"), "volume.bucket"),
        (lambda: sky.S3Volume(mount_path="/d", bucket="ok-bucket", prefix=5), "volume.prefix"),
        (lambda: sky.S3Volume(mount_path="/d", bucket="ok-bucket", prefix="a\nb"), "volume.prefix"),
        (
            lambda: sky.S3Volume(mount_path="/d", bucket="ok-bucket", read_only="no"),
            "volume.read_only",
        ),
        (lambda: sky.AcceleratorSpec.NVIDIA.A100(count=10**9), "accelerator"),
        (lambda: sky.ComputePool(provider=sky.Local(), memory=10**12), "memory"),
        (lambda: sky.ComputePool(provider=sky.Local(), machine="m" * 10_000), "machine"),
        (lambda: sky.ComputePool(provider=sky.Local(), env={"A": "x" * 200_000}), "env"),
        (
            lambda: sky.ComputePool(
                provider=sky.Local(), env={f"K{i}": "x" * 100_000 for i in range(12)}
            ),
            "env",
        ),
        (lambda: sky.Image(env={"A": "x" * 200_000}), "image.env"),
        (lambda: sky.AWS(instance_timeout=10**9), "instance_timeout"),
        (lambda: sky.AWS(region=None), "region"),
    ],
)
def test_more_bounds_and_types(make: Callable[[], object], field: str) -> None:
    assert _field_of(make) == field


# -- wired into the pool ----------------------------------------------------------------


def test_a_provider_class_instead_of_an_instance_is_named() -> None:
    with pytest.raises(ConfigurationError, match=r"provider.*sky\.Local\(\.\.\.\)"):
        sky.ComputePool(provider=sky.Local)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["SKYWARD_HEARTBEAT_TIMEOUT", "SKYWARD_METRICS_INTERVAL"])
@pytest.mark.parametrize("raw", ["nan", "-1", "inf", "soon"])
def test_bad_agent_settings_in_the_environment_fail_the_pool_at_construction(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ConfigurationError, match=name):
        sky.ComputePool(provider=sky.Local())


def test_compute_of_something_that_is_not_a_function() -> None:
    with pytest.raises(ConfigurationError, match="fn"):
        sky.compute(5)  # type: ignore[call-overload]
