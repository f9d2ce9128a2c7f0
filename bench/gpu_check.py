"""GPU check for a real NVIDIA machine: ``python bench/gpu_check.py`` (never run in CI).

Opens a ``sky.Local()`` pool with ``accelerator=`` this machine's GPUs (all GPUs of the first
GPU's model, ``concurrency="auto"``) and checks what issue 10 promises:

- the pool opens (Local offers the GPUs) and each node reports them in
  ``instance_info().accelerators``; ``workers_per_node`` is what
  :func:`skyward.gpus.plan_workers` plans for these GPUs;
- every worker is pinned: its ``CUDA_VISIBLE_DEVICES`` is its planned slot, its own process
  (distinct pids, with the process executor), and, when torch is installed in the client's
  environment (a Local pool with the default image runs the client's interpreter),
  ``torch.cuda.device_count() == 1`` and ``sky.current_accelerator()`` is the GPU's name;
- per-GPU metrics (``skyward.gpus.per_gpu_metrics``) are read while every worker multiplies
  matrices (torch), and show load on every GPU;
- with torch and CUDA in the client too: a CUDA tensor sent as an argument arrives on the
  worker's GPU (``cuda:0``, its only visible one), one returned as a result arrives on the
  client's ``cuda:0``, and the MiB/s of both directions against a numpy array of the same
  size (``--tensor-mib``, default 256; issue 12's goal is 90% of numpy's rate, reported).

It prints one JSON document (figures, checks, and the raw ``nvidia-smi`` outputs Skyward
parses, to replace the written-by-hand ones under ``tests/data/nvidia-smi/``) and exits 1
when a check fails. Without an NVIDIA GPU it says so and exits 0.

Options: ``--nodes N`` splits the GPUs across N Local nodes; ``--seconds S`` is how long
each worker keeps its GPU busy for the metrics (default 3).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import skyward as sky
from skyward.accelerators import AcceleratorSpec
from skyward.gpus import GPU, GPU_QUERY_FIELDS, detect_gpus, per_gpu_metrics, plan_workers


@sky.compute
def worker_view(seconds: float) -> dict[str, Any]:
    """What one task sees on its worker, and how fast its GPU multiplies (with torch)."""
    info = sky.instance_info()
    view: dict[str, Any] = {
        "node": info.node,
        "worker": info.worker,
        "workers_per_node": info.workers_per_node,
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "accelerators": list(info.accelerators),
        "current_accelerator": sky.current_accelerator(),
    }
    try:
        import torch
    except ImportError:
        view["torch"] = None
        time.sleep(seconds)
        return view
    view["torch"] = torch.__version__
    view["device_count"] = torch.cuda.device_count()
    if not torch.cuda.is_available():
        return view
    view["device_name"] = torch.cuda.get_device_name(0)
    size = 8192
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    runs = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        _ = a @ b  # the work being timed
        runs += 1
        if runs % 10 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    view["bf16_tflops"] = round(2 * size**3 * runs / elapsed / 1e12, 1)
    return view


def _smi(*args: str) -> str | None:
    smi = os.environ.get("SKYWARD_NVIDIA_SMI") or "nvidia-smi"
    try:
        done = subprocess.run([smi, *args], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else f"(exit {done.returncode}) {done.stderr}"


def _recordings(gpus: tuple[GPU, ...]) -> dict[str, str | None]:
    """The outputs Skyward parses, verbatim (to store as tests/data/nvidia-smi/<machine>/)."""
    recorded = {
        "query-gpu.csv": _smi(
            f"--query-gpu={','.join(GPU_QUERY_FIELDS)}", "--format=csv,noheader,nounits"
        ),
        "list-gpus.txt": _smi("-L"),
        "mig-mode": _smi("--query-gpu=index,mig.mode.current", "--format=csv,noheader"),
    }
    if any(gpu.mig_devices for gpu in gpus):
        recorded["lgip.txt"] = _smi("mig", "-i", str(gpus[0].index), "-lgip")
    return recorded


@sky.compute
def tensor_device(value: Any) -> tuple[str, int]:
    """Where an argument tensor arrived on the worker, and its size."""
    return str(value.device), int(value.numel() * value.element_size())


@sky.compute
def numpy_size(value: Any) -> int:
    return int(value.nbytes)


@sky.compute
def make_value(kind: str, nbytes: int) -> Any:
    """A result to send back: a CUDA tensor on the worker's GPU, or a numpy array."""
    if kind == "cuda":
        import torch

        return torch.ones(nbytes // 4, dtype=torch.float32, device="cuda")
    import numpy as np

    return np.ones(nbytes // 4, dtype=np.float32)


def _tensor_transfer(pool: sky.ComputePool, nbytes: int, rounds: int = 3) -> dict[str, Any]:
    """CUDA tensors both ways against numpy arrays of the same size (MiB/s, medians)."""
    import numpy as np
    import torch

    tensor = torch.ones(nbytes // 4, dtype=torch.float32, device="cuda:0")
    array = np.ones(nbytes // 4, dtype=np.float32)
    rates: dict[str, list[float]] = {}
    devices: dict[str, str] = {}

    def timed(name: str, call: Any) -> Any:
        if name.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        got = call()
        if name.startswith("cuda"):
            torch.cuda.synchronize()
        rates.setdefault(name, []).append(nbytes / 2**20 / (time.perf_counter() - start))
        return got

    tensor_device(tensor) >> pool  # warm: torch imported and CUDA initialised on the worker
    make_value("cuda", 4096) >> pool
    for _ in range(rounds):
        where, size = timed("cuda argument", lambda: tensor_device(tensor) >> pool)
        devices["argument_on_worker"] = where
        assert size == nbytes
        timed("numpy argument", lambda: numpy_size(array) >> pool)
        back = timed("cuda result", lambda: make_value("cuda", nbytes) >> pool)
        devices["result_on_client"] = str(back.device)
        timed("numpy result", lambda: make_value("numpy", nbytes) >> pool)
    medians = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    return {
        "mib": nbytes / 2**20,
        "mib_per_s": {k: round(v) for k, v in medians.items()},
        "cuda_share_of_numpy": {
            d: round(medians[f"cuda {d}"] / medians[f"numpy {d}"], 3)
            for d in ("argument", "result")
        },
        "devices": devices,
    }


def _cuda_in_client() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _accelerator(gpus: tuple[GPU, ...], nodes: int) -> tuple[AcceleratorSpec, list[GPU]]:
    first = gpus[0]
    same = [gpu for gpu in gpus if gpu.accelerator == first.accelerator]
    per_node = max(1, len(same) // nodes)
    profile = first.mig_devices[0].profile if first.mig_devices else None
    return AcceleratorSpec(first.accelerator, count=per_node, mig=profile), same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--tensor-mib", type=int, default=256)
    options = parser.parse_args()

    gpus = detect_gpus()
    if not gpus:
        print(json.dumps({"gpu": False, "message": "no NVIDIA GPU here: nothing to check"}))
        print(
            "gpu_check: no NVIDIA GPU on this machine (or no working nvidia-smi)", file=sys.stderr
        )
        return 0

    accelerator, same = _accelerator(gpus, options.nodes)
    per_node = int(accelerator.count)
    used = same[: per_node * options.nodes]
    # Node 0's share: the first GPUs (local_gpus splits them in nvidia-smi order).
    slots = plan_workers(used[:per_node], "auto", accelerator.mig)
    report: dict[str, Any] = {
        "gpu": True,
        "gpus": [
            {"index": g.index, "name": g.name, "memory_mb": g.memory_mb, "mig": len(g.mig_devices)}
            for g in gpus
        ],
        "accelerator": str(accelerator),
        "nodes": options.nodes,
        "planned_workers_per_node": len(slots),
        "recordings": _recordings(gpus),
    }
    checks: dict[str, bool] = {}
    started = time.perf_counter()
    with sky.ComputePool(
        provider=sky.Local(),
        accelerator=accelerator,
        nodes=options.nodes,
        concurrency="auto",
        display="quiet",
    ) as pool:
        report["pool_open_s"] = round(time.perf_counter() - started, 3)
        first = worker_view(0.0) >> pool
        workers = first["workers_per_node"] * options.nodes
        samples: list[list[dict[str, float]]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                samples.append(per_gpu_metrics())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # Twice as many tasks as workers: every worker gets at least one while busy.
        views = sky.gather(*[worker_view(options.seconds) for _ in range(2 * workers)]) >> pool
        done.set()
        sampler.join()
        samples.append(per_gpu_metrics())  # at least one, however short the load
        if _cuda_in_client():
            report["cuda_tensors"] = _tensor_transfer(pool, options.tensor_mib * 2**20)

    by_worker: dict[tuple[int, int], dict[str, Any]] = {}
    for view in views:
        by_worker.setdefault((view["node"], view["worker"]), view)
    report["workers"] = sorted(by_worker.values(), key=lambda v: (v["node"], v["worker"]))
    report["workers_per_node"] = first["workers_per_node"]
    report["pids"] = len({v["pid"] for v in views})
    busiest: dict[int, float] = {}
    for sampled in samples:
        for gpu in sampled:
            index = int(gpu["index"])
            busiest[index] = max(busiest.get(index, 0.0), gpu.get("utilization", 0.0))
    report["max_utilization_by_gpu"] = busiest
    report["metric_samples"] = len(samples)

    checks["accelerators_reported"] = all(
        v["accelerators"] and set(v["accelerators"]) == {accelerator.name} for v in views
    )
    checks["workers_per_node_is_the_plan"] = first["workers_per_node"] == len(slots)
    checks["every_worker_ran"] = len(by_worker) == workers
    checks["one_process_per_worker"] = report["pids"] == workers
    visible = [v["cuda_visible_devices"] for v in report["workers"]]
    checks["workers_pinned"] = None not in visible and len(set(visible)) == len(visible)
    checks["current_accelerator"] = all(v["current_accelerator"] == accelerator.name for v in views)
    checks["metrics_sampled"] = bool(samples) and all(samples)
    if any(v.get("device_count") for v in views):  # torch with CUDA: a real GPU machine
        checks["torch_sees_one_gpu_per_worker"] = all(v.get("device_count") == 1 for v in views)
        tflops = [v["bf16_tflops"] for v in views if "bf16_tflops" in v]
        report["bf16_tflops_per_worker_median"] = (
            sorted(tflops)[len(tflops) // 2] if tflops else None
        )
        # A GPU in MIG mode reports no utilization: then only that samples came.
        checks["metrics_show_load"] = bool(samples) and (
            accelerator.mig is not None or all(busiest.get(g.index, 0.0) > 0 for g in used)
        )
    else:
        report["torch"] = "no torch with CUDA here: the per-worker CUDA checks were skipped"
    if "cuda_tensors" in report:
        devices = report["cuda_tensors"]["devices"]
        checks["cuda_tensor_argument_on_the_workers_gpu"] = (
            devices.get("argument_on_worker") == "cuda:0"
        )
        checks["cuda_tensor_result_on_the_clients_gpu"] = (
            devices.get("result_on_client") == "cuda:0"
        )
    report["checks"] = checks
    print(json.dumps(report, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
