"""Verda's live catalog: instance types, where each has capacity, and the offers they make.

``GET /instance-types`` lists every type with its whole-instance hourly prices (strings in
real answers, numbers tolerated); ``GET /instance-availability`` says, per location, which
types have capacity now, asked separately for spot and on-demand because without the flag
the API answers on-demand only. Nothing here is hard-coded: GPU names are read from the
type's model and description and matched against Skyward's accelerator catalog.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from attrs import frozen

from skyward.accelerators import default_catalog
from skyward.allocation import AllocationStrategy, AlwaysSpot, OnDemandAllocation
from skyward.offers import Offer
from skyward.spec import ComputeSpec
from skyward.spec_matching import satisfying

__all__ = ["InstanceType", "availability", "matching_types", "offers", "parse_types", "price"]

_DESCRIPTION = re.compile(r"^\s*\d+\s*x\s*(?P<name>.+?)(?:\s+\d+\s*GB)?\s*$", re.IGNORECASE)
_NOISE = re.compile(r"\b(?:SXM\d*|PCIe|NVL|Tesla|NVIDIA)\b", re.IGNORECASE)
_ARM = re.compile(r"\b(?:GH200|GB200|GB300|Grace)\b", re.IGNORECASE)


@frozen
class InstanceType:
    name: str
    vcpus: int
    memory_gb: float
    architecture: str = "x86_64"
    accelerator: str | None = None
    accelerator_count: int = 0
    accelerator_memory_gb: float | None = None
    price_on_demand: float | None = None
    price_spot: float | None = None


def price(value: object) -> float | None:
    """A price as the API sends it ("3.95", 3.95, null): a positive float or ``None``."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _accelerator(item: Mapping[str, Any]) -> str | None:
    gpu = item.get("gpu") or {}
    if not int(gpu.get("number_of_gpus") or 0):
        return None
    described = _DESCRIPTION.match(str(gpu.get("description") or ""))
    candidates = [str(item.get("model") or "")]
    if described:
        candidates.append(described["name"])
    candidates.append(str(item.get("name") or ""))
    catalog = default_catalog()
    for candidate in candidates:
        cleaned = " ".join(_NOISE.sub(" ", candidate).split())
        for spelling in (candidate, cleaned, cleaned.replace(" ", "")):
            definition = catalog.find(spelling) if spelling else None
            if definition is not None:
                return definition.name
    fallback = " ".join(_NOISE.sub(" ", described["name"] if described else candidates[0]).split())
    return fallback or None


def _parse(item: Mapping[str, Any]) -> InstanceType:
    gpus = int((item.get("gpu") or {}).get("number_of_gpus") or 0)
    gpu_memory = float((item.get("gpu_memory") or {}).get("size_in_gigabytes") or 0)
    text = " ".join(str(item.get(k) or "") for k in ("model", "name", "instance_type"))
    text += " " + str((item.get("cpu") or {}).get("description") or "")
    return InstanceType(
        name=str(item["instance_type"]),
        vcpus=int((item.get("cpu") or {}).get("number_of_cores") or 0),
        memory_gb=float((item.get("memory") or {}).get("size_in_gigabytes") or 0),
        architecture="arm64" if _ARM.search(text) else "x86_64",
        accelerator=_accelerator(item),
        accelerator_count=gpus,
        accelerator_memory_gb=gpu_memory / gpus if gpus and gpu_memory else None,
        price_on_demand=price(item.get("price_per_hour")),
        price_spot=price(item.get("spot_price")),
    )


def parse_types(items: Iterable[Mapping[str, Any]]) -> list[InstanceType]:
    """The types of a ``GET /instance-types`` answer (ones without a name are skipped)."""
    return [_parse(item) for item in items if item.get("instance_type")]


def availability(entries: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Location code → instance types with capacity, from ``GET /instance-availability``."""
    return {
        str(e["location_code"]): {str(t) for t in e.get("availabilities") or []}
        for e in entries
        if e.get("location_code")
    }


def _canonical(name: str) -> str:
    """The catalog's spelling of an asked-for accelerator: Verda's types are named from
    the catalog (see :func:`_accelerator`), so an alias must be read the same way."""
    definition = default_catalog().find(name)
    return definition.name if definition is not None else name


def matching_types(types: Iterable[InstanceType], spec: ComputeSpec) -> list[InstanceType]:
    """Types that satisfy the spec, smallest first."""
    # Within 15 % of the asked-for memory variant (a MIG profile picks the variant).
    found = satisfying(
        types, spec, name=lambda t: t.name, memory_tolerance=0.15, canonical=_canonical
    )
    return sorted(found, key=lambda t: (t.accelerator_count, t.vcpus, t.memory_gb, t.name))


def offers(
    provider: str,
    types: Iterable[InstanceType],
    locations: Iterable[str],
    on_demand: Mapping[str, set[str]],
    spot: Mapping[str, set[str]],
    allocation: AllocationStrategy | None = None,
) -> list[Offer]:
    """One offer per (type, location); a spot price only where spot has capacity now.

    An offer is available when the capacity the allocation would buy is there (spot for
    ``always-spot``, on-demand for ``on-demand``, either otherwise). Types without it are
    still offered, marked unavailable, so selection ranks them last and a capacity error
    names them.
    """
    found = []
    for location in locations:
        for kind in types:
            has_on_demand = kind.name in on_demand.get(location, set())
            has_spot = kind.price_spot is not None and kind.name in spot.get(location, set())
            if isinstance(allocation, OnDemandAllocation):
                available = has_on_demand
            elif isinstance(allocation, AlwaysSpot):
                available = has_spot
            else:
                available = has_on_demand or has_spot
            found.append(
                Offer(
                    provider=provider,
                    instance_type=kind.name,
                    vcpus=kind.vcpus,
                    memory_gb=kind.memory_gb,
                    accelerator=kind.accelerator,
                    accelerator_count=kind.accelerator_count,
                    accelerator_memory_gb=kind.accelerator_memory_gb,
                    region=location,
                    architecture=kind.architecture,
                    price_on_demand=kind.price_on_demand,
                    price_spot=kind.price_spot if has_spot else None,
                    available=available,
                    extra={"on_demand_available": str(has_on_demand).lower()},
                )
            )
    return found
