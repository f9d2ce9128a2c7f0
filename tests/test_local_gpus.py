"""``sky.Local`` on a machine with NVIDIA GPUs, faked (tests/gpu_fakes.py): offers, the split
of the GPUs between nodes, too many asked, and real agents started with their share."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

import skyward as sky
from skyward.errors import NoAvailableProviderError
from skyward.gpus import detect_gpus
from skyward.providers.local_gpus import describe_gpus, gpu_offer, node_device_shares
from skyward.spec import build_spec
from tests.gpu_fakes import smi_env


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make this process (and the agents it starts) see a fake machine's GPUs."""

    def use(name: str, **extra: str) -> None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        for key, value in smi_env(name, **extra).items():
            if key != "PATH":
                monkeypatch.setenv(key, value)

    return use


def _offers(**pool: Any) -> list[sky.Offer]:
    return list(sky.Local().create().offers(build_spec(**pool)))


def test_offers_the_gpus_the_machine_has(machine: Callable[..., None]) -> None:
    machine("h200-x8")
    (offer,) = _offers(accelerator="H200")
    assert (offer.provider, offer.instance_type, offer.price_on_demand) == ("local", "local", 0.0)
    assert (offer.accelerator, offer.accelerator_count) == ("H200", 1)
    assert offer.accelerator_memory_gb == pytest.approx(140.4, abs=0.1)
    assert _offers(accelerator="8xH200")[0].accelerator_count == 8
    assert _offers(accelerator=sky.AcceleratorSpec.NVIDIA.H200(count=2), nodes=4)
    assert _offers(accelerator="H200", machine="local")
    assert _offers(accelerator="H200", machine="p5.48xlarge") == []


@pytest.mark.parametrize(
    ("pool", "asked"),
    [
        ({"accelerator": "H200", "nodes": 9}, "9 node(s) x 1 H200 = 9 GPU(s)"),
        ({"accelerator": "8xH200", "nodes": 2}, "2 node(s) x 8 H200 = 16 GPU(s)"),
        ({"accelerator": "16xH200"}, "1 node(s) x 16 H200 = 16 GPU(s)"),
        ({"accelerator": "A100"}, "1 node(s) x 1 A100 = 1 GPU(s)"),
    ],
)
def test_asking_for_more_than_there_is_lists_what_there_is(
    machine: Callable[..., None], pool: dict[str, Any], asked: str
) -> None:
    machine("h200-x8")
    with pytest.raises(NoAvailableProviderError) as caught:
        _offers(**pool)
    assert asked in str(caught.value)
    assert "this machine has" in str(caught.value)
    assert "8x NVIDIA H200 (143771 MiB)" in str(caught.value)


def test_cuda_visible_devices_limits_what_is_offered(
    machine: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    machine("h200-x8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    assert _offers(accelerator="2xH200")
    with pytest.raises(NoAvailableProviderError, match=r"CUDA_VISIBLE_DEVICES='1,2' limits"):
        _offers(accelerator="3xH200")


def test_no_gpu_is_todays_behaviour(machine: Callable[..., None]) -> None:
    machine("no-driver")
    assert _offers(accelerator="H200") == []
    assert _offers()[0].accelerator is None


@pytest.mark.parametrize(
    "accelerator", ["MI300X", "v5p-8", sky.AcceleratorSpec.NVIDIA.A100(mig="2g.20gb")]
)
def test_what_local_cannot_have(machine: Callable[..., None], accelerator: object) -> None:
    machine("a100-80gb-x8-mig")
    if isinstance(accelerator, str):
        assert _offers(accelerator=accelerator) == []
    else:  # a MIG profile none of the GPUs is partitioned into
        with pytest.raises(NoAvailableProviderError, match=r"MIG 2x 3g\.40gb"):
            _offers(accelerator=accelerator)


def test_whole_gpus_are_those_not_split_by_mig(machine: Callable[..., None]) -> None:
    machine("a100-80gb-x8-mig")
    assert _offers(accelerator="A100")[0].accelerator_count == 1  # GPU 7
    assert node_device_shares(build_spec(accelerator="A100"), 1) == ["7"]
    with pytest.raises(NoAvailableProviderError, match="has 1 of them"):
        _offers(accelerator="2xA100")
    with pytest.raises(NoAvailableProviderError, match="has 0 of them"):
        _offers(accelerator="A100-40GB")


def test_nodes_split_the_gpus(machine: Callable[..., None]) -> None:
    machine("h200-x8")
    assert node_device_shares(build_spec(accelerator="4xH200", nodes=2), 2) == [
        "0,1,2,3",
        "4,5,6,7",
    ]
    assert node_device_shares(build_spec(accelerator="H200", nodes=3), 3) == ["0", "1", "2"]
    assert node_device_shares(build_spec(), 2) == [None, None]
    assert node_device_shares(build_spec(accelerator="MI300X"), 1) == [None]


def test_nodes_split_the_visible_gpus(
    machine: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    machine("h200-x8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7,2,5")
    assert node_device_shares(build_spec(accelerator="H200", nodes=3), 3) == ["7", "2", "5"]


def test_mig_nodes_get_their_gpus_instances(machine: Callable[..., None]) -> None:
    machine("a100-80gb-x8-mig")
    gpus = detect_gpus()
    spec = build_spec(accelerator=sky.AcceleratorSpec.NVIDIA.A100(count=2, mig="3g.40gb"), nodes=3)
    (offer,) = gpu_offer(spec, "local")
    assert offer.accelerator_count == 2
    shares = node_device_shares(spec, 3)
    expected = [
        ",".join(d.uuid for gpu in gpus[2 * n : 2 * n + 2] for d in gpu.mig_devices)
        for n in range(3)
    ]
    assert shares == expected
    with pytest.raises(NoAvailableProviderError, match="has 6 of them"):
        gpu_offer(build_spec(accelerator=spec.accelerator, nodes=4), "local")


def test_describe_gpus() -> None:
    assert describe_gpus(()) == "no NVIDIA GPU"
    gpus = detect_gpus(env=smi_env("a100-80gb-x8-mig"))
    assert describe_gpus(gpus) == (
        "6x NVIDIA A100-SXM4-80GB (81920 MiB, MIG 2x 3g.40gb), "
        "1x NVIDIA A100-SXM4-80GB (81920 MiB, MIG 7x 1g.10gb), "
        "1x NVIDIA A100-SXM4-80GB (81920 MiB)"
    )


# -- real pools -----------------------------------------------------------------------------


@sky.compute
def node_view() -> tuple[int, str | None, str | None, list[int], list[str]]:
    from skyward.gpus import detect_gpus

    info = sky.instance_info()
    return (
        info.node,
        os.environ.get("CUDA_VISIBLE_DEVICES"),
        os.environ.get("CUDA_DEVICE_ORDER"),
        [gpu.index for gpu in detect_gpus()],
        list(info.accelerators),
    )


def test_a_local_pool_gives_each_node_its_gpus(
    machine: Callable[..., None], local_pool_factory: Callable[..., sky.ComputePool]
) -> None:
    machine("h200-x8")
    with local_pool_factory(accelerator="4xH200", nodes=2) as pool:
        views = pool.broadcast(node_view())
    # concurrency="auto": one worker per GPU, each pinned to its own
    assert views == tuple(
        (node, str(gpu), "PCI_BUS_ID", [gpu], ["H200"] * 4)
        for node, gpus in ((0, range(4)), (1, range(4, 8)))
        for gpu in gpus
    )


def test_a_local_pool_that_asks_too_much_fails_before_starting_anything(
    machine: Callable[..., None], local_pool_factory: Callable[..., sky.ComputePool]
) -> None:
    machine("h200-x8")
    pool = local_pool_factory(accelerator="H200", nodes=9)
    with pytest.raises(NoAvailableProviderError, match="this machine has 8 of them"), pool:
        pass


@sky.compute
def worker_view() -> tuple[int, int, int, str | None, str | None]:
    info = sky.instance_info()
    return (
        info.node,
        info.worker,
        info.workers_per_node,
        os.environ.get("CUDA_VISIBLE_DEVICES"),
        sky.current_accelerator(),
    )


def test_an_int_concurrency_shares_the_node_gpus(
    machine: Callable[..., None], local_pool_factory: Callable[..., sky.ComputePool]
) -> None:
    machine("h200-x8")
    with local_pool_factory(accelerator="4xH200", concurrency=2) as pool:
        views = worker_view() @ pool
    assert views == ((0, 0, 2, "0,1", "H200"), (0, 1, 2, "2,3", "H200"))


def test_a_mig_pool_runs_one_worker_per_mig_instance(
    machine: Callable[..., None], local_pool_factory: Callable[..., sky.ComputePool]
) -> None:
    machine("a100-80gb-x8-mig")
    mig = sky.AcceleratorSpec.NVIDIA.A100(mig="3g.40gb")
    with local_pool_factory(accelerator=mig) as pool:
        views = worker_view() @ pool
    devices = [device for *_, device, _ in views]
    assert len(views) == 2, "the node's GPU is split 2x 3g.40gb: one worker per instance"
    assert {per for _, _, per, _, _ in views} == {2}
    assert all(d is not None and d.startswith("MIG-") for d in devices)
    assert len(set(devices)) == 2, "no two workers share a slice"


def test_metrics_carry_every_gpu(
    machine: Callable[..., None], local_pool_factory: Callable[..., sky.ComputePool]
) -> None:
    machine("h200-x8")
    samples: list[sky.Metrics] = []
    os.environ["SKYWARD_METRICS_INTERVAL"] = "0.2"
    try:
        pool = local_pool_factory(
            accelerator="2xH200",
            on_event=lambda e: samples.append(e) if isinstance(e, sky.Metrics) else None,
        )
        with pool:
            deadline = time.monotonic() + 20
            while not samples and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        del os.environ["SKYWARD_METRICS_INTERVAL"]
    assert samples
    gpus = samples[0].gpus
    assert [g.index for g in gpus] == [0, 1]
    assert all(g.memory_total_mb and g.memory_total_mb > 100_000 for g in gpus)
    assert samples[0].gpu_memory_total_mb == gpus[0].memory_total_mb
