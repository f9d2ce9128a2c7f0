"""Droplet sizes from ``GET /v2/sizes``: what each carries, what it costs, where it is sold.

Nothing is hard-coded: GPU droplets are recognised by the size's ``gpu_info`` (model,
count, memory per GPU), so H100, L40S or AMD MI300X sizes appear wherever the account
sees them. Sizes are matched to a spec as on AWS (``cpu``, ``memory``, ``accelerator``,
``machine``), smallest and cheapest first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from attrs import frozen

from skyward.spec import ComputeSpec
from skyward.spec_matching import satisfying

__all__ = ["Size", "base_image", "matching_sizes", "parse_size"]

CPU_IMAGE = "ubuntu-24-04-x64"
_VENDORS = {"nvidia": "NVIDIA", "amd": "AMD", "intel": "Intel"}


@frozen
class Size:
    slug: str
    vcpus: int
    memory_gb: float
    disk_gb: float
    price_hourly: float
    regions: tuple[str, ...]
    available: bool
    description: str = ""
    accelerator: str | None = None
    accelerator_count: int = 0
    accelerator_memory_gb: float | None = None
    accelerator_vendor: str | None = None


def _gib(amount: object, unit: object) -> float | None:
    if not isinstance(amount, int | float):
        return None
    factor = {"mib": 1 / 1024, "gib": 1.0, "tib": 1024.0}.get(str(unit).lower(), 1.0)
    return float(amount) * factor


def accelerator_name(model: str) -> tuple[str, str | None]:
    """``nvidia_h100`` → ("H100", "NVIDIA"); names the catalog knows come back canonical."""
    from skyward.plugins import accelerator_catalog

    vendor_key, _, rest = model.partition("_")
    vendor = _VENDORS.get(vendor_key.lower())
    if vendor is None:
        rest, vendor = model, None
    catalog = accelerator_catalog()
    for guess in (rest, rest.replace("_", ""), rest.replace("_", "-"), model):
        found = catalog.find(guess)
        if found is not None:
            return found.name, vendor or found.vendor
    return rest.replace("_", "").upper(), vendor


def parse_size(item: Mapping[str, Any]) -> Size:
    gpu = item.get("gpu_info") or {}
    name: str | None = None
    vendor: str | None = None
    if gpu.get("model"):
        name, vendor = accelerator_name(str(gpu["model"]))
    vram = gpu.get("vram") or {}
    return Size(
        slug=str(item["slug"]),
        vcpus=int(item["vcpus"]),
        memory_gb=float(item["memory"]) / 1024,
        disk_gb=float(item.get("disk", 0)),
        price_hourly=float(item["price_hourly"]),
        regions=tuple(item.get("regions") or ()),
        available=bool(item.get("available", True)),
        description=str(item.get("description", "")),
        accelerator=name,
        accelerator_count=int(gpu.get("count") or 0) if name else 0,
        accelerator_memory_gb=_gib(vram.get("amount"), vram.get("unit")) if name else None,
        accelerator_vendor=vendor,
    )


def matching_sizes(sizes: Iterable[Size], spec: ComputeSpec, region: str) -> list[Size]:
    """Sizes sold in ``region`` that satisfy the spec, cheapest and smallest first."""
    found = satisfying([s for s in sizes if region in s.regions], spec, name=lambda s: s.slug)
    return sorted(
        found,
        key=lambda s: (not s.available, s.price_hourly, s.accelerator_count, s.vcpus, s.slug),
    )


def base_image(size: Size | None) -> str:
    """The image a size boots by default: DigitalOcean's AI/ML-ready images for GPU sizes
    (drivers installed; the x8 image for 8-GPU sizes), Ubuntu 24.04 otherwise."""
    if size is None or size.accelerator is None:
        return CPU_IMAGE
    if size.accelerator_vendor == "AMD":
        return "gpu-amd-base"
    return "gpu-h100x8-base" if size.accelerator_count >= 8 else "gpu-h100x1-base"
