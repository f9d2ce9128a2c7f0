"""The NVIDIA GPUs of this machine, and how a node's workers share them.

Imported on nodes (the agent plans its workers with it) and on clients (``sky.Local`` offers
the machine's GPUs), so it needs nothing but the standard library and attrs: no NVML
binding, no CUDA. Everything comes from ``nvidia-smi``, which every NVIDIA driver installs:

- ``nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu,
  temperature.gpu --format=csv,noheader,nounits``: one line per GPU (detection and metrics);
- ``nvidia-smi -L``: the same GPUs with their MIG devices (``MIG 3g.40gb Device 0: (UUID:
  MIG-...)``), the UUIDs a worker is pinned to.

``nvidia-smi`` lists every GPU of the machine whatever ``CUDA_VISIBLE_DEVICES`` says, so
:func:`detect_gpus` applies that variable itself, the way the CUDA runtime reads it.

Worker planning (:func:`plan_workers`) is pure: GPUs in, one :class:`WorkerSlot` per worker
out. A slot's ``visible_devices`` is the ``CUDA_VISIBLE_DEVICES`` value of that worker's
process: physical indices for whole GPUs (with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` they mean
what ``nvidia-smi`` means by them, and tools that parse the variable as integers keep
working) and UUIDs for MIG instances (CUDA can address a MIG instance only by its UUID).
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Literal, TypeAlias

from attrs import evolve, field, frozen

from skyward.errors import ConfigurationError

__all__ = [
    "GPU_QUERY_FIELDS",
    "NVIDIA_SMI_ENV",
    "GPU",
    "Concurrency",
    "MigDevice",
    "WorkerSlot",
    "detect_gpus",
    "gpu_name_to_accelerator",
    "node_accelerators",
    "per_gpu_metrics",
    "plan_node",
    "plan_workers",
    "visible_gpus",
]

Concurrency: TypeAlias = int | Literal["auto"]
"""Workers per node: a number, or ``"auto"`` (one per GPU or MIG instance, 1 without GPU)."""

NVIDIA_SMI_ENV = "SKYWARD_NVIDIA_SMI"
"""Environment variable naming the ``nvidia-smi`` to run (tests point it at a fake)."""

GPU_QUERY_FIELDS = (
    "index",
    "uuid",
    "name",
    "memory.total",
    "memory.used",
    "utilization.gpu",
    "temperature.gpu",
)
"""The ``--query-gpu`` fields asked for, in order (one query serves detection and metrics)."""

_QUERY_ARGS = (
    f"--query-gpu={','.join(GPU_QUERY_FIELDS)}",
    "--format=csv,noheader,nounits",
)
_LIST_ARGS = ("-L",)
# nvidia-smi can take seconds to initialise the driver on a machine without persistence mode.
_SMI_TIMEOUT = 30.0

# `nvidia-smi -L`: "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-...)" then, indented, one line per
# MIG device: "  MIG 3g.40gb     Device  0: (UUID: MIG-...)". Drivers before R470 printed
# "MIG-GPU-<uuid>/<gi>/<ci>" as the MIG UUID; both match.
_GPU_LINE = re.compile(r"^GPU\s+(?P<index>\d+):\s+(?P<name>.*?)\s+\(UUID:\s*(?P<uuid>[^)\s]+)\)")
_MIG_LINE = re.compile(
    r"^\s+MIG\s+(?P<profile>\S+)\s+Device\s+(?P<device>\d+):\s+\(UUID:\s*(?P<uuid>[^)\s]+)\)"
)
# What nvidia-smi prints for a value it cannot give ("[N/A]", "[Not Supported]", ...).
_MISSING = re.compile(r"^\[.*\]$|^N/A$")
# Vendor words in front of the model in nvidia-smi's names ("NVIDIA H200", "Tesla T4").
_VENDOR_WORDS = frozenset({"nvidia", "tesla", "geforce", "quadro"})
_NAME_SEPARATORS = re.compile(r"[\s\-_/]+")
_NO_DEVICES = frozenset({"", "nodevfiles", "none", "void"})


@frozen
class MigDevice:
    """One MIG instance (a GPU instance with its compute instance) of a GPU."""

    uuid: str
    """What ``CUDA_VISIBLE_DEVICES`` names it by (``"MIG-c6d4f1ef-..."``)."""
    profile: str
    """Its MIG profile (``"3g.40gb"``)."""
    gpu_index: int
    """Index (``nvidia-smi``'s, PCI order) of the GPU it belongs to."""


@frozen
class GPU:
    """One NVIDIA GPU of this machine, as ``nvidia-smi`` describes it."""

    index: int
    """``nvidia-smi``'s index (PCI bus order), the same whatever ``CUDA_VISIBLE_DEVICES`` is."""
    uuid: str
    """Its UUID (``"GPU-5c89852c-..."``)."""
    name: str
    """The product name as the driver gives it (``"NVIDIA H200"``)."""
    memory_mb: int
    """Memory in MiB."""
    mig_devices: tuple[MigDevice, ...] = ()
    """Its MIG instances (empty when MIG is off or not partitioned)."""

    @property
    def accelerator(self) -> str:
        """The catalog's name for it (``"H200"``), else the driver's name."""
        return gpu_name_to_accelerator(self.name) or self.name


def _check_worker(_instance: object, _attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"worker must be an index >= 0, got {value!r}")


@frozen
class WorkerSlot:
    """What one worker process of a node may use."""

    worker: int = field(validator=_check_worker)
    """The worker's index on its node, ``0..workers_per_node-1``."""
    visible_devices: str | None
    """``CUDA_VISIBLE_DEVICES`` for the worker's process: ``"3"``, ``"0,1"``, ``"MIG-..."``;
    ``None`` when the node has no GPU (the variable is left as it is)."""
    accelerators: tuple[str, ...] = ()
    """Catalog names of what the worker sees, one per device (``("H200",)``)."""

    def env(self) -> dict[str, str]:
        """Variables to set in the worker's environment (empty without GPU).

        ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` makes CUDA number GPUs as ``nvidia-smi`` does, so
        the indices in ``CUDA_VISIBLE_DEVICES`` mean the GPUs they were planned for.
        """
        if self.visible_devices is None:
            return {}
        return {"CUDA_VISIBLE_DEVICES": self.visible_devices, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


# ---------------------------------------------------------------------------------------
# Running nvidia-smi
# ---------------------------------------------------------------------------------------


def _smi_path(smi: str | None, env: Mapping[str, str]) -> str | None:
    if smi is not None:
        return smi
    configured = env.get(NVIDIA_SMI_ENV)
    if configured:
        return configured
    return shutil.which("nvidia-smi", path=env.get("PATH", os.defpath))


def _run_smi(smi: str, args: Sequence[str], env: Mapping[str, str]) -> str | None:
    """``nvidia-smi``'s output, or ``None`` when it cannot run or fails (no driver, no GPU)."""
    try:
        done = subprocess.run(
            [smi, *args],
            capture_output=True,
            text=True,
            timeout=_SMI_TIMEOUT,
            env=dict(env),
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _number(text: str) -> float | None:
    text = text.strip()
    if not text or _MISSING.match(text):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _query_rows(smi: str, env: Mapping[str, str]) -> list[dict[str, str]] | None:
    out = _run_smi(smi, _QUERY_ARGS, env)
    if out is None:
        return None
    rows = []
    for values in csv.reader(out.splitlines(), skipinitialspace=True):
        if len(values) != len(GPU_QUERY_FIELDS):
            continue  # a warning line, not a GPU
        rows.append(dict(zip(GPU_QUERY_FIELDS, (v.strip() for v in values), strict=True)))
    return rows


def _mig_devices(listing: str) -> dict[int, tuple[MigDevice, ...]]:
    """MIG devices by GPU index, from ``nvidia-smi -L``."""
    found: dict[int, list[MigDevice]] = {}
    current: int | None = None
    for line in listing.splitlines():
        gpu = _GPU_LINE.match(line)
        if gpu is not None:
            current = int(gpu["index"])
            found.setdefault(current, [])
            continue
        mig = _MIG_LINE.match(line)
        if mig is not None and current is not None:
            found[current].append(MigDevice(mig["uuid"], mig["profile"], current))
    return {index: tuple(devices) for index, devices in found.items()}


def _all_gpus(smi: str, env: Mapping[str, str]) -> tuple[GPU, ...]:
    rows = _query_rows(smi, env)
    if not rows:
        return ()
    listing = _run_smi(smi, _LIST_ARGS, env) or ""
    migs = _mig_devices(listing)
    gpus = []
    for row in rows:
        index = _number(row["index"])
        memory = _number(row["memory.total"])
        if index is None:
            continue
        position = int(index)
        gpus.append(
            GPU(
                index=position,
                uuid=row["uuid"],
                name=row["name"],
                memory_mb=int(memory) if memory is not None else 0,
                mig_devices=migs.get(position, ()),
            )
        )
    return tuple(sorted(gpus, key=lambda gpu: gpu.index))


# ---------------------------------------------------------------------------------------
# CUDA_VISIBLE_DEVICES
# ---------------------------------------------------------------------------------------


def _match_token(token: str, gpus: Sequence[GPU]) -> tuple[GPU, MigDevice | None] | None:
    """The GPU (and MIG device) one entry of ``CUDA_VISIBLE_DEVICES`` names, if any."""
    if token.isdigit():
        for gpu in gpus:
            if gpu.index == int(token):
                return gpu, None
        return None
    # CUDA accepts a unique prefix of a UUID ("GPU-5c89"), with or without its "GPU-".
    lowered = token.lower()
    if lowered.startswith("mig-"):
        matches_mig = [
            (gpu, device)
            for gpu in gpus
            for device in gpu.mig_devices
            if device.uuid.lower().startswith(lowered)
        ]
        return matches_mig[0] if len(matches_mig) == 1 else None
    wanted = lowered if lowered.startswith("gpu-") else f"gpu-{lowered}"
    matches = [gpu for gpu in gpus if gpu.uuid.lower().startswith(wanted)]
    return (matches[0], None) if len(matches) == 1 else None


def visible_gpus(gpus: Sequence[GPU], cuda_visible_devices: str | None) -> tuple[GPU, ...]:
    """The GPUs a process with this ``CUDA_VISIBLE_DEVICES`` sees, in the order CUDA numbers
    them.

    ``None`` (unset) sees all of them; ``""`` or ``"NoDevFiles"`` none. Like CUDA, the list
    stops at the first entry that names no device. Indices are read as ``nvidia-smi``'s (PCI
    order): CUDA's default order is fastest-first, which differs only on machines mixing GPU
    models, and Skyward sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` wherever it sets the variable.
    A MIG UUID makes that MIG device the only one of its GPU that is visible.
    """
    if cuda_visible_devices is None:
        return tuple(gpus)
    if cuda_visible_devices.strip().lower() in _NO_DEVICES:
        return ()
    chosen: dict[int, GPU] = {}
    order: list[int] = []
    for raw in cuda_visible_devices.split(","):
        match = _match_token(raw.strip(), gpus)
        if match is None:
            break
        gpu, device = match
        if gpu.index not in chosen:
            order.append(gpu.index)
            chosen[gpu.index] = gpu if device is None else evolve(gpu, mig_devices=())
        if device is not None:
            known = chosen[gpu.index]
            if device not in known.mig_devices:
                chosen[gpu.index] = evolve(known, mig_devices=(*known.mig_devices, device))
    return tuple(chosen[index] for index in order)


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def detect_gpus(smi: str | None = None, env: Mapping[str, str] | None = None) -> tuple[GPU, ...]:
    """This machine's NVIDIA GPUs that ``CUDA_VISIBLE_DEVICES`` (in ``env``) lets it use.

    :param smi: the ``nvidia-smi`` to run; default ``$SKYWARD_NVIDIA_SMI``, else the one on
        ``PATH``.
    :param env: environment to read ``CUDA_VISIBLE_DEVICES``, ``SKYWARD_NVIDIA_SMI`` and
        ``PATH`` from (and to run ``nvidia-smi`` with); default ``os.environ``.
    :returns: the GPUs in CUDA's order; ``()`` when there is no ``nvidia-smi``, no driver or
        no GPU (``nvidia-smi`` failing is never an error here).
    """
    environ = _env(env)
    path = _smi_path(smi, environ)
    if path is None:
        return ()
    return visible_gpus(_all_gpus(path, environ), environ.get("CUDA_VISIBLE_DEVICES"))


def per_gpu_metrics(
    smi: str | None = None, env: Mapping[str, str] | None = None
) -> list[dict[str, float]]:
    """One sample per visible GPU: ``index``, ``utilization`` (percent), ``memory_used_mb``,
    ``memory_total_mb`` and ``temperature_c``.

    A figure the driver does not give (``[N/A]``: utilization of a GPU in MIG mode, for one)
    is left out of that GPU's dict. ``[]`` without GPUs.
    """
    environ = _env(env)
    path = _smi_path(smi, environ)
    if path is None:
        return []
    rows = _query_rows(path, environ) or []
    by_index = {}
    for row in rows:
        index = _number(row["index"])
        if index is not None:
            by_index[int(index)] = row
    visible_devices = environ.get("CUDA_VISIBLE_DEVICES")
    # Metrics run every few seconds: `-L` (for MIG UUIDs) only when the variable names one.
    gpus = (
        _all_gpus(path, environ)
        if visible_devices is not None and "mig-" in visible_devices.lower()
        else _all_gpus_from_rows(rows)
    )
    visible = [gpu for gpu in visible_gpus(gpus, visible_devices) if gpu.index in by_index]
    samples = []
    for gpu in visible:
        row = by_index[gpu.index]
        sample: dict[str, float] = {"index": float(gpu.index)}
        for key, column in (
            ("utilization", "utilization.gpu"),
            ("memory_used_mb", "memory.used"),
            ("memory_total_mb", "memory.total"),
            ("temperature_c", "temperature.gpu"),
        ):
            value = _number(row[column])
            if value is not None:
                sample[key] = value
        samples.append(sample)
    return samples


def _all_gpus_from_rows(rows: Sequence[Mapping[str, str]]) -> tuple[GPU, ...]:
    gpus = []
    for row in rows:
        index = _number(row["index"])
        if index is not None:
            gpus.append(GPU(int(index), row["uuid"], row["name"], 0))
    return tuple(gpus)


# ---------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------


@cache
def _nvidia_names() -> dict[str, str]:
    from skyward.accelerators import BUILTIN_ACCELERATORS

    names: dict[str, str] = {}
    for definition in BUILTIN_ACCELERATORS:
        if definition.vendor != "NVIDIA":
            continue
        for spelling in definition.names:
            names[spelling.lower()] = definition.name
            # "Tesla-T4" is spelled "Tesla T4" by the driver: the vendor word goes.
            words = spelling.lower().split("-")
            if len(words) > 1 and words[0] in _VENDOR_WORDS:
                names["-".join(words[1:])] = definition.name
    return names


def gpu_name_to_accelerator(name: str) -> str | None:
    """The catalog's name for a GPU as the driver names it, ``None`` when it knows none.

    ``"NVIDIA H200"`` -> ``"H200"``, ``"NVIDIA A100-SXM4-80GB"`` -> ``"A100"``, ``"NVIDIA
    H100 80GB HBM3"`` -> ``"H100"``, ``"Tesla T4"`` -> ``"T4"``, ``"NVIDIA GH200 480GB"`` ->
    ``"GH200"``: the first word of the name (after the vendor's) that is a catalog name.
    """
    names = _nvidia_names()
    words = [w for w in _NAME_SEPARATORS.split(name.strip().lower()) if w]
    while words and words[0] in _VENDOR_WORDS:
        words.pop(0)
    for word in words:
        if word in names:
            return names[word]
    return None


# ---------------------------------------------------------------------------------------
# Planning workers
# ---------------------------------------------------------------------------------------


def _check_concurrency(concurrency: object) -> Concurrency:
    if concurrency == "auto":
        return "auto"
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(
            "concurrency",
            f"{concurrency!r} is neither a positive whole number nor 'auto'",
            'Use concurrency="auto" (one worker per GPU) or a number like 4',
        )
    return concurrency


def _units(gpus: Sequence[GPU], mig_profile: str | None) -> list[tuple[str, str]]:
    """``(CUDA_VISIBLE_DEVICES entry, accelerator name)`` of each device a worker can own.

    A GPU in MIG mode is only usable through its MIG instances, so those are its units;
    with ``mig_profile`` only instances of that profile count.
    """
    units: list[tuple[str, str]] = []
    for gpu in gpus:
        if gpu.mig_devices:
            units.extend(
                (device.uuid, gpu.accelerator)
                for device in gpu.mig_devices
                if mig_profile is None or device.profile == mig_profile
            )
        elif mig_profile is None:
            units.append((str(gpu.index), gpu.accelerator))
    if mig_profile is not None and gpus and not units:
        have = sorted({d.profile for gpu in gpus for d in gpu.mig_devices}) or ["none"]
        raise ConfigurationError(
            "accelerator",
            f"MIG profile {mig_profile} was asked for, but this node's GPUs have no MIG "
            f"instance of it (MIG instances here: {', '.join(have)})",
            "Let the bootstrap's mig step partition the GPUs, or ask for the profile they have",
        )
    return units


def plan_node(
    concurrency: Concurrency,
    mig_profile: str | None = None,
    smi: str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[tuple[GPU, ...], tuple[WorkerSlot, ...]]:
    """What a node agent does at start: :func:`detect_gpus`, then :func:`plan_workers`.

    :returns: the GPUs the node sees and one slot per worker; ``len(slots)`` is the node's
        ``workers_per_node`` and :func:`node_accelerators` of the GPUs its
        ``InstanceInfo.accelerators``.
    """
    gpus = detect_gpus(smi, env)
    return gpus, plan_workers(gpus, concurrency, mig_profile)


def node_accelerators(gpus: Sequence[GPU], mig_profile: str | None = None) -> tuple[str, ...]:
    """Catalog names of a node's accelerators, one per GPU (``("H200",) * 8``); on a MIG
    pool one per MIG instance of the profile, as each is a device a worker owns."""
    if mig_profile is None:
        return tuple(gpu.accelerator for gpu in gpus)
    return tuple(
        gpu.accelerator for gpu in gpus for d in gpu.mig_devices if d.profile == mig_profile
    )


def plan_workers(
    gpus: Sequence[GPU],
    concurrency: Concurrency,
    mig_profile: str | None = None,
) -> tuple[WorkerSlot, ...]:
    """How a node's workers share its GPUs: one :class:`WorkerSlot` per worker.

    - ``"auto"``: one worker per GPU; on GPUs in MIG mode one per MIG instance (only those
      of ``mig_profile`` when given); one worker without GPU.
    - an int ``n`` overrides the count. With more devices than workers, each worker gets
      an even, contiguous share (the first ones one more when it does not divide), its
      ``visible_devices`` comma-joined. With fewer, workers share devices round-robin:
      worker ``i`` gets device ``i % devices``, and workers on one device share its memory
      and compute (nothing isolates them). A process can use only one MIG instance, so a
      worker given several MIG UUIDs uses the first.

    Slots are a pure function of the inputs: a respawned worker ``i`` gets slot ``i`` again,
    so no two live workers share a device that planning gave to one.

    :raises ConfigurationError: on a bad ``concurrency``, or when ``mig_profile`` is asked
        for and the GPUs have no MIG instance of it.
    """
    wanted = _check_concurrency(concurrency)
    units = _units(gpus, mig_profile)
    if not units:
        count = 1 if wanted == "auto" else wanted
        return tuple(WorkerSlot(worker, None, ()) for worker in range(count))
    if wanted == "auto" or wanted == len(units):
        return tuple(
            WorkerSlot(worker, device, (name,)) for worker, (device, name) in enumerate(units)
        )
    if wanted < len(units):
        base, extra = divmod(len(units), wanted)
        slots = []
        start = 0
        for worker in range(wanted):
            size = base + (1 if worker < extra else 0)
            share = units[start : start + size]
            start += size
            slots.append(
                WorkerSlot(worker, ",".join(d for d, _ in share), tuple(name for _, name in share))
            )
        return tuple(slots)
    return tuple(
        WorkerSlot(worker, units[worker % len(units)][0], (units[worker % len(units)][1],))
        for worker in range(wanted)
    )
