"""build_spec, check_display, check_callable and volumes: validation names the field."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import pytest

import skyward as sky
from skyward.accelerators import AcceleratorSpec
from skyward.allocation import SpotIfAvailable
from skyward.errors import ConfigurationError
from skyward.spec import ComputeSpec, build_spec, check_callable, check_display

CLIENT_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
OTHER_MINOR = "3.12" if CLIENT_PYTHON != "3.12" else "3.11"


def field_of(**kwargs: Any) -> str:
    """The ``field`` of the ConfigurationError ``build_spec(**kwargs)`` raises."""
    with pytest.raises(ConfigurationError) as info:
        build_spec(**kwargs)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{info.value.field}:")
    return info.value.field


# -- defaults -----------------------------------------------------------------------------


def test_defaults() -> None:
    spec = build_spec()
    assert isinstance(spec, ComputeSpec)
    assert spec.nodes == 1
    assert spec.machine is None
    assert spec.accelerator is None
    assert spec.cpu is None
    assert spec.memory_gb is None
    assert spec.image == sky.Image()
    assert spec.image.python == CLIENT_PYTHON
    assert spec.allocation == SpotIfAvailable()
    assert spec.volumes == ()
    assert spec.timeout == 3600
    assert dict(spec.env) == {}
    assert spec.concurrency == "auto"
    assert spec.expected_workers_per_node == 1


# -- bad values ---------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [0, -1, 1.5, True, "2", None])
def test_bad_nodes(nodes: object) -> None:
    assert field_of(nodes=nodes) == "nodes"


@pytest.mark.parametrize("cpu", [0, -4, 2.5, True, "8"])
def test_bad_cpu(cpu: object) -> None:
    assert field_of(cpu=cpu) == "cpu"


@pytest.mark.parametrize("memory", ["lots", "-1GB", "0GB", 0, -3, True, [32], ""])
def test_bad_memory(memory: object) -> None:
    assert field_of(memory=memory) == "memory"


@pytest.mark.parametrize("timeout", [0, -1, 1.5, True, "3600"])
def test_bad_timeout(timeout: object) -> None:
    assert field_of(timeout=timeout) == "timeout"


@pytest.mark.parametrize("concurrency", [0, -2, 1.5, False])
def test_bad_concurrency(concurrency: object) -> None:
    assert field_of(concurrency=concurrency) == "concurrency"


@pytest.mark.parametrize(
    "env",
    [
        {"KEY": 1},
        {"KEY": None},
        {"1KEY": "x"},
        {"MY-KEY": "x"},
        {"": "x"},
        {3: "x"},
        ["KEY=x"],
        "KEY=x",
    ],
)
def test_bad_env(env: object) -> None:
    assert field_of(env=env) == "env"


def test_env_name_must_be_ascii_like_image_env() -> None:
    with pytest.raises(ConfigurationError):
        sky.Image(env={"café": "x"})  # the image already refuses it
    assert field_of(env={"café": "x"}) == "env"


@pytest.mark.parametrize("image", ["python:3.11", {"pip": ["numpy"]}, 3])
def test_image_must_be_an_image(image: object) -> None:
    assert field_of(image=image) == "image"


def test_image_python_older_than_supported() -> None:
    with pytest.raises(ConfigurationError) as info:
        build_spec(image=sky.Image(python="3.10"))
    assert info.value.field == "image.python"


def test_image_python_other_minor_than_the_client() -> None:
    assert field_of(image=sky.Image(python=OTHER_MINOR)) == "image.python"


def test_image_python_error_names_both_versions() -> None:
    with pytest.raises(ConfigurationError) as info:
        build_spec(image=sky.Image(python=OTHER_MINOR))
    assert OTHER_MINOR in str(info.value)
    assert CLIENT_PYTHON in str(info.value)


@pytest.mark.parametrize("machine", ["", "   ", 42])
def test_bad_machine(machine: object) -> None:
    assert field_of(machine=machine) == "machine"


@pytest.mark.parametrize("accelerator", [42, 1.5, ["A100"], ""])
def test_bad_accelerator(accelerator: object) -> None:
    assert field_of(accelerator=accelerator) == "accelerator"


def test_unknown_accelerator_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigurationError) as info:
        build_spec(accelerator="H10")
    assert info.value.field == "accelerator"
    assert "H100" in str(info.value)
    assert "H10" in info.value.problem


def test_volume_and_volumes_both_given() -> None:
    one = [sky.Volume(size_gb=10, mount_path="/a")]
    two = [sky.Volume(size_gb=10, mount_path="/b")]
    assert field_of(volume=one, volumes=two) == "volumes"


def test_duplicate_mount_paths() -> None:
    volumes = [
        sky.Volume(size_gb=10, mount_path="/data"),
        sky.S3Volume(mount_path="/data", bucket="my-bucket"),
    ]
    with pytest.raises(ConfigurationError) as info:
        build_spec(volumes=volumes)
    assert info.value.field == "volumes"
    assert "/data" in str(info.value)


@pytest.mark.parametrize("volumes", ["/data", 5, ["/data"], [sky.Volume(1, "/a"), "x"]])
def test_volumes_must_be_volumes(volumes: object) -> None:
    assert field_of(volumes=volumes) == "volumes"


@pytest.mark.parametrize("size", [-5, 0, 1.5, True, "10"])
def test_volume_size_must_be_positive(size: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        sky.Volume(size_gb=size, mount_path="/data")  # type: ignore[arg-type]
    assert info.value.field == "volume.size_gb"


@pytest.mark.parametrize("path", ["data", "./data", "", "/", "///", "/.", "/da\0ta", None])
def test_volume_mount_path_must_be_absolute(path: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        sky.Volume(size_gb=10, mount_path=path)  # type: ignore[arg-type]
    assert info.value.field == "volume.mount_path"


def test_volume_cannot_mount_over_root_spelled_with_two_slashes() -> None:
    with pytest.raises(ConfigurationError) as info:
        sky.Volume(size_gb=10, mount_path="//")
    assert info.value.field == "volume.mount_path"


def test_s3_volume_with_relative_mount_path() -> None:
    with pytest.raises(ConfigurationError) as info:
        sky.S3Volume(mount_path="data", bucket="my-bucket")
    assert info.value.field == "volume.mount_path"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bucket", ["", "ab", "my-bucket/prefix", "x" * 64, None])
def test_s3_volume_bucket_name(bucket: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        sky.S3Volume(mount_path="/data", bucket=bucket)  # type: ignore[arg-type]
    assert info.value.field == "volume.bucket"


def test_s3_volume_documented_defaults() -> None:
    volume = sky.S3Volume(mount_path="/data", bucket="my-bucket")
    assert volume.prefix == ""
    assert volume.read_only is True


# -- good values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("memory", "gb"),
    [("32GB", 32.0), ("512MB", 0.5), ("1.5TB", 1536.0), ("16GiB", 16.0), (8, 8.0)],
)
def test_memory_is_normalized_to_gb(memory: object, gb: float) -> None:
    spec = build_spec(memory=memory)
    assert spec.memory_gb == pytest.approx(gb)
    assert isinstance(spec.memory_gb, float)


def test_accelerator_string_becomes_a_spec() -> None:
    spec = build_spec(accelerator="A100-40GB")
    assert isinstance(spec.accelerator, AcceleratorSpec)
    assert spec.accelerator.name == "A100"
    assert spec.accelerator.memory == "40GB"
    assert spec.accelerator.memory_gb == 40
    assert spec.accelerator.count == 1


def test_accelerator_spec_is_kept() -> None:
    accelerator = sky.AcceleratorSpec.NVIDIA.H100(count=4)
    assert build_spec(accelerator=accelerator).accelerator is accelerator


def test_plain_accelerator_name() -> None:
    spec = build_spec(accelerator="H100")
    assert spec.accelerator is not None
    assert spec.accelerator.name == "H100"
    assert spec.accelerator.memory is None


def test_good_scalars_are_kept() -> None:
    spec = build_spec(
        nodes=4, cpu=8, timeout=60, concurrency=3, machine="p5.48xlarge", allocation=0.5
    )
    assert (spec.nodes, spec.cpu, spec.timeout, spec.concurrency) == (4, 8, 60, 3)
    assert spec.machine == "p5.48xlarge"
    assert spec.allocation == sky.Allocation.Percent(spot=0.5)


def test_env_is_copied_and_read_only() -> None:
    env = {"HF_HOME": "/data/hf", "_X1": ""}
    spec = build_spec(env=env)
    env["HF_HOME"] = "changed"
    assert dict(spec.env) == {"HF_HOME": "/data/hf", "_X1": ""}
    assert isinstance(spec.env, Mapping)
    with pytest.raises(TypeError):
        spec.env["NEW"] = "x"  # type: ignore[index]


def test_image_with_client_python_is_accepted() -> None:
    image = sky.Image(python=CLIENT_PYTHON, pip=["numpy"])
    assert build_spec(image=image).image is image


@pytest.mark.parametrize("keyword", ["volume", "volumes"])
def test_both_volume_spellings_are_accepted(keyword: str) -> None:
    volumes = [
        sky.Volume(size_gb=100, mount_path="/scratch"),
        sky.S3Volume(mount_path="/data", bucket="my-bucket", prefix="datasets/"),
    ]
    spec = build_spec(**{keyword: volumes})
    assert spec.volumes == tuple(volumes)


@pytest.mark.parametrize(
    "volume",
    [sky.Volume(size_gb=100, mount_path="/scratch"), sky.S3Volume("/data", "my-bucket")],
)
def test_a_single_volume_is_accepted(volume: object) -> None:
    assert build_spec(volume=volume).volumes == (volume,)
    assert build_spec(volumes=volume).volumes == (volume,)


def test_volume_tuple_is_accepted() -> None:
    volume = sky.Volume(size_gb=1, mount_path="/a")
    assert build_spec(volumes=(volume,)).volumes == (volume,)


def test_distinct_mount_paths_are_accepted() -> None:
    spec = build_spec(volumes=[sky.Volume(1, "/a"), sky.Volume(1, "/a/b"), sky.Volume(1, "/b")])
    assert [v.mount_path for v in spec.volumes] == ["/a", "/a/b", "/b"]


def test_duplicate_mount_paths_spelled_differently() -> None:
    with pytest.raises(ConfigurationError) as info:
        build_spec(volumes=[sky.Volume(1, "/data"), sky.S3Volume("/data/", "my-bucket")])
    assert info.value.field == "volumes"


def test_spec_is_frozen() -> None:
    spec = build_spec()
    with pytest.raises(AttributeError):
        spec.nodes = 2  # type: ignore[misc]


# -- check_display / check_callable -------------------------------------------------------


@pytest.mark.parametrize("mode", ["log", "spinner", "quiet"])
def test_check_display_accepts_modes(mode: str) -> None:
    assert check_display(mode) == mode


@pytest.mark.parametrize("mode", ["LOG", "verbose", "", None, 1])
def test_check_display_rejects_others(mode: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        check_display(mode)
    assert info.value.field == "display"


def test_check_callable() -> None:
    def handler(event: object) -> None:
        return None

    assert check_callable("on_event", handler) is handler
    assert check_callable("on_event", None) is None
    assert check_callable("on_event", print) is print


@pytest.mark.parametrize("value", ["print", 3, ["f"]])
def test_check_callable_rejects_non_callables(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        check_callable("on_event", value)
    assert info.value.field == "on_event"
