"""Which of a cloud's machine types satisfy a :class:`~skyward.spec.ComputeSpec`.

Every cloud catalog reads its own API into its own type (EC2 instance types, droplet
sizes, Verda instance types), then asks the same question of each: is it the machine the
spec names, or does it carry the accelerator asked for, at least the vCPUs and memory
asked for? That rule lives here, once; how the survivors are ranked (by price, by
generation, by size) stays with each catalog, because what it knows differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from skyward.spec import ComputeSpec

__all__ = [
    "DEFAULT_MIN_MEMORY_GB",
    "DEFAULT_MIN_VCPUS",
    "MEMORY_TOLERANCE",
    "MachineShape",
    "accelerator_matches",
    "minimums",
    "satisfying",
]

# With no cpu/memory/accelerator asked for, a node still has to run Python comfortably.
DEFAULT_MIN_VCPUS = 2
DEFAULT_MIN_MEMORY_GB = 4.0
MEMORY_TOLERANCE = 0.1
"""How far a type's accelerator memory may be from the asked-for variant (a fraction of
it): variants of one GPU differ by 2x, reported sizes by a few percent."""


class MachineShape(Protocol):
    """What a catalog entry must say about itself to be matched."""

    @property
    def vcpus(self) -> int: ...

    @property
    def memory_gb(self) -> float: ...

    @property
    def accelerator(self) -> str | None: ...

    @property
    def accelerator_count(self) -> float: ...

    @property
    def accelerator_memory_gb(self) -> float | None: ...


Shape = TypeVar("Shape", bound=MachineShape)


def minimums(spec: ComputeSpec) -> tuple[int, float]:
    """The least vCPUs and memory (GiB) a type needs: what the spec asks for, or
    :data:`DEFAULT_MIN_VCPUS` and :data:`DEFAULT_MIN_MEMORY_GB` when it asks for nothing."""
    if spec.accelerator is None and spec.cpu is None and spec.memory_gb is None:
        return DEFAULT_MIN_VCPUS, DEFAULT_MIN_MEMORY_GB
    return spec.cpu or 0, spec.memory_gb or 0.0


def accelerator_matches(
    shape: MachineShape,
    spec: ComputeSpec,
    *,
    memory_tolerance: float = MEMORY_TOLERANCE,
    canonical: Callable[[str], str] | None = None,
) -> bool:
    """Whether ``shape`` carries what the spec asks for: no accelerator when it asks for
    none; else the same one (any case), at least as many, of the asked-for memory variant.

    :param memory_tolerance: how far the memory may differ, as a fraction of the variant.
    :param canonical: how to spell the asked-for name as the catalog entry does, for a
        catalog whose names come from the accelerator catalog rather than the cloud.
    """
    wanted = spec.accelerator
    if wanted is None:
        return shape.accelerator is None
    name = canonical(wanted.name) if canonical is not None else wanted.name
    if shape.accelerator is None or shape.accelerator.lower() != name.lower():
        return False
    if shape.accelerator_count < wanted.count:
        return False
    memory = wanted.memory_gb
    if memory is not None and shape.accelerator_memory_gb is not None:
        return abs(shape.accelerator_memory_gb - memory) <= memory_tolerance * memory
    return True


def satisfying(
    shapes: Iterable[Shape],
    spec: ComputeSpec,
    *,
    name: Callable[[Shape], str],
    memory_tolerance: float = MEMORY_TOLERANCE,
    canonical: Callable[[str], str] | None = None,
) -> list[Shape]:
    """The shapes that satisfy ``spec``, in the order given: the one called
    ``spec.machine`` when the spec names one (nothing else is checked then), else those
    with its accelerator (see :func:`accelerator_matches`) and at least its
    :func:`minimums`.

    :param name: the cloud's name of a shape, compared with ``spec.machine``.
    """
    if spec.machine is not None:
        return [s for s in shapes if name(s) == spec.machine]
    min_cpu, min_memory = minimums(spec)
    return [
        s
        for s in shapes
        if accelerator_matches(s, spec, memory_tolerance=memory_tolerance, canonical=canonical)
        and s.vcpus >= min_cpu
        and s.memory_gb >= min_memory
    ]
