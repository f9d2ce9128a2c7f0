"""MIG: the planner (instances per GPU for every profile of the tables) and the bootstrap step,
run for real with ``sh -eu`` against the fake ``nvidia-smi`` (tests/gpu_fakes.py), twice."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import skyward as sky
from skyward import plugins
from skyward.accelerators import BUILTIN_ACCELERATORS, AcceleratorSpec
from skyward.errors import ConfigurationError
from skyward.gpus import detect_gpus, plan_workers
from skyward.mig import MIG_STEP_NAME, mig_instances_per_gpu, mig_step
from skyward.spec import build_spec
from tests.gpu_fakes import copy_machine, machine_state, smi_env

# Every (accelerator, memory, profile, instances) of the catalog's MIG tables, and the
# fake machine whose GPUs have that model.
_MACHINE = {("A100", 80): "a100-80gb-x2-fresh", ("A100", 40): "a100-40gb-x2-fresh"}
_MACHINE[("H100", 80)] = "h100-80gb-x2-fresh"
PROFILES = [
    (definition.name, memory, profile.name, profile.workers)
    for definition in BUILTIN_ACCELERATORS
    for memory, table in definition.mig_profiles.items()
    for profile in table
]
REFERENCE_TABLES = {  # docs: api-reference.md, "MIG Profiles"
    80: {"1g.10gb": 7, "1g.20gb": 4, "2g.20gb": 3, "3g.40gb": 2, "4g.40gb": 1, "7g.80gb": 1},
    40: {"1g.5gb": 7, "2g.10gb": 3, "3g.20gb": 2, "4g.20gb": 1},
}


def _id(case: tuple[str, int, str, int]) -> str:
    return f"{case[0]}-{case[1]}GB-{case[2]}"


def test_the_tables_are_the_references() -> None:
    assert {(name, memory) for name, memory, _, _ in PROFILES} == set(_MACHINE)
    for name, memory, profile, workers in PROFILES:
        assert REFERENCE_TABLES[memory][profile] == workers, (name, profile)


@pytest.mark.parametrize("case", PROFILES, ids=_id)
def test_planner_says_how_many_fit_one_gpu(case: tuple[str, int, str, int]) -> None:
    name, memory, profile, workers = case
    spec = sky.AcceleratorSpec.NVIDIA.A100 if name == "A100" else sky.AcceleratorSpec.NVIDIA.H100
    assert mig_instances_per_gpu(spec(memory=f"{memory}GB", mig=profile)) == workers
    assert mig_instances_per_gpu(f"{name}-{memory}GB", profile) == workers


def test_planner_refuses_what_the_tables_lack() -> None:
    with pytest.raises(ConfigurationError, match="no MIG profile"):
        mig_instances_per_gpu("A100-40GB", "3g.40gb")
    with pytest.raises(ConfigurationError, match="names no MIG profile"):
        mig_instances_per_gpu("H200")


def _run(step_script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # As the bootstrap runs a plugin step: a `set -eu` shell, in a subshell of its own.
    return subprocess.run(
        ["sh", "-eu", "-c", f"(\n:\n{step_script}\n)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _changes(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if "-mig" in c or "-cgi" in c or "-r" in c]


@pytest.mark.parametrize("case", PROFILES, ids=_id)
def test_step_partitions_every_gpu_then_changes_nothing(
    case: tuple[str, int, str, int], tmp_path: Path
) -> None:
    name, memory, profile, workers = case
    machine = copy_machine(_MACHINE[(name, memory)], tmp_path)
    log = tmp_path / "calls.log"
    env = smi_env(machine, FAKE_NVIDIA_SMI_LOG=str(log))
    accelerator = AcceleratorSpec(name, count=2, memory=f"{memory}GB", mig=profile)
    step = mig_step(accelerator)

    first = _run(step.script, env)
    assert first.returncode == 0, first.stderr
    assert "::skyward:cached" not in first.stdout
    assert _changes(_calls(log)) == [
        ["-i", "0", "-mig", "1"],
        ["mig", "-i", "0", "-cgi", ",".join([_lgip_id(profile)] * workers), "-C"],
        ["-i", "1", "-mig", "1"],
        ["mig", "-i", "1", "-cgi", ",".join([_lgip_id(profile)] * workers), "-C"],
    ]
    partitioned = machine_state(machine)
    slots = plan_workers(detect_gpus(env=env), "auto", mig_profile=profile)
    assert len(slots) == 2 * workers
    assert len({s.visible_devices for s in slots}) == 2 * workers

    log.unlink()
    second = _run(step.script, env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "::skyward:cached mig"
    assert _changes(_calls(log)) == []
    assert machine_state(machine) == partitioned


# NVIDIA's GPU instance profile IDs (the recorded `mig -lgip` tables): the same on A100
# 40GB/80GB and H100 80GB for the same slice count.
_LGIP_ID = {
    "1g.10gb": "19",
    "1g.5gb": "19",
    "1g.20gb": "15",
    "2g.20gb": "14",
    "2g.10gb": "14",
    "3g.40gb": "9",
    "3g.20gb": "9",
    "4g.40gb": "5",
    "4g.20gb": "5",
    "7g.80gb": "0",
}


def _lgip_id(profile: str) -> str:
    return _LGIP_ID[profile]


def test_step_completes_a_half_partitioned_gpu(tmp_path: Path) -> None:
    machine = copy_machine("a100-80gb-x2-fresh", tmp_path)
    env = smi_env(machine)
    step = mig_step(AcceleratorSpec.NVIDIA.A100(mig="1g.10gb"))
    state = machine_state(machine)
    gpus = state["gpus"]
    assert isinstance(gpus, list)
    gpus[0]["mig"] = "Enabled"  # enabled by hand, with 3 of 7 instances made
    gpus[0]["instances"] = [
        {"profile": "1g.10gb", "gi": gi, "uuid": f"MIG-made-by-hand-{gi}"} for gi in (1, 2, 3)
    ]
    (machine / "machine.json").write_text(json.dumps(state))
    log = tmp_path / "calls.log"
    done = _run(step.script, {**env, "FAKE_NVIDIA_SMI_LOG": str(log)})
    assert done.returncode == 0, done.stderr
    assert ["mig", "-i", "0", "-cgi", "19,19,19,19", "-C"] in _calls(log)
    assert len(plan_workers(detect_gpus(env=env), "auto", "1g.10gb")) == 14


def test_step_resets_a_gpu_left_pending(tmp_path: Path) -> None:
    machine = copy_machine("a100-80gb-x2-fresh", tmp_path)
    state = machine_state(machine)
    gpus = state["gpus"]
    assert isinstance(gpus, list)
    gpus[1]["pending_until_reset"] = True
    (machine / "machine.json").write_text(json.dumps(state))
    log = tmp_path / "calls.log"
    done = _run(
        mig_step(AcceleratorSpec.NVIDIA.A100(mig="3g.40gb")).script,
        smi_env(machine, FAKE_NVIDIA_SMI_LOG=str(log)),
    )
    assert done.returncode == 0, done.stderr
    assert ["-i", "1", "-r"] in _calls(log)


def test_step_leaves_other_profiles_alone_and_says_so(tmp_path: Path) -> None:
    machine = copy_machine("a100-80gb-x2-fresh", tmp_path)
    env = smi_env(machine)
    assert _run(mig_step(AcceleratorSpec.NVIDIA.A100(mig="3g.40gb")).script, env).returncode == 0
    before = machine_state(machine)
    other = _run(mig_step(AcceleratorSpec.NVIDIA.A100(mig="1g.10gb")).script, env)
    assert other.returncode == 1
    assert "GPU 0 is already partitioned into other MIG profiles (3g.40gb 3g.40gb)" in other.stderr
    assert "nvidia-smi mig -i 0 -dci" in other.stderr
    assert machine_state(machine) == before


def test_step_fails_clearly_without_mig_capable_gpus(tmp_path: Path) -> None:
    machine = copy_machine("a100-80gb-x2-fresh", tmp_path)
    state = machine_state(machine)
    gpus = state["gpus"]
    assert isinstance(gpus, list)
    for gpu in gpus:
        gpu["mig"] = "[N/A]"  # what nvidia-smi says of a GPU that cannot do MIG
    (machine / "machine.json").write_text(json.dumps(state))
    done = _run(mig_step(AcceleratorSpec.NVIDIA.A100(mig="3g.40gb")).script, smi_env(machine))
    assert done.returncode == 1
    assert "MIG profile 3g.40gb was asked for, but no GPU here can do MIG" in done.stderr


def test_step_fails_clearly_when_the_driver_does_not_answer() -> None:
    done = _run(mig_step(AcceleratorSpec.NVIDIA.A100(mig="3g.40gb")).script, smi_env("no-driver"))
    assert done.returncode == 1
    assert "couldn't communicate with the NVIDIA driver" in done.stderr
    assert "nvidia-smi fails" in done.stderr


def test_step_fails_clearly_without_nvidia_smi() -> None:
    env = {"PATH": "/usr/bin:/bin", "SKYWARD_NVIDIA_SMI": "/nonexistent/nvidia-smi"}
    done = _run(mig_step(AcceleratorSpec.NVIDIA.A100(mig="3g.40gb")).script, env)
    assert done.returncode == 1
    assert "nvidia-smi is not installed" in done.stderr


# -- the plugin -----------------------------------------------------------------------------


def test_mig_pools_get_the_step_through_the_hook() -> None:
    spec = build_spec(accelerator=AcceleratorSpec.NVIDIA.A100(mig="3g.40gb"))
    steps = plugins.bootstrap_steps(spec.image, spec)
    assert [s.name for s in steps] == [MIG_STEP_NAME]
    assert steps[0].after == "uv"
    script = spec.image.bootstrap(steps=steps)
    assert "# plugin step mig (after uv)" in script
    assert script.index("plugin step mig") < script.index("deps")
    assert "profile=3g.40gb" in script
    assert "want=2" in script


@pytest.mark.parametrize("accelerator", [None, "A100", "H200", "8xH100"])
def test_other_pools_get_no_step(accelerator: str | None) -> None:
    spec = build_spec(accelerator=accelerator)
    assert MIG_STEP_NAME not in [s.name for s in plugins.bootstrap_steps(spec.image, spec)]
    assert MIG_STEP_NAME not in [s.name for s in plugins.bootstrap_steps(spec.image, None)]


def test_expected_workers_per_node_from_the_spec() -> None:
    assert build_spec().expected_workers_per_node == 1
    assert build_spec(concurrency=3).expected_workers_per_node == 3
    assert build_spec(accelerator="8xH200").expected_workers_per_node == 8
    mig = AcceleratorSpec.NVIDIA.A100(count=8, mig="1g.10gb")
    assert build_spec(accelerator=mig).expected_workers_per_node == 56
    assert build_spec(accelerator=mig, concurrency=2).expected_workers_per_node == 2
