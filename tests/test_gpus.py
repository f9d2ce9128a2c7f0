"""GPU detection, CUDA_VISIBLE_DEVICES, names, worker plans and metrics (skyward.gpus),
against the fake ``nvidia-smi`` (tests/gpu_fakes.py): no GPU needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from skyward.errors import ConfigurationError
from skyward.gpus import (
    GPU,
    MigDevice,
    WorkerSlot,
    detect_gpus,
    gpu_name_to_accelerator,
    node_accelerators,
    per_gpu_metrics,
    plan_node,
    plan_workers,
    visible_gpus,
)
from tests.gpu_fakes import FAKE_SMI, MACHINES, smi_env

H200 = smi_env("h200-x8")
A100_MIG = smi_env("a100-80gb-x8-mig")


# -- detection ------------------------------------------------------------------------------


def test_detects_eight_h200() -> None:
    gpus = detect_gpus(env=H200)
    assert [gpu.index for gpu in gpus] == list(range(8))
    assert {gpu.name for gpu in gpus} == {"NVIDIA H200"}
    assert {gpu.memory_mb for gpu in gpus} == {143771}
    assert {gpu.accelerator for gpu in gpus} == {"H200"}
    assert all(gpu.uuid.startswith("GPU-") and not gpu.mig_devices for gpu in gpus)
    assert len({gpu.uuid for gpu in gpus}) == 8


def test_detects_a100_with_mig_devices() -> None:
    gpus = detect_gpus(env=A100_MIG)
    assert len(gpus) == 8
    assert [len(gpu.mig_devices) for gpu in gpus] == [2, 2, 2, 2, 2, 2, 7, 0]
    assert {d.profile for gpu in gpus[:6] for d in gpu.mig_devices} == {"3g.40gb"}
    assert {d.profile for d in gpus[6].mig_devices} == {"1g.10gb"}
    assert all(
        d.uuid.startswith("MIG-") and d.gpu_index == gpu.index
        for gpu in gpus
        for d in gpu.mig_devices
    )
    assert {gpu.accelerator for gpu in gpus} == {"A100"}


def test_smi_argument_wins_over_the_environment() -> None:
    env = {k: v for k, v in H200.items() if k != "SKYWARD_NVIDIA_SMI"}
    assert len(detect_gpus(str(FAKE_SMI), env=env)) == 8


def test_found_on_path(tmp_path: Path) -> None:
    (tmp_path / "nvidia-smi").symlink_to(FAKE_SMI)
    env = {k: v for k, v in H200.items() if k != "SKYWARD_NVIDIA_SMI"}
    env["PATH"] = f"{tmp_path}:{env['PATH']}"
    assert len(detect_gpus(env=env)) == 8


@pytest.mark.parametrize(
    "env",
    [
        smi_env("no-driver"),  # nvidia-smi exits 9
        {"PATH": "/nonexistent"},  # no nvidia-smi at all
        {**H200, "SKYWARD_NVIDIA_SMI": "/nonexistent/nvidia-smi"},
        {**H200, "FAKE_NVIDIA_SMI_MACHINE": "/nonexistent"},  # answers nothing usable
    ],
    ids=["driver-fails", "no-smi", "smi-missing", "smi-errors"],
)
def test_no_gpu_is_an_empty_tuple_never_an_error(env: dict[str, str]) -> None:
    assert detect_gpus(env=env) == ()
    assert per_gpu_metrics(env=env) == []
    assert plan_workers(detect_gpus(env=env), "auto") == (WorkerSlot(0, None, ()),)


# -- CUDA_VISIBLE_DEVICES ---------------------------------------------------------------------


def _indices(value: str) -> list[int]:
    return [gpu.index for gpu in detect_gpus(env={**H200, "CUDA_VISIBLE_DEVICES": value})]


def test_visible_devices_by_index_keep_their_order() -> None:
    assert _indices("3") == [3]
    assert _indices("5,1") == [5, 1]
    assert _indices(" 2 , 4 ") == [2, 4]


@pytest.mark.parametrize("value", ["", "NoDevFiles", "-1", "none"])
def test_visible_devices_that_hide_everything(value: str) -> None:
    assert _indices(value) == []


def test_visible_devices_stop_at_the_first_invalid_entry() -> None:
    # CUDA's rule: devices listed after an invalid one are not visible.
    assert _indices("1,9,2") == [1]
    assert _indices("0,0,3") == [0, 3]


def test_visible_devices_by_uuid_and_unique_prefix() -> None:
    gpus = detect_gpus(env=H200)
    assert _indices(f"{gpus[6].uuid},{gpus[2].uuid}") == [6, 2]
    prefix = gpus[4].uuid[: len("GPU-") + 8]
    assert _indices(prefix) == [4]
    assert _indices(gpus[4].uuid.removeprefix("GPU-")) == [4]


def test_visible_mig_uuid_shows_only_that_instance() -> None:
    gpus = detect_gpus(env=A100_MIG)
    chosen = gpus[1].mig_devices[1]
    seen = detect_gpus(env={**A100_MIG, "CUDA_VISIBLE_DEVICES": chosen.uuid})
    assert seen == (GPU(1, gpus[1].uuid, gpus[1].name, 81920, (chosen,)),)
    both = f"{gpus[0].mig_devices[0].uuid},{gpus[0].mig_devices[1].uuid}"
    (gpu0,) = detect_gpus(env={**A100_MIG, "CUDA_VISIBLE_DEVICES": both})
    assert gpu0.mig_devices == gpus[0].mig_devices


def test_visible_gpus_is_pure() -> None:
    gpus = (GPU(0, "GPU-aa", "NVIDIA T4", 15360), GPU(1, "GPU-ab", "NVIDIA T4", 15360))
    assert visible_gpus(gpus, None) == gpus
    assert visible_gpus(gpus, "GPU-a") == ()  # ambiguous prefix: invalid
    assert visible_gpus(gpus, "GPU-ab,0") == (gpus[1], gpus[0])


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "accelerator"),
    [
        ("NVIDIA H200", "H200"),
        ("NVIDIA H200 NVL", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA A100-PCIE-40GB", "A100"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 NVL", "H100"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA B200", "B200"),
        ("Tesla T4", "T4"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA GeForce RTX 4090", None),
        ("", None),
    ],
)
def test_gpu_names_map_to_catalog_names(name: str, accelerator: str | None) -> None:
    assert gpu_name_to_accelerator(name) == accelerator


def test_unknown_gpu_keeps_its_driver_name() -> None:
    gpu = GPU(0, "GPU-1", "NVIDIA GeForce RTX 4090", 24564)
    assert plan_workers([gpu], "auto")[0].accelerators == ("NVIDIA GeForce RTX 4090",)


# -- worker plans ---------------------------------------------------------------------------


def test_auto_is_one_worker_per_gpu() -> None:
    slots = plan_workers(detect_gpus(env=H200), "auto")
    assert [(s.worker, s.visible_devices, s.accelerators) for s in slots] == [
        (i, str(i), ("H200",)) for i in range(8)
    ]
    assert slots[3].env() == {"CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_auto_without_gpu_is_one_worker_that_touches_nothing() -> None:
    (slot,) = plan_workers((), "auto")
    assert slot == WorkerSlot(0, None, ())
    assert slot.env() == {}


@pytest.mark.parametrize("workers", [1, 3, 5])
def test_int_without_gpu_is_that_many_workers(workers: int) -> None:
    assert plan_workers((), workers) == tuple(WorkerSlot(i, None, ()) for i in range(workers))


@pytest.mark.parametrize(
    ("workers", "shares"),
    [
        (1, ["0,1,2,3,4,5,6,7"]),
        (2, ["0,1,2,3", "4,5,6,7"]),
        (3, ["0,1,2", "3,4,5", "6,7"]),
        (8, [str(i) for i in range(8)]),
    ],
)
def test_fewer_workers_than_gpus_get_even_shares(workers: int, shares: list[str]) -> None:
    slots = plan_workers(detect_gpus(env=H200), workers)
    assert [s.visible_devices for s in slots] == shares
    assert [len(s.accelerators) for s in slots] == [len(x.split(",")) for x in shares]
    assert [s.worker for s in slots] == list(range(workers))


def test_more_workers_than_gpus_share_them_round_robin() -> None:
    gpus = detect_gpus(env={**H200, "CUDA_VISIBLE_DEVICES": "6,7"})
    slots = plan_workers(gpus, 5)
    assert [s.visible_devices for s in slots] == ["6", "7", "6", "7", "6"]
    assert all(s.accelerators == ("H200",) for s in slots)


def test_auto_on_mig_gpus_is_one_worker_per_instance() -> None:
    gpus = detect_gpus(env=A100_MIG)
    slots = plan_workers(gpus, "auto")
    # 6 GPUs x 2 + 7 + the whole GPU 7.
    assert len(slots) == 20
    assert slots[-1].visible_devices == "7"
    uuids = [d.uuid for gpu in gpus for d in gpu.mig_devices]
    assert [s.visible_devices for s in slots[:-1]] == uuids


def test_mig_profile_keeps_only_its_instances() -> None:
    gpus = detect_gpus(env=A100_MIG)
    slots = plan_workers(gpus, "auto", mig_profile="3g.40gb")
    assert len(slots) == 12
    assert all(s.visible_devices and s.visible_devices.startswith("MIG-") for s in slots)
    assert len({s.visible_devices for s in slots}) == 12  # exclusive
    assert len(plan_workers(gpus, "auto", mig_profile="1g.10gb")) == 7


def test_mig_profile_the_node_lacks_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"2g\.20gb.*1g\.10gb, 3g\.40gb"):
        plan_workers(detect_gpus(env=A100_MIG), "auto", mig_profile="2g.20gb")
    with pytest.raises(ConfigurationError, match="none"):
        plan_workers(detect_gpus(env=H200), "auto", mig_profile="3g.40gb")


def test_plans_are_stable_so_a_respawned_worker_gets_its_slot_back() -> None:
    gpus = detect_gpus(env=A100_MIG)
    assert plan_workers(gpus, 5, "3g.40gb") == plan_workers(detect_gpus(env=A100_MIG), 5, "3g.40gb")


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True, "AUTO", "2", None])
def test_bad_concurrency(concurrency: object) -> None:
    with pytest.raises(ConfigurationError, match="concurrency"):
        plan_workers((), concurrency)  # type: ignore[arg-type]


def test_mig_device_is_plain_data() -> None:
    device = MigDevice("MIG-1", "3g.40gb", 0)
    assert GPU(0, "GPU-1", "NVIDIA A100-SXM4-80GB", 81920, (device,)).mig_devices == (device,)


# -- metrics --------------------------------------------------------------------------------


def test_metrics_per_gpu() -> None:
    samples = per_gpu_metrics(env=H200)
    assert len(samples) == 8
    assert samples[2] == {
        "index": 2.0,
        "utilization": 37.0,
        "memory_used_mb": 1024.0,
        "memory_total_mb": 143771.0,
        "temperature_c": 33.0,
    }


def test_metrics_follow_cuda_visible_devices() -> None:
    samples = per_gpu_metrics(env={**H200, "CUDA_VISIBLE_DEVICES": "2"})
    assert [s["index"] for s in samples] == [2.0]


def test_metrics_of_a_process_pinned_to_a_mig_instance() -> None:
    device = detect_gpus(env=A100_MIG)[3].mig_devices[1]
    samples = per_gpu_metrics(env={**A100_MIG, "CUDA_VISIBLE_DEVICES": device.uuid})
    assert [s["index"] for s in samples] == [3.0]


def test_plan_node_is_detection_then_planning() -> None:
    gpus, slots = plan_node("auto", "3g.40gb", env=A100_MIG)
    assert gpus == detect_gpus(env=A100_MIG)
    assert slots == plan_workers(gpus, "auto", "3g.40gb")
    assert node_accelerators(gpus, "3g.40gb") == ("A100",) * 12
    assert node_accelerators(detect_gpus(env=H200)) == ("H200",) * 8
    assert plan_node("auto", env=smi_env("no-driver")) == ((), (WorkerSlot(0, None, ()),))


def test_metrics_leave_out_what_the_driver_does_not_give() -> None:
    samples = per_gpu_metrics(env=A100_MIG)
    assert "utilization" not in samples[0]  # [N/A] on a GPU in MIG mode
    assert samples[7]["utilization"] == 0.0
    assert samples[0]["memory_total_mb"] == 81920.0


def test_recordings_exist_for_every_machine_the_tests_use() -> None:
    for name in ("h200-x8", "a100-80gb-x8-mig", "no-driver"):
        assert (MACHINES / name).is_dir()
    assert os.access(FAKE_SMI, os.X_OK)


def test_reads_the_mig_uuids_of_drivers_before_r470(tmp_path: Path) -> None:
    # Older drivers name a MIG device by its GPU's UUID and its GPU/compute instance IDs.
    (tmp_path / "query-gpu.csv").write_text(
        "0, GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2, A100-SXM4-40GB, 40536, 0, [N/A], 30\n"
    )
    (tmp_path / "list-gpus.txt").write_text(
        "GPU 0: A100-SXM4-40GB (UUID: GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2)\n"
        "  MIG 3g.20gb Device 0: (UUID: MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2/1/0)\n"
        "  MIG 3g.20gb Device 1: (UUID: MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2/2/0)\n"
    )
    (gpu,) = detect_gpus(env=smi_env(tmp_path))
    assert gpu.accelerator == "A100"
    assert [d.uuid for d in gpu.mig_devices] == [
        "MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2/1/0",
        "MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2/2/0",
    ]
    slots = plan_workers([gpu], "auto", "3g.20gb")
    assert [s.visible_devices for s in slots] == [d.uuid for d in gpu.mig_devices]
