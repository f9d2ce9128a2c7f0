"""GPU check of skyward-integrations, for an NVIDIA machine (not collected by pytest).

Run from the checkout (the GPU machine needs torch, jax with its CUDA plugin, transformers,
accelerate, pluggy, attrs, cloudpickle, rich, psutil; nothing is installed):

    PYTHONUNBUFFERED=1 PYTHONPATH=skyward-core/src:skyward-integrations/src \\
        python tests/gpu/check_integrations.py --out gpu-integrations.json

``--cpu`` runs the same code paths with CPU substitutes (gloo, JAX on CPU, fp32), which is
how it is dry-run on machines without a GPU. Each check runs in its own subprocess with its
own timeout, so a hung NCCL or JAX initialisation cannot stall the rest; every result,
passed or not, goes into one JSON file.

Checks: ``smi`` (nvidia-smi, and the query the agent's metrics parse), ``torch`` (NCCL world
size 1 and three DDP steps on the GPU through @sky.integrations.torch on a 1-node Local pool;
the worker, pinned to the GPU, was put on cuda:0),
``jax`` (@sky.integrations.jax: backend gpu, a psum), ``hf`` (a Hugging Face Trainer in bf16,
3 steps, through @sky.integrations.transformers), ``metrics`` (the pool's Metrics events carry
GPU figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHECKS = ("smi", "torch", "jax", "hf", "metrics")


def _skyward() -> Any:
    import skyward as sky
    from skyward import plugins

    try:
        sky.integrations.torch  # noqa: B018
    except sky.PluginNotInstalledError:
        # Run from a checkout without installing: register the plugin by hand.
        import skyward_integrations.plugin

        manager = plugins.get_plugin_manager()
        manager.register(skyward_integrations.plugin, name="integrations")
        plugins.reset(manager)
    return sky


def check_smi(cpu: bool) -> dict[str, Any]:
    query = "utilization.gpu,memory.used,memory.total,temperature.gpu"
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version," + query, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    fields = [f.strip() for f in out.splitlines()[0].split(",")]
    return {"name": fields[0], "driver": fields[1], "floats": [float(f) for f in fields[2:]]}


def check_torch(cpu: bool) -> dict[str, Any]:
    sky = _skyward()
    backend = "gloo" if cpu else "nccl"

    @sky.integrations.torch(backend=backend, timeout=60)
    @sky.compute
    def ddp() -> dict[str, Any]:
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        device = torch.device("cpu") if cpu else torch.device("cuda", 0)
        total = torch.ones(1, device=device)
        dist.all_reduce(total)
        model = DistributedDataParallel(
            torch.nn.Linear(16, 1).to(device), device_ids=None if cpu else [0]
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            loss = model(torch.randn(32, 16, device=device)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        dist.barrier()
        if not cpu and torch.cuda.current_device() != 0:
            # The worker is pinned to its GPU: the decorator must have chosen cuda:0.
            raise AssertionError(f"current device {torch.cuda.current_device()}, not 0")
        return {
            "local_rank": os.environ["LOCAL_RANK"],
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "current_device": None if cpu else torch.cuda.current_device(),
            "backend": dist.get_backend(),
            "world": dist.get_world_size(),
            "allreduce": total.item(),
            "device": str(device) if cpu else torch.cuda.get_device_name(0),
            "nccl": None if cpu else ".".join(map(str, torch.cuda.nccl.version())),
            "loss": float(loss),
        }

    with sky.ComputePool(provider=sky.Local(), nodes=1, display="quiet") as pool:
        started = time.perf_counter()
        first = (ddp() @ pool)[0]
        first["first_call_s"] = time.perf_counter() - started
        started = time.perf_counter()
        ddp() @ pool
        first["second_call_s"] = time.perf_counter() - started
    return dict(first)


def check_jax(cpu: bool) -> dict[str, Any]:
    sky = _skyward()

    @sky.integrations.jax(timeout=60)
    @sky.compute
    def psum() -> dict[str, Any]:
        import jax

        total = jax.pmap(lambda x: jax.lax.psum(x, "i"), axis_name="i")(
            jax.numpy.ones(jax.local_device_count())
        )
        return {
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "psum": float(total[0]),
            "processes": jax.process_count(),
        }

    env = {"JAX_PLATFORMS": "cpu"} if cpu else {}
    with sky.ComputePool(provider=sky.Local(), nodes=1, display="quiet", env=env) as pool:
        result: dict[str, Any] = (psum() @ pool)[0]
    if not cpu and result["backend"] != "gpu":
        raise AssertionError(f"JAX runs on {result['backend']}, not the GPU")
    return result


def check_hf(cpu: bool) -> dict[str, Any]:
    sky = _skyward()

    @sky.integrations.transformers(backend="gloo" if cpu else "nccl", timeout=60)
    @sky.compute
    def trainer(output: str) -> dict[str, Any]:
        import torch
        from transformers import (
            BertConfig,
            BertForSequenceClassification,
            Trainer,
            TrainingArguments,
        )

        config = BertConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=2,
        )
        ids = torch.randint(0, 64, (32, 8))
        data = [{"input_ids": ids[i], "labels": torch.tensor(i % 2)} for i in range(32)]
        args = TrainingArguments(
            output_dir=output,
            per_device_train_batch_size=8,
            max_steps=3,
            bf16=not cpu,
            use_cpu=cpu,
            ddp_backend="gloo" if cpu else "nccl",
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
        )
        run = Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=data)
        run.train()
        return {
            "mode": str(args.parallel_mode),
            "device": str(args.device),
            "steps": run.state.global_step,
            "bf16": args.bf16,
        }

    with sky.ComputePool(provider=sky.Local(), nodes=1, display="quiet") as pool:
        result: dict[str, Any] = (trainer("/tmp/skyward-gpu-hf") @ pool)[0]
    return result


def check_metrics(cpu: bool) -> dict[str, Any]:
    sky = _skyward()
    os.environ["SKYWARD_METRICS_INTERVAL"] = "1"
    events: list[Any] = []

    @sky.compute
    def idle() -> None:
        time.sleep(3)

    with sky.ComputePool(
        provider=sky.Local(), nodes=1, display="quiet", on_event=events.append
    ) as pool:
        idle() >> pool
    samples = [e for e in events if type(e).__name__ == "Metrics"]
    if not samples:
        raise AssertionError("no Metrics event arrived")
    last = samples[-1]
    gpu = [
        last.gpu_utilization,
        last.gpu_memory_used_mb,
        last.gpu_memory_total_mb,
        last.gpu_temperature,
    ]
    if not cpu and None in gpu:
        raise AssertionError(f"GPU fields missing from Metrics: {gpu}")
    return {"samples": len(samples), "gpu": gpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu", action="store_true", help="CPU substitutes (dry run)")
    parser.add_argument("--out", type=Path, default=Path("gpu-integrations.json"))
    parser.add_argument("--only", choices=CHECKS)
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per check")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds in all")
    args = parser.parse_args()
    if args.only:  # a child: one check, its result as the last line of stdout
        result = globals()[f"check_{args.only}"](args.cpu)
        print(json.dumps(result, default=str))
        return
    report: dict[str, Any] = {}
    deadline = time.monotonic() + args.budget
    for name in CHECKS:
        left = deadline - time.monotonic()
        if left < 10:
            report[name] = {"ok": False, "error": "out of time budget"}
            continue
        command = [sys.executable, __file__, "--only", name]
        if args.cpu:
            command.append("--cpu")
        started = time.monotonic()
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=min(args.timeout, left),
                check=False,
            )
            if done.returncode == 0:
                value = json.loads(done.stdout.strip().splitlines()[-1])
                report[name] = {"ok": True, "result": value}
            else:
                report[name] = {"ok": False, "error": done.stderr[-2000:]}
        except subprocess.TimeoutExpired:
            report[name] = {"ok": False, "error": f"timed out after {min(args.timeout, left)} s"}
        report[name]["seconds"] = round(time.monotonic() - started, 1)
        print(
            name, "ok" if report[name]["ok"] else "FAILED", report[name]["seconds"], "s", flush=True
        )
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
