"""ComputePool's contract: validation before any provider call, @sky.pool, MultiPool."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
from attrs import define, field, frozen

import skyward as sky
from skyward.errors import ConfigurationError, ProvisioningError
from skyward.offers import Offer
from skyward.spec import ComputeSpec
from tests.conftest import agent_processes


@sky.compute
def node_of() -> int:
    return sky.instance_info().node


@sky.compute
def total_nodes() -> int:
    return sky.instance_info().total_nodes


@frozen
class Recording:
    """A provider config that records every call; its provider fails on prepare."""

    log: list[str] = field(factory=list, eq=False)
    provider_name: ClassVar[str] = "recording"

    def validate(self, spec: ComputeSpec) -> None:
        self.log.append("validate")

    def create(self) -> Any:
        self.log.append("create")
        return FailingProvider(self.log)


@define
class FailingProvider:
    log: list[str]
    name: str = "recording"

    def offers(self, spec: ComputeSpec) -> Sequence[Offer]:
        self.log.append("offers")
        return [Offer(provider="recording", instance_type="r1", vcpus=1, memory_gb=1)]

    def prepare(self, spec: ComputeSpec, pool_id: str) -> Any:
        self.log.append("prepare")
        raise ProvisioningError("recording", "no quota")


BAD_PARAMETERS = [
    ({"nodes": 0}, "nodes"),
    ({"nodes": 2.5}, "nodes"),
    ({"cpu": -1}, "cpu"),
    ({"memory": "lots"}, "memory"),
    ({"timeout": 0}, "timeout"),
    ({"concurrency": 0}, "concurrency"),
    ({"env": {"A": 1}}, "env"),
    ({"display": "fancy"}, "display"),
    ({"selection": "random"}, "selection"),
    ({"allocation": "maybe"}, "allocation"),
    ({"accelerator": "H10"}, "accelerator"),
    ({"image": "python:3.11"}, "image"),
    ({"image": sky.Image(python="3.12")}, "image.python"),
    ({"volume": ["/data"]}, "volumes"),
    ({"on_event": "print"}, "on_event"),
    ({"collect_metrics": "yes"}, "collect_metrics"),
    ({"machine": ""}, "machine"),
]


@pytest.mark.parametrize(("options", "field_name"), BAD_PARAMETERS)
def test_bad_parameters_fail_at_construction_without_provider_calls(
    options: dict[str, Any], field_name: str
) -> None:
    provider = Recording()
    with pytest.raises(ConfigurationError) as caught:
        sky.ComputePool(provider=provider, **options)
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == field_name
    assert caught.value.fix, "every error says how to fix it"
    assert provider.log == []


def test_unknown_accelerator_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigurationError, match="H100"):
        sky.ComputePool(provider=Recording(), accelerator="H10")


def test_provider_must_be_a_provider() -> None:
    with pytest.raises(ConfigurationError, match="provider"):
        sky.ComputePool(provider="aws")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="empty"):
        sky.ComputePool(provider=[])


def test_local_rejects_volumes_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="volumes"):
        sky.ComputePool(provider=sky.Local(), volumes=[sky.Volume(size_gb=10, mount_path="/data")])


def test_good_parameters_make_the_documented_spec() -> None:
    pool = sky.ComputePool(
        provider=Recording(),
        nodes=2,
        accelerator="A100-40GB",
        memory="32GB",
        allocation=0.8,
        volume=[sky.S3Volume(mount_path="/data", bucket="my-bucket")],
        env={"A": "1"},
    )
    spec = pool.spec
    assert spec.nodes == 2
    assert spec.accelerator is not None
    assert spec.accelerator.memory_gb == 40
    assert spec.memory_gb == 32
    assert spec.allocation == sky.Allocation.Percent(spot=0.8)
    assert spec.volumes[0].mount_path == "/data"
    assert pool.spec.timeout == 3600
    assert pool.spec.concurrency == "auto"
    assert pool.display == "log"
    assert pool.collect_metrics is True
    assert not pool.is_active


def test_provisioning_failure_cleans_up_and_ends_with_cost_final() -> None:
    provider = Recording()
    events: list[Any] = []
    pool = sky.ComputePool(provider=provider, display="quiet", on_event=events.append)
    with pytest.raises(ProvisioningError, match="no quota"), pool:
        pass
    assert provider.log[-1] == "prepare"
    assert isinstance(events[-1], sky.CostFinal)
    assert not pool.is_active


def test_pool_decorator_gives_sky_a_target() -> None:
    @sky.pool(provider=sky.Local(), nodes=2, display="quiet")
    def main() -> tuple[int, tuple[int, ...]]:
        return node_of() >> sky, node_of() @ sky

    one, every = main()
    assert one in (0, 1)
    assert every == (0, 1)


def test_pool_decorator_validates_when_applied() -> None:
    with pytest.raises(ConfigurationError):
        sky.pool(provider=sky.Local(), nodes=0)


def test_sky_outside_a_pool_is_a_clear_error() -> None:
    with pytest.raises(sky.PoolClosedError, match=r"@sky\.pool"):
        node_of() >> sky


def test_nested_pools_each_own_their_block() -> None:
    with sky.ComputePool(provider=sky.Local(), nodes=1, display="quiet") as outer:
        assert total_nodes() >> sky == 1
        with sky.ComputePool(provider=sky.Local(), nodes=2, display="quiet"):
            assert total_nodes() >> sky == 2
            assert total_nodes() >> outer == 1
        assert total_nodes() >> sky == 1


def test_concurrent_pools_in_threads_do_not_confuse_sky() -> None:
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def work(nodes: int) -> None:
        try:
            with sky.ComputePool(provider=sky.Local(), nodes=nodes, display="quiet"):
                results[nodes] = [total_nodes() >> sky for _ in range(20)]
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == {1: [1] * 20, 2: [2] * 20, 3: [3] * 20}


def test_multipool_provisions_all_and_closes_all() -> None:
    pools = [sky.ComputePool(provider=sky.Local(), nodes=n, display="quiet") for n in (1, 2)]
    with sky.MultiPool(*pools) as (small, big):
        assert small.is_active
        assert big.is_active
        assert total_nodes() >> small == 1
        assert total_nodes() >> big == 2
        ids = [small.pool_id, big.pool_id]
    assert not small.is_active
    assert not big.is_active
    assert all(agent_processes(i) == [] for i in ids)


def test_multipool_cleans_up_every_pool_when_one_fails() -> None:
    good = sky.ComputePool(provider=sky.Local(), nodes=2, display="quiet")
    bad = sky.ComputePool(provider=Recording(), display="quiet")
    with pytest.raises(ProvisioningError, match="no quota"), sky.MultiPool(good, bad):
        pass
    assert not good.is_active
    assert good.pool_id
    assert agent_processes(good.pool_id) == []


def test_multipool_needs_pools() -> None:
    with pytest.raises(ConfigurationError):
        sky.MultiPool()
    with pytest.raises(ConfigurationError):
        sky.MultiPool("pool")  # type: ignore[arg-type]
