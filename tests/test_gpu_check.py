"""``bench/gpu_check.py`` (the check for real NVIDIA machines) runs where there is none, and
against the fake nvidia-smi (tests/gpu_fakes.py) produces its report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.gpu_fakes import smi_env

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"


def _run(machine: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **smi_env(machine), "PATH": os.environ.get("PATH", "")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_without_gpu_it_says_so_and_succeeds() -> None:
    done = _run("no-driver")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "gpu": False,
        "message": "no NVIDIA GPU here: nothing to check",
    }
    assert "no NVIDIA GPU" in done.stderr


def test_with_fake_gpus_it_opens_a_local_pool_and_reports() -> None:
    done = _run("h200-x8", "--nodes", "2", "--seconds", "0")
    report = json.loads(done.stdout)
    assert report["accelerator"] == "4xH200"
    assert report["planned_workers_per_node"] == 4
    assert report["recordings"]["query-gpu.csv"].startswith("0, GPU-")
    assert report["recordings"]["list-gpus.txt"].startswith("GPU 0: NVIDIA H200")
    checks = report["checks"]
    assert checks["accelerators_reported"] is True
    assert checks["metrics_sampled"] is True
    # Planning workers from the node's GPUs and pinning them is the agent's part (it calls
    # skyward.gpus.plan_node): these checks are reported here, whatever they say.
    assert {
        "workers_per_node_is_the_plan",
        "one_process_per_worker",
        "workers_pinned",
        "current_accelerator",
    } <= set(checks)
    assert done.returncode == (0 if all(checks.values()) else 1)
