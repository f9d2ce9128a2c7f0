"""Prices: on-demand from the AWS Pricing API, spot from the EC2 spot price history.

On-demand prices come from one (paginated) ``GetProducts`` query for all candidate
types at once (an ``ANY_OF`` filter), cached on disk for a day. Spot prices come from one
``DescribeSpotPriceHistory`` call, cached in memory for five minutes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from skyward_aws.catalog import write_json

__all__ = ["on_demand_prices", "spot_prices"]

ON_DEMAND_TTL = 24 * 3600
SPOT_TTL = 300
# The Price List API answers from these regions only; us-east-1 serves every region.
PRICING_REGION = "us-east-1"

_spot_cache: dict[tuple[str, str], tuple[float, float]] = {}
_spot_lock = threading.Lock()


def _usd(document: dict[str, Any]) -> float | None:
    for term in (document.get("terms") or {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            usd = dimension.get("pricePerUnit", {}).get("USD")
            if usd is not None:
                return float(usd)
    return None


def on_demand_prices(
    pricing: Any, region: str, types: Iterable[str], cache: Path
) -> dict[str, float]:
    """Linux, shared-tenancy, on-demand hourly price per instance type."""
    wanted = sorted(set(types))
    path = cache / f"on-demand-{region}.json"
    stored: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    # A type the API has no Linux price for is remembered as None: asking again won't help.
    fresh: dict[str, float | None] = {
        name: entry["price"]
        for name, entry in stored.items()
        if time.time() - entry["fetched"] < ON_DEMAND_TTL
    }
    missing = [t for t in wanted if t not in fresh]
    if missing:
        filters = [
            {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
            {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": "Linux"},
            {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
            {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"},
            {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
            {"Type": "ANY_OF", "Field": "instanceType", "Value": ",".join(missing)},
        ]
        now = time.time()
        pages = pricing.get_paginator("get_products").paginate(
            ServiceCode="AmazonEC2", Filters=filters, FormatVersion="aws_v1"
        )
        for page in pages:
            for raw in page["PriceList"]:
                document = json.loads(raw) if isinstance(raw, str) else raw
                name = document.get("product", {}).get("attributes", {}).get("instanceType")
                price = _usd(document)
                if name in missing and price is not None:
                    fresh[name] = price
                    stored[name] = {"price": price, "fetched": now}
        for name in missing:
            if name not in fresh:
                fresh[name] = None
                stored[name] = {"price": None, "fetched": now}
        write_json(path, stored)
    return {t: price for t in wanted if (price := fresh.get(t)) is not None}


def spot_prices(ec2: Any, region: str, types: Iterable[str]) -> dict[str, float]:
    """The lowest current Linux spot price per instance type across the region's AZs."""
    wanted = sorted(set(types))
    now = time.time()
    with _spot_lock:
        cached = {
            t: _spot_cache[(region, t)][0]
            for t in wanted
            if (region, t) in _spot_cache and now - _spot_cache[(region, t)][1] < SPOT_TTL
        }
    missing = [t for t in wanted if t not in cached]
    if missing:
        found: dict[str, float] = {}
        pages = ec2.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=missing,
            ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
            StartTime=datetime.now(UTC),
        )
        for page in pages:
            for entry in page["SpotPriceHistory"]:
                price = float(entry["SpotPrice"])
                name = entry["InstanceType"]
                found[name] = min(price, found.get(name, price))
        with _spot_lock:
            for name, price in found.items():
                _spot_cache[(region, name)] = (price, now)
        cached.update(found)
    return cached
