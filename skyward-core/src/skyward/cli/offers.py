"""``skyward offers``: what every installed provider sells right now for a pool like the one
described, side by side, best first.

The order is :func:`skyward.selection.rank_across`, the very ranking
``selection="cheapest"`` uses (after every plugin's ``adjust_offers``), so the first row is
the machine a cheapest pool would try first. A provider that cannot answer (no credentials,
no hosts) is listed with why and how to fix it instead of stopping the others.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from skyward.cli import providers as chosen
from skyward.cli.output import (
    EXIT_FAILED,
    EXIT_NOTHING,
    EXIT_OK,
    EXIT_USAGE,
    Output,
    Table,
    help_text,
)
from skyward.errors import ConfigurationError
from skyward.offers import Offer
from skyward.provider import Provider
from skyward.selection import offers_for, rank_across
from skyward.spec import ComputeSpec, build_spec

__all__ = ["add_parser", "run", "spec_from"]

COLUMNS = [
    ("rank", "#"),
    ("provider", "Provider"),
    ("instance_type", "Machine"),
    ("accelerators", "Accelerators"),
    ("vcpus", "vCPUs"),
    ("memory_gb", "GiB"),
    ("price_spot", "Spot $/h"),
    ("price_on_demand", "On-dem. $/h"),
    ("pool_hourly", "Pool $/h"),
    ("region", "Region"),
    ("available", "Avail."),
]
UNAVAILABLE_COLUMNS = [("provider", "Provider"), ("region", "Region"), ("reason", "Why not")]


def spec_from(options: argparse.Namespace) -> ComputeSpec:
    """The pool described on the command line (validated as ``ComputePool`` validates)."""
    allocation = (
        "spot" if options.spot else "on-demand" if options.on_demand else "spot-if-available"
    )
    return build_spec(
        nodes=options.nodes,
        machine=options.machine,
        accelerator=options.accelerator,
        cpu=options.cpu,
        memory=options.memory,
        allocation=allocation,
    )


def _accelerators(offer: Offer) -> str:
    if not offer.accelerator:
        return ""
    count = offer.accelerator_count
    shown = int(count) if float(count).is_integer() else count
    memory = f" ({offer.accelerator_memory_gb:g} GiB)" if offer.accelerator_memory_gb else ""
    return f"{shown}x {offer.accelerator}{memory}"


def _pool_hourly(offer: Offer, spec: ComputeSpec) -> float | None:
    from skyward.allocation import AlwaysSpot, OnDemandAllocation

    if isinstance(spec.allocation, OnDemandAllocation):
        price = offer.price_on_demand
    elif isinstance(spec.allocation, AlwaysSpot):
        price = offer.price_spot
    else:
        price = offer.cheapest_price
    return None if price is None else round(price * spec.nodes, 6)


def row(rank: int, offer: Offer, spec: ComputeSpec) -> dict[str, Any]:
    return {
        "rank": rank,
        "provider": offer.provider,
        "instance_type": offer.instance_type,
        "accelerator": offer.accelerator,
        "accelerator_count": offer.accelerator_count,
        "accelerator_memory_gb": offer.accelerator_memory_gb,
        "accelerators": _accelerators(offer),
        "vcpus": offer.vcpus,
        "memory_gb": offer.memory_gb,
        "architecture": offer.architecture,
        "price_spot": offer.price_spot,
        "price_on_demand": offer.price_on_demand,
        "pool_hourly": _pool_hourly(offer, spec),
        "region": offer.region + (f" ({offer.zone})" if offer.zone else ""),
        "zone": offer.zone,
        "available": offer.available,
    }


def _ask(
    name: str, region: str | None, options: argparse.Namespace, spec: ComputeSpec
) -> tuple[Provider, list[Offer]]:
    provider = chosen.build(name, argparse.Namespace(**{**vars(options), "region": region}))
    try:
        return provider, offers_for(provider, spec)
    except Exception as error:
        raise chosen.CannotUse(f"{type(error).__name__}: {error}") from error


def run(options: argparse.Namespace, out: Output) -> int:
    try:
        names = chosen.names(options.provider)
        spec = spec_from(options)
    except (chosen.UnknownProvider, ConfigurationError) as error:
        out.note(f"skyward offers: {error}")
        return EXIT_USAGE
    unavailable: list[dict[str, Any]] = []
    answered: list[tuple[Provider, list[Offer]]] = []
    # Each region asked for is asked of every provider that has regions (one provider
    # per region); the others are asked once.
    regions: list[str | None] = list(options.region) or [None]
    jobs = [
        (name, region)
        for name in names
        for region in (regions if chosen.has_regions(name) else [None])
    ]
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(jobs)))) as threads:
        futures = [(job, threads.submit(_ask, *job, options, spec)) for job in jobs]
        for (name, region), future in futures:  # in order: rank_across breaks ties by it
            try:
                answered.append(future.result())
            except chosen.CannotUse as error:
                item = {"provider": name, "reason": str(error), "region": region}
                unavailable.append(item)
    ranked = rank_across(answered, spec)
    if options.limit:
        ranked = ranked[: options.limit]
    rows = [row(i + 1, offer, spec) for i, (_, offer) in enumerate(ranked)]
    out.tables(
        [
            Table("offers", COLUMNS, rows),
            Table("unavailable_providers", UNAVAILABLE_COLUMNS, unavailable),
        ],
        {
            "spec": {
                "nodes": spec.nodes,
                "accelerator": options.accelerator,
                "cpu": spec.cpu,
                "memory_gb": spec.memory_gb,
                "allocation": type(spec.allocation).__name__,
            }
        },
    )
    if any(u["provider"] in options.provider for u in unavailable):
        return EXIT_FAILED
    if not rows:
        out.note("skyward offers: no machine matches; ask for less, or install another provider")
        return EXIT_NOTHING
    return EXIT_OK


def add_parser(commands: Any) -> None:
    offers = commands.add_parser(
        "offers",
        help="live offers of every provider, best first",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    offers.add_argument("--accelerator", "-a", default=None, help='e.g. H100, "A100:8"')
    offers.add_argument("--nodes", "-n", type=int, default=1, help="machines in the pool")
    offers.add_argument("--cpu", type=int, default=None, help="least vCPUs per machine")
    offers.add_argument("--memory", default=None, help='least memory per machine, e.g. "32GB"')
    offers.add_argument("--machine", default=None, help="only this machine type")
    buy = offers.add_mutually_exclusive_group()
    buy.add_argument("--spot", action="store_true", help="spot only, ranked by spot price")
    buy.add_argument("--on-demand", action="store_true", help="ranked by on-demand price")
    offers.add_argument("--provider", action="append", default=[], help="only this provider")
    offers.add_argument(
        "--region",
        action="append",
        default=[],
        help="ask providers with regions about this one (repeat for several)",
    )
    offers.add_argument("--limit", type=int, default=0, help="show at most this many offers")
    offers.add_argument("--host", action="append", default=[], help=argparse.SUPPRESS)
    offers.set_defaults(run=run)
