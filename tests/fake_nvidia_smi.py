"""A fake ``nvidia-smi`` for tests on machines without an NVIDIA GPU.

``tests/bin/nvidia-smi`` runs this module; tests select it with ``SKYWARD_NVIDIA_SMI`` (or by
putting ``tests/bin`` first on ``PATH``) and choose the machine it describes with
``FAKE_NVIDIA_SMI_MACHINE``, a directory:

- ``failure.txt``: the machine has no working driver; the text is printed and the exit
  status is 9, as ``nvidia-smi`` does when it cannot talk to the driver;
- ``query-gpu.csv``: the answer to Skyward's detection query
  (:data:`skyward.gpus.GPU_QUERY_FIELDS`, ``--format=csv,noheader,nounits``);
- ``list-gpus.txt``: the answer to ``nvidia-smi -L`` (GPUs and their MIG devices);
- ``machine.json``: a GPU state for the MIG commands of the bootstrap step (mode, GPU
  instances), changed by ``-mig 1``, ``-r`` and ``mig -cgi ... -C``; the detection query and
  ``-L`` are rendered from it when the two files above are absent;
- ``lgip-*.txt``: ``nvidia-smi mig -lgip`` of one GPU model (named per GPU in
  ``machine.json``), whose ``Free`` column follows the instances made.

No real GPU machine was at hand when these files were written: they follow nvidia-smi's
documented output formats (NVIDIA's MIG user guide and nvidia-smi manual, and published
outputs of ``nvidia-smi -L``, ``--query-gpu`` and ``mig -lgip``), not a capture. See
``tests/data/nvidia-smi/README.md``.

Only the exact argument lists Skyward uses are answered; anything else exits 2 with a
message, so a change of query shows up as a failing test. With ``FAKE_NVIDIA_SMI_LOG`` set,
each call's arguments are appended to that file (one JSON list per line).
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

DETECTION_QUERY = [
    "--query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu,temperature.gpu",
    "--format=csv,noheader,nounits",
]
_NAMESPACE = uuid.UUID("5c0b1f6e-8a44-4c1e-9f6f-2a3d7c1b9e00")


class Machine:
    def __init__(self, root: Path) -> None:
        self.root = root
        state = root / "machine.json"
        self.state: dict[str, Any] | None = (
            json.loads(state.read_text()) if state.exists() else None
        )

    def save(self) -> None:
        assert self.state is not None
        (self.root / "machine.json").write_text(json.dumps(self.state, indent=2) + "\n")

    def recorded(self, name: str) -> str | None:
        path = self.root / name
        return path.read_text() if path.exists() else None

    def gpu(self, index: str) -> dict[str, Any]:
        assert self.state is not None, "this machine has no machine.json"
        for gpu in self.state["gpus"]:
            if str(gpu["index"]) == index:
                found: dict[str, Any] = gpu
                return found
        fail(f"No devices were found matching the ID {index!r}", 6)
        raise AssertionError

    def indices(self) -> list[str]:
        recorded = self.recorded("query-gpu.csv")
        if recorded is not None:
            return [line.split(",")[0].strip() for line in recorded.splitlines() if line]
        assert self.state is not None
        return [str(gpu["index"]) for gpu in self.state["gpus"]]


def fail(message: str, code: int) -> None:
    print(message, file=sys.stderr)
    sys.exit(code)


def bus_id(gpu: dict[str, Any]) -> str:
    return f"00000000:{0x10 + int(gpu['index']) * 0x10:02X}:00.0"


def render_query(machine: Machine) -> str:
    assert machine.state is not None
    lines = []
    for gpu in machine.state["gpus"]:
        mig = gpu.get("mig") == "Enabled"
        utilization = "[N/A]" if mig else str(gpu.get("utilization", 0))
        used = 87 if mig else gpu.get("memory_used_mb", 0)
        lines.append(
            f"{gpu['index']}, {gpu['uuid']}, {gpu['name']}, {gpu['memory_mb']}, {used}, "
            f"{utilization}, {gpu.get('temperature', 31)}"
        )
    return "\n".join(lines) + "\n"


def render_list(machine: Machine) -> str:
    assert machine.state is not None
    lines = []
    for gpu in machine.state["gpus"]:
        lines.append(f"GPU {gpu['index']}: {gpu['name']} (UUID: {gpu['uuid']})")
        if gpu.get("mig") == "Enabled":
            for device, instance in enumerate(gpu.get("instances", [])):
                lines.append(
                    f"  MIG {instance['profile']:<11} Device {device:>2}: "
                    f"(UUID: {instance['uuid']})"
                )
    return "\n".join(lines) + "\n"


_LGIP_ROW = re.compile(
    r"^\|\s+(?P<gpu>\d+)\s+MIG (?P<name>\S+)\s+(?P<id>\d+)\s+(?P<free>\d+)/(?P<total>\d+)\s"
)


def lgip_profiles(machine: Machine, gpu: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Profile ID -> (name, instances per GPU), from the GPU model's recorded table."""
    text = machine.recorded(gpu["lgip"]) or ""
    found = {}
    for line in text.splitlines():
        row = _LGIP_ROW.match(line)
        if row:
            found[row["id"]] = (row["name"], int(row["total"]))
    return found


def render_lgip(machine: Machine, gpu: dict[str, Any]) -> str:
    text = machine.recorded(gpu["lgip"]) or ""
    made: dict[str, int] = {}
    for instance in gpu.get("instances", []):
        made[instance["profile"]] = made.get(instance["profile"], 0) + 1
    out = []
    for line in text.splitlines():
        row = _LGIP_ROW.match(line)
        if not row:
            out.append(line)
            continue
        total = int(row["total"])
        free = 0 if _others(made, row["name"]) else max(0, total - made.get(row["name"], 0))
        cell = f"{row['free']}/{row['total']}"
        counted = line.replace(cell, f"{free}/{total}".rjust(len(cell)), 1)
        out.append(f"|{gpu['index']:>4}" + counted[5:])
    return "\n".join(out) + "\n"


def _others(made: dict[str, int], name: str) -> bool:
    return any(profile != name for profile in made)


def create_instances(machine: Machine, gpu: dict[str, Any], ids: str) -> str:
    if gpu.get("mig") != "Enabled":
        fail(f"Unable to create a GPU instance on GPU {gpu['index']}: Not supported", 3)
    profiles = lgip_profiles(machine, gpu)
    instances = gpu.setdefault("instances", [])
    out = []
    for wanted in ids.split(","):
        if wanted not in profiles:
            fail(f"Unable to create a GPU instance on GPU {gpu['index']}: Invalid Argument", 3)
        name, total = profiles[wanted]
        same = [i for i in instances if i["profile"] == name]
        if len(same) >= total or any(i["profile"] != name for i in instances):
            fail(
                f"Unable to create a GPU instance on GPU {gpu['index']} using profile "
                f"{wanted}: Insufficient Resources",
                3,
            )
        gi = len(instances) + 1
        device = str(uuid.uuid5(_NAMESPACE, f"{gpu['uuid']}/{gi}/0"))
        instances.append({"profile": name, "gi": gi, "uuid": f"MIG-{device}"})
        out.append(
            f"Successfully created GPU instance ID {gi:>2} on GPU {gpu['index']:>2} using "
            f"profile MIG {name} (ID {wanted:>2})"
        )
        out.append(
            f"Successfully created compute instance ID  0 on GPU {gpu['index']:>2} GPU "
            f"instance ID {gi:>2} using profile MIG {name} (ID  {0})"
        )
    machine.save()
    return "\n".join(out) + "\n"


def answer(machine: Machine, args: list[str]) -> str:
    failure = machine.recorded("failure.txt")
    if failure is not None:
        print(failure, end="")
        sys.exit(9)
    if args == DETECTION_QUERY:
        return machine.recorded("query-gpu.csv") or render_query(machine)
    if args == ["-L"]:
        return machine.recorded("list-gpus.txt") or render_list(machine)
    if args == ["--query-gpu=index", "--format=csv,noheader"]:
        return "\n".join(machine.indices()) + "\n"
    if (
        len(args) == 4
        and args[0] == "-i"
        and args[2:]
        == [
            "--query-gpu=mig.mode.current",
            "--format=csv,noheader",
        ]
    ):
        return str(machine.gpu(args[1]).get("mig", "[N/A]")) + "\n"
    if len(args) == 4 and args[0] == "-i" and args[2:] == ["-mig", "1"]:
        gpu = machine.gpu(args[1])
        if gpu.get("mig", "[N/A]") == "[N/A]":
            fail(f"Unable to enable MIG Mode for GPU {bus_id(gpu)}: Not Supported", 3)
        if gpu.get("pending_until_reset"):
            gpu["pending"] = True
            machine.save()
            return (
                f"Warning: MIG mode is in pending enable state for GPU {bus_id(gpu)}:"
                "In use by another client\nAll done.\n"
            )
        gpu["mig"] = "Enabled"
        machine.save()
        return f"Enabled MIG Mode for GPU {bus_id(gpu)}\nAll done.\n"
    if len(args) == 3 and args[0] == "-i" and args[2] == "-r":
        gpu = machine.gpu(args[1])
        if gpu.pop("pending", False):
            gpu["mig"] = "Enabled"
        machine.save()
        return f"GPU {bus_id(gpu)} was successfully reset.\nAll done.\n"
    if len(args) == 4 and args[:2] == ["mig", "-i"] and args[3] == "-lgip":
        gpu = machine.gpu(args[2])
        if gpu.get("mig") != "Enabled":
            fail("No MIG-enabled devices found.", 6)
        return render_lgip(machine, gpu)
    if len(args) == 6 and args[:2] == ["mig", "-i"] and args[3] == "-cgi" and args[5] == "-C":
        return create_instances(machine, machine.gpu(args[2]), args[4])
    fail(f"fake nvidia-smi: unsupported arguments {args!r}", 2)
    raise AssertionError


def main() -> None:
    args = sys.argv[1:]
    log = os.environ.get("FAKE_NVIDIA_SMI_LOG")
    if log:
        with open(log, "a") as stream:
            stream.write(json.dumps(args) + "\n")
    root = os.environ.get("FAKE_NVIDIA_SMI_MACHINE")
    if not root:
        fail("fake nvidia-smi: FAKE_NVIDIA_SMI_MACHINE is not set", 2)
    sys.stdout.write(answer(Machine(Path(str(root))), args))


if __name__ == "__main__":
    main()
