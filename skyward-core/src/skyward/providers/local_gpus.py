"""The NVIDIA GPUs ``sky.Local`` offers: this machine's, split between the pool's nodes.

A Local pool that asks for an accelerator (``accelerator="H200"``, ``"2xH200"``,
``AcceleratorSpec.NVIDIA.A100(mig="3g.40gb")``) gets an offer when the machine has enough
of them: ``nodes x count`` GPUs whose driver name is that catalog name (and memory variant,
when one is asked), not split by MIG. Node ``i`` gets GPUs ``i*count .. (i+1)*count-1`` of them, in
``nvidia-smi`` order, and its agent starts with ``CUDA_VISIBLE_DEVICES`` naming them, so
it (and every worker it plans) sees only its share. With a MIG profile only GPUs already
partitioned into that profile count (Local never repartitions this machine's GPUs), and a
node's share is their MIG instances' UUIDs. Asking for more than there is raises
:class:`~skyward.errors.NoAvailableProviderError` listing what the machine has.

Only GPUs this process may use count: ``CUDA_VISIBLE_DEVICES`` in the client's environment
limits them, as it would limit the client itself.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import psutil
from attrs import evolve

from skyward.accelerators import AcceleratorSpec
from skyward.errors import NoAvailableProviderError
from skyward.gpus import GPU, detect_gpus
from skyward.offers import Offer
from skyward.spec import ComputeSpec

__all__ = ["describe_gpus", "gpu_offer", "node_device_shares"]

# A GPU "is" a memory variant when its memory is within this share of it (drivers report a
# little less than the marketing size: an H100 80GB HBM3 has 81559 MiB).
_MEMORY_TOLERANCE = 0.1


def describe_gpus(gpus: Sequence[GPU]) -> str:
    """``"8x NVIDIA H200 (143771 MiB)"``, ``"1x NVIDIA A100-SXM4-80GB (81920 MiB, MIG
    2x 3g.40gb)"``, ...: what a machine has, for error messages."""
    if not gpus:
        return "no NVIDIA GPU"
    groups: dict[str, int] = {}
    for gpu in gpus:
        label = f"{gpu.name} ({gpu.memory_mb} MiB"
        if gpu.mig_devices:
            profiles: dict[str, int] = {}
            for device in gpu.mig_devices:
                profiles[device.profile] = profiles.get(device.profile, 0) + 1
            label += ", MIG " + " + ".join(f"{n}x {p}" for p, n in profiles.items())
        label += ")"
        groups[label] = groups.get(label, 0) + 1
    return ", ".join(f"{count}x {label}" for label, count in groups.items())


def _matches(gpu: GPU, wanted: AcceleratorSpec) -> bool:
    if gpu.accelerator != wanted.name:
        return False
    memory = wanted.memory_gb
    if memory is not None and abs(gpu.memory_mb / 1024 - memory) > memory * _MEMORY_TOLERANCE:
        return False
    if wanted.mig is not None:
        return any(device.profile == wanted.mig for device in gpu.mig_devices)
    return not gpu.mig_devices  # a GPU in MIG mode is only usable through its instances


def _one(wanted: AcceleratorSpec) -> str:
    """The spec's spelling for one GPU (``"H200"``, ``"A100-MIG-3g.40gb"``)."""
    return str(evolve(wanted, count=1))


def _per_node(wanted: AcceleratorSpec) -> int:
    # A fraction of a GPU (AWS's G6f shares) is a whole one here: Local cannot split one.
    return max(1, math.ceil(wanted.count))


def _usable(spec: ComputeSpec, env: Mapping[str, str] | None) -> tuple[list[GPU], tuple[GPU, ...]]:
    assert spec.accelerator is not None
    gpus = detect_gpus(env=env)
    return [gpu for gpu in gpus if _matches(gpu, spec.accelerator)], gpus


def gpu_offer(
    spec: ComputeSpec, provider: str, env: Mapping[str, str] | None = None
) -> list[Offer]:
    """The Local offer for a pool that asks for an accelerator (none for a kind Local
    cannot have: not NVIDIA, or no GPU at all).

    :raises NoAvailableProviderError: when the machine has the kind of GPU but fewer than
        the pool asks for, naming what it has.
    """
    wanted = spec.accelerator
    if wanted is None or wanted.vendor != "NVIDIA":
        return []
    matching, gpus = _usable(spec, env)
    if not gpus:
        return []
    per_node = _per_node(wanted)
    needed = per_node * spec.nodes
    if len(matching) < needed:
        visible = (env if env is not None else os.environ).get("CUDA_VISIBLE_DEVICES")
        limit = f" (CUDA_VISIBLE_DEVICES={visible!r} limits them)" if visible is not None else ""
        fits = len(matching) // per_node
        advice = (
            f"Ask for at most {fits} node(s) of {per_node} GPU(s)"
            if fits
            else "Ask for fewer GPUs per node"
        )
        raise NoAvailableProviderError(
            f"sky.Local: the pool asks for {spec.nodes} node(s) x {per_node} {_one(wanted)} = "
            f"{needed} GPU(s), but this machine has {len(matching)} of them; it has "
            f"{describe_gpus(gpus)}{limit}. {advice}, or use a cloud provider"
        )
    return [
        Offer(
            provider=provider,
            instance_type="local",
            vcpus=os.cpu_count() or 1,
            memory_gb=psutil.virtual_memory().total / 2**30,
            accelerator=wanted.name,
            accelerator_count=per_node,
            accelerator_memory_gb=round(matching[0].memory_mb / 1024, 1),
            region="local",
            price_on_demand=0.0,
            price_spot=None,
        )
    ]


def node_device_shares(
    spec: ComputeSpec, nodes: int, env: Mapping[str, str] | None = None
) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` for each of ``nodes`` nodes: its own GPUs (physical
    indices), or its GPUs' MIG instances of the pool's profile (UUIDs); ``None`` for every
    node when the pool asks for no NVIDIA accelerator (nodes see what the client sees)."""
    wanted = spec.accelerator
    if wanted is None or wanted.vendor != "NVIDIA":
        return [None] * nodes
    matching, gpus = _usable(spec, env)
    per_node = _per_node(wanted)
    if len(matching) < per_node * nodes:
        raise NoAvailableProviderError(
            f"sky.Local: {nodes} node(s) x {per_node} {_one(wanted)} no longer fit this machine's "
            f"GPUs ({describe_gpus(gpus)})"
        )
    shares: list[str | None] = []
    for node in range(nodes):
        share = matching[node * per_node : (node + 1) * per_node]
        if wanted.mig is not None:
            devices = [d.uuid for gpu in share for d in gpu.mig_devices if d.profile == wanted.mig]
        else:
            devices = [str(gpu.index) for gpu in share]
        shares.append(",".join(devices))
    return shares
