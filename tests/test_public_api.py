"""The user documentation is the contract: every name, parameter and field it gives exists.

Reads ``../shared/reference/api-reference.md`` (beside the repository, as in CI) so the
check follows the document rather than a copy of it.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import attrs
import pytest

import skyward as sky

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "api-reference.md"

if not REFERENCE.exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{REFERENCE} is missing: CI clones the repository beside shared/")
    pytest.skip(
        "the shared reference documents are not beside this checkout", allow_module_level=True
    )

TEXT = REFERENCE.read_text()


def _section(title: str) -> str:
    start = TEXT.index(f"\n## {title}\n")
    end = TEXT.find("\n## ", start + 1)
    return TEXT[start:end]


def _table_parameters(section: str, heading: str) -> list[str]:
    block = section[section.index(heading) :]
    table = block[block.index("| Parameter") :].split("\n\n", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)


def _dataclasses(section: str) -> dict[str, list[str]]:
    classes: dict[str, list[str]] = {}
    for name, body in re.findall(r"class (\w+):\n((?:    .*\n)+)", section + "\n"):
        fields = re.findall(r"^    (\w+): ", body, flags=re.MULTILINE)
        classes[name] = fields
    return classes


DOCUMENTED_NAMES = [
    "compute", "PendingCompute", "PendingBatch", "gather", "ComputePool", "pool", "MultiPool",
    "select_first", "select_cheapest", "select_available", "NoAvailableProviderError",
    "AllProvidersFailedError", "Image", "AcceleratorSpec", "Accelerator", "NVIDIA", "shard",
    "DistributedSampler", "instance_info", "InstanceInfo", "compose", "emit", "use_callback",
    "Allocation", "S3Volume", "is_nvidia", "is_trainium", "current_accelerator",
    "select_instance", "Callback", "ComputeSpec", "ProviderSelector", "SelectionLike",
]  # fmt: skip


@pytest.mark.parametrize("name", DOCUMENTED_NAMES)
def test_documented_name_exists(name: str) -> None:
    assert hasattr(sky, name)
    assert name in sky.__all__


def test_every_event_class_and_field_exists() -> None:
    classes = _dataclasses(_section("Events"))
    assert len(classes) == 14
    for name, fields in classes.items():
        event = getattr(sky, name)
        actual = [f.name for f in attrs.fields(event)]
        assert actual[: len(fields)] == fields, name


def test_instance_info_fields() -> None:
    documented = _dataclasses(_section("Cluster Information"))["InstanceInfo"]
    info = sky.InstanceInfo(node=0, total_nodes=1)
    for field in documented:
        assert hasattr(info, field), field


def test_compute_pool_takes_every_documented_parameter() -> None:
    documented = _table_parameters(_section("Core API"), "### ComputePool")
    assert "collect_metrics" in documented
    parameters = inspect.signature(sky.ComputePool).parameters
    assert set(documented) <= set(parameters)
    assert "volumes" in parameters, "DECISIONS.md: both volume= and volumes="
    defaults = {name: p.default for name, p in parameters.items()}
    assert defaults["selection"] == "first"
    assert defaults["nodes"] == 1
    assert defaults["allocation"] == "spot-if-available"
    assert defaults["timeout"] == 3600
    assert defaults["concurrency"] == "auto", 'DECISIONS.md: concurrency="auto" is the default'
    assert defaults["display"] == "log"
    assert defaults["collect_metrics"] is True


def test_image_takes_every_documented_parameter() -> None:
    documented = _table_parameters(_section("Image"), "**Parameters:**")
    fields = {f.name for f in attrs.fields(sky.Image)}
    assert set(documented) == fields
    assert len(sky.Image().content_hash()) == 12
    assert sky.Image().bootstrap(ttl=0).startswith("#!/bin/sh")


def test_pool_methods_and_properties() -> None:
    for name in ("run", "run_batch", "broadcast", "is_active", "instance_count"):
        assert hasattr(sky.ComputePool, name)


def test_nvidia_literal_lists_the_documented_names() -> None:
    values = set(sky.NVIDIA.__args__)  # type: ignore[attr-defined]
    for name in ("T4", "L4", "L40S", "A10G", "A100-40GB", "H100-SXM", "H200", "GB200", "GH200"):
        assert name in values
