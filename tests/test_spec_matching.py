"""The rule every cloud catalog matches its machine types to a spec by
(``skyward.spec_matching``); each provider's own tests cover its ranking."""

from __future__ import annotations

from operator import attrgetter

import pytest

import skyward as sky
from skyward.offers import Offer
from skyward.spec import build_spec
from skyward.spec_matching import accelerator_matches, minimums, satisfying


def shape(
    name: str,
    vcpus: int,
    memory_gb: float,
    accelerator: str | None = None,
    count: float = 0,
    accelerator_memory_gb: float | None = None,
) -> Offer:
    """An :class:`Offer` says all a catalog entry must say to be matched."""
    return Offer("test", name, vcpus, memory_gb, accelerator, count, accelerator_memory_gb)


SMALL = shape("small", 1, 2.0)
MEDIUM = shape("medium", 2, 4.0)
LARGE = shape("large", 8, 32.0)
A100_40 = shape("a100-40", 12, 85.0, "A100", 1, 40.0)
A100_80 = shape("a100-80", 12, 85.0, "A100", 1, 80.0)
A100_X8 = shape("a100-x8", 96, 1152.0, "A100", 8, 80.0)
NAME = attrgetter("instance_type")
EVERY = [SMALL, MEDIUM, LARGE, A100_40, A100_80, A100_X8]


def _names(found: list[Offer]) -> list[str]:
    return [s.instance_type for s in found]


def test_a_spec_that_asks_for_nothing_still_gets_room_for_python() -> None:
    assert minimums(build_spec()) == (2, 4.0)
    assert _names(satisfying(EVERY, build_spec(), name=NAME)) == ["medium", "large"]


def test_what_the_spec_asks_for_is_the_least_and_order_is_kept() -> None:
    spec = build_spec(cpu=1)
    assert minimums(spec) == (1, 0.0)
    assert _names(satisfying(EVERY, spec, name=NAME)) == ["small", "medium", "large"]
    spec = build_spec(memory="16GB")
    assert _names(satisfying(EVERY, spec, name=NAME)) == ["large"]


def test_a_named_machine_is_the_only_match_whatever_else_is_asked() -> None:
    spec = build_spec(machine="small")
    assert _names(satisfying(EVERY, spec, name=NAME)) == ["small"]
    assert satisfying(EVERY, spec, name=lambda o: o.instance_type.upper()) == []


def test_accelerator_name_count_and_memory_variant() -> None:
    spec = build_spec(accelerator=sky.AcceleratorSpec.NVIDIA.A100(count=1, memory="80GB"))
    assert _names(satisfying(EVERY, spec, name=NAME)) == ["a100-80", "a100-x8"]
    eight = build_spec(accelerator=sky.AcceleratorSpec.NVIDIA.A100(count=8))
    assert _names(satisfying(EVERY, eight, name=NAME)) == ["a100-x8"]
    assert not accelerator_matches(LARGE, spec), "a CPU type never carries one"
    assert not accelerator_matches(A100_80, build_spec(cpu=2)), "nor is one wanted unasked"


@pytest.mark.parametrize(
    ("reported", "tolerance", "matches"),
    [(75.0, 0.1, True), (70.0, 0.1, False), (70.0, 0.15, True)],
)
def test_memory_tolerance_is_the_catalogs_choice(
    reported: float, tolerance: float, matches: bool
) -> None:
    spec = build_spec(accelerator=sky.AcceleratorSpec.NVIDIA.A100(memory="80GB"))
    item = shape("a100", 12, 85.0, "A100", 1, reported)
    assert accelerator_matches(item, spec, memory_tolerance=tolerance) is matches


def test_a_catalog_may_respell_the_asked_for_name() -> None:
    spec = build_spec(accelerator=sky.AcceleratorSpec(name="a100-alias"))
    assert not accelerator_matches(A100_80, spec)
    assert accelerator_matches(A100_80, spec, canonical=lambda name: "A100")
