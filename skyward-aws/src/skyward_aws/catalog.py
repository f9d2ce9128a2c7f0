"""The live EC2 catalog: which instance types exist, where, and what they carry.

``DescribeInstanceTypes`` (paginated) is cached on disk per region for a day;
``DescribeInstanceTypeOfferings`` says which types each AZ sells. There is no hard-coded
accelerator → type table: a type matches a spec by the GPUs / Neuron devices AWS reports.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attrs import asdict, frozen

from skyward.spec import ComputeSpec
from skyward.spec_matching import satisfying

__all__ = ["InstanceType", "load_instance_types", "load_offerings", "matching_types"]

CATALOG_TTL = 24 * 3600
# AWS names some GPUs differently from the catalog.
_GPU_NAMES = {"a10g": "A10G", "t4g": "T4G", "l40s": "L40S", "radeon pro v520": "V520"}


@frozen
class InstanceType:
    name: str
    vcpus: int
    memory_gb: float
    architecture: str
    accelerator: str | None = None
    accelerator_count: float = 0
    accelerator_memory_gb: float | None = None
    accelerator_vendor: str | None = None
    spot: bool = True
    current: bool = True

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]


def _gpu(info: dict[str, Any]) -> tuple[str, float, float | None, str] | None:
    gpus = (info.get("GpuInfo") or {}).get("Gpus") or []
    if not gpus:
        return None
    gpu = gpus[0]
    name = str(gpu.get("Name", ""))
    count = float(gpu.get("Count", 1))
    partition = gpu.get("GpuPartitionSize")
    if isinstance(partition, int | float) and 0 < partition < 1:
        # Fractional GPUs (G6f): AWS reports Count 0 and a share of one logical GPU.
        count = float(gpu.get("LogicalGpuCount", 1)) * float(partition)
    memory = (gpu.get("MemoryInfo") or {}).get("SizeInMiB")
    memory_gb = float(memory) / 1024 if memory else None
    return _GPU_NAMES.get(name.lower(), name), count, memory_gb, str(gpu.get("Manufacturer", ""))


def _neuron(info: dict[str, Any]) -> tuple[str, float, float | None, str] | None:
    devices = (info.get("NeuronInfo") or {}).get("NeuronDevices") or []
    if devices:
        device = devices[0]
        memory = (device.get("MemoryInfo") or {}).get("SizeInMiB")
        name = str(device.get("Name", "")).replace(" ", "")
        return name, float(device.get("Count", 1)), float(memory) / 1024 if memory else None, "AWS"
    inference = (info.get("InferenceAcceleratorInfo") or {}).get("Accelerators") or []
    if inference:
        device = inference[0]
        return str(device.get("Name", "Inferentia")), float(device.get("Count", 1)), None, "AWS"
    return None


def _parse(info: dict[str, Any]) -> InstanceType:
    accelerator = _gpu(info) or _neuron(info)
    architectures = (info.get("ProcessorInfo") or {}).get("SupportedArchitectures") or ["x86_64"]
    return InstanceType(
        name=info["InstanceType"],
        vcpus=int((info.get("VCpuInfo") or {}).get("DefaultVCpus", 1)),
        memory_gb=float((info.get("MemoryInfo") or {}).get("SizeInMiB", 0)) / 1024,
        architecture="arm64" if "arm64" in architectures else "x86_64",
        accelerator=accelerator[0] if accelerator else None,
        accelerator_count=accelerator[1] if accelerator else 0,
        accelerator_memory_gb=accelerator[2] if accelerator else None,
        accelerator_vendor=accelerator[3] if accelerator else None,
        spot="spot" in (info.get("SupportedUsageClasses") or ["spot"]),
        current=bool(info.get("CurrentGeneration", True)),
    )


def load_instance_types(ec2: Any, region: str, cache: Path) -> list[InstanceType]:
    """Every instance type of the region (cached on disk for a day)."""
    path = cache / f"instance-types-{region}.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if time.time() - stored.get("fetched", 0) < CATALOG_TTL:
            return [InstanceType(**item) for item in stored["types"]]
    types = [
        _parse(info)
        for page in ec2.get_paginator("describe_instance_types").paginate(
            PaginationConfig={"PageSize": 100}  # the API's largest page
        )
        for info in page["InstanceTypes"]
    ]
    write_json(path, {"fetched": time.time(), "types": [asdict(t) for t in types]})
    return types


def load_offerings(ec2: Any, types: Iterable[str]) -> dict[str, set[str]]:
    """Instance type → the availability zones that sell it."""
    names = sorted(set(types))
    zones: dict[str, set[str]] = {}
    paginator = ec2.get_paginator("describe_instance_type_offerings")
    for start in range(0, len(names), 100):  # the filter takes at most a few hundred values
        pages = paginator.paginate(
            LocationType="availability-zone",
            Filters=[{"Name": "instance-type", "Values": names[start : start + 100]}],
        )
        for page in pages:
            for offering in page["InstanceTypeOfferings"]:
                zones.setdefault(offering["InstanceType"], set()).add(offering["Location"])
    return zones


def matching_types(catalog: Iterable[InstanceType], spec: ComputeSpec) -> list[InstanceType]:
    """Types that satisfy the spec, smallest first."""
    found = satisfying(catalog, spec, name=lambda t: t.name)
    # Previous-generation types still launch; they only come after current ones.
    return sorted(
        found, key=lambda t: (not t.current, t.accelerator_count, t.vcpus, t.memory_gb, t.name)
    )


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
