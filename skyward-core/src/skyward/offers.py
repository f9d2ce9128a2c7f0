"""What a provider can sell: one :class:`Offer` per purchasable machine shape and place."""

from __future__ import annotations

from attrs import field, frozen

__all__ = ["Offer"]


@frozen
class Offer:
    """One machine type a provider can launch somewhere, with its prices.

    Offers are what selection ranks and what cost tracking prices. Providers build them
    from their live catalogs; plugins may re-price or drop them through ``adjust_offers``.
    """

    provider: str
    """Name of the provider that sells it (``"aws"``, ``"local"``, ...)."""
    instance_type: str
    """The provider's own name for the machine type (``"g5.xlarge"``)."""
    vcpus: int
    """Virtual CPUs per machine."""
    memory_gb: float
    """Memory per machine, in GiB."""
    accelerator: str | None = None
    """Canonical accelerator name (``"A100"``) or ``None`` for CPU-only machines."""
    accelerator_count: float = 0
    """Accelerators per machine; fractional for shared GPUs (AWS G6f)."""
    accelerator_memory_gb: float | None = None
    """Memory of one accelerator, in GiB, when known."""
    region: str = ""
    """Region (or location) the offer is for."""
    zone: str | None = None
    """Availability zone, when the provider has them."""
    architecture: str = "x86_64"
    """CPU architecture: ``"x86_64"`` or ``"arm64"``."""
    price_on_demand: float | None = None
    """On-demand price per machine-hour in USD, ``None`` when unknown."""
    price_spot: float | None = None
    """Spot price per machine-hour in USD, ``None`` when spot is not sold."""
    available: bool = True
    """Whether the provider reports capacity for it right now."""
    extra: dict[str, str] = field(factory=dict, eq=False, hash=False)
    """Provider-specific details selection does not look at (AMI family, network tier)."""

    @property
    def cheapest_price(self) -> float | None:
        """The lower of the spot and on-demand prices, ``None`` when neither is known."""
        prices = [p for p in (self.price_spot, self.price_on_demand) if p is not None]
        return min(prices) if prices else None
