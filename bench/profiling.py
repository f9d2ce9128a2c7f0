"""Where the time goes: sample Skyward's client and agent with py-spy while they work.

py-spy samples every thread of a process from outside (no change to the code under
test, both sides at once: the client and its node agent). Only samples of threads that
are running count (a thread blocked in ``recv`` is idle), so the shares are shares of
CPU time. Each sample is put in one bucket by its innermost frame we recognise:

- serialization: cloudpickle / pickle (and the lines of skyward that call them);
- framing: ``skyward.wire`` and the message envelopes of ``skyward.messages``;
- transport: sockets, select, paramiko and its crypto, ``skyward.ssh``, ``skyward.buffers``;
- scheduling: ``skyward.pool/node/compute/agent/provisioning``, threads, futures, queues;
- function: the benchmark's own function;
- other: anything else (imports, logging, the harness loop...).

The CPU seconds of each process (psutil) over the same window, divided by the calls
made, give CPU time per call on each side.
"""

from __future__ import annotations

import collections
import linecache
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CATEGORIES = ("serialization", "framing", "transport", "scheduling", "function", "other")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")

_TRANSPORT_CALLS = (
    ".sendall(",
    ".send(",
    ".recv(",
    ".recv_into(",
    "select(",
    ".accept(",
    "create_connection(",
    ".poll(",
)
_SERIAL_CALLS = ("dumps(", "loads(", "pickle.", ".open()", "Payload.of(", "PickleBuffer(")


def _by_line(path: str, line: int) -> str | None:
    text = linecache.getline(path, line) if line else ""
    if any(call in text for call in _TRANSPORT_CALLS):
        return "transport"
    if any(call in text for call in _SERIAL_CALLS):
        return "serialization"
    return None


def classify_frame(func: str, path: str, line: int) -> str | None:
    """The bucket of one frame, or ``None`` when the frame says nothing."""
    p = path.replace("\\", "/")
    if "/cloudpickle/" in p or p.endswith(("/pickle.py", "/copyreg.py", "/_compat_pickle.py")):
        return "serialization"
    if "/bench/workloads.py" in p or p.endswith("/workloads.py"):
        return "function"
    if "/paramiko/" in p or "/cryptography/" in p or "/nacl/" in p:
        return "transport"
    if p.endswith(("/socket.py", "/selectors.py", "/ssl.py")) or "/skyward/ssh/" in p:
        return "transport"
    if p.endswith("/skyward/buffers.py"):  # memory to receive into, descriptors passed
        return "transport"
    if p.endswith("/bench/tools.py") and func.startswith("FloorConnection"):
        return _by_line(path, line) or "framing"
    if "/bench/floor_server.py" in p or p.endswith("/floor_server.py"):
        return _by_line(path, line) or "framing"
    if p.endswith("/skyward/wire.py"):
        return _by_line(path, line) or "framing"
    if p.endswith("/skyward/messages.py") or p.startswith("<attrs generated"):
        return _by_line(path, line) or "framing"
    skyward_scheduling = (
        "/skyward/pool.py",
        "/skyward/node.py",
        "/skyward/compute.py",
        "/skyward/agent.py",
        "/skyward/provisioning.py",
        "/skyward/callbacks.py",
        "/skyward/cluster.py",
    )
    if p.endswith(skyward_scheduling):
        return _by_line(path, line) or "scheduling"
    if p.endswith(("/threading.py", "/queue.py")) or "/concurrent/futures/" in p:
        return "scheduling"
    return None


def classify(stack: list[tuple[str, str, int]]) -> str:
    """Innermost recognised frame wins (``stack`` is outermost first, as py-spy writes)."""
    for func, path, line in reversed(stack):
        found = classify_frame(func, path, line)
        if found is not None:
            return found
    return "other"


def parse_raw(text: str) -> list[tuple[list[tuple[str, str, int]], int]]:
    """py-spy's ``--format raw`` (collapsed stacks) into (stack, count) pairs."""
    stacks = []
    for raw in text.splitlines():
        row = raw.strip()
        if not row:
            continue
        frames_text, _, count = row.rpartition(" ")
        if not count.isdigit():
            continue
        stack = []
        for frame in frames_text.split(";"):
            match = _FRAME.match(frame)
            if match is None:
                stack.append((frame, "", 0))
            else:
                stack.append(
                    (match["func"], match["file"], int(match["line"]) if match["line"] else 0)
                )
        stacks.append((stack, int(count)))
    return stacks


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.", "/work/main/", "/src/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    return Path(path).name


def summarize(stacks: list[tuple[list[tuple[str, str, int]], int]]) -> dict[str, Any]:
    """Shares per bucket and the hottest innermost functions."""
    total = sum(count for _, count in stacks)
    buckets: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[tuple[str, str]] = collections.Counter()
    for stack, count in stacks:
        bucket = classify(stack)
        buckets[bucket] += count
        if stack:
            func, path, _ = stack[-1]
            leaves[(f"{_short(path)}:{func}", bucket)] += count
    return {
        "samples": total,
        "shares": {c: (buckets[c] / total if total else 0.0) for c in CATEGORIES},
        "top": [
            {"where": where, "bucket": bucket, "share": n / total}
            for (where, bucket), n in leaves.most_common(8)
        ]
        if total
        else [],
    }


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def profile(
    pids: dict[str, int],
    work: Callable[[], int],
    seconds: float,
    *,
    gil: bool = True,
    rate: int = 250,
    cpu_only: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run ``work`` (returns the calls it made) repeatedly for ``seconds`` while py-spy
    samples each process of ``pids`` (label -> pid). Returns, per label, the bucket
    shares, the hottest functions and CPU microseconds per call; plus the call count.

    ``gil``: count only samples of the thread holding the GIL (Python's own CPU time;
    right for ping-pong work, where py-spy cannot tell a thread that just woke from one
    that works). Without it, samples of every thread py-spy sees running count (right
    for bulk transfers, whose crypto and copies run with the GIL released). Labels in
    ``cpu_only`` (sshd, say) get CPU time only."""
    import psutil

    pids = dict(pids)
    spy = py_spy()
    directory = Path(tempfile.mkdtemp(prefix="skyward-bench-spy-"))
    recorders: dict[str, subprocess.Popen[bytes]] = {}
    if spy is not None:
        for label, pid in pids.items():
            if label in cpu_only:
                continue
            mode = ["--gil"] if gil else []
            recorders[label] = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--nonblocking",
                    *mode,
                    *("--pid", str(pid), "--rate", str(rate), "--format", "raw"),
                    *("--full-filenames", "-o", str(directory / f"{label}.txt")),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=(directory / f"{label}.log").open("wb"),
            )
        time.sleep(0.5)  # let py-spy attach before the window opens
    processes = {}
    for label, pid in list(pids.items()):
        try:
            processes[label] = psutil.Process(pid)
        except psutil.Error:  # gone already (an sshd of a closed session, say)
            pids.pop(label)
            recorder = recorders.pop(label, None)
            if recorder is not None:
                recorder.kill()
    before = {label: _cpu(p) for label, p in processes.items()}
    before = {label: v for label, v in before.items() if v is not None}
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        calls += work()
    wall = time.perf_counter() - started
    after = {label: _cpu(p) for label, p in processes.items()}
    gone = {label for label in pids if before.get(label) is None or after.get(label) is None}
    for recorder in recorders.values():
        recorder.send_signal(signal.SIGINT)
    result: dict[str, Any] = {
        "calls": calls,
        "wall_s": wall,
        "sides": {},
        "profiler": bool(spy),
        "gil": gil,
        "rate": rate,
    }
    merged: dict[str, float] = {}
    for label in pids:
        if label in gone:
            continue
        used = after[label] - before[label]  # type: ignore[operator]
        if label in cpu_only:  # e.g. several sshd processes: one row for all of them
            key = label.rstrip("0123456789")
            merged[key] = merged.get(key, 0.0) + used
            continue
        side: dict[str, Any] = {
            "cpu_us_per_call": used / max(calls, 1) * 1e6,
            "cpu_share_of_wall": used / wall,
        }
        recorder = recorders.get(label)
        if recorder is not None:
            try:
                recorder.wait(60)
            except subprocess.TimeoutExpired:
                recorder.kill()
            raw = directory / f"{label}.txt"
            if raw.exists():
                side.update(summarize(parse_raw(raw.read_text(errors="replace"))))
            else:
                side["error"] = (directory / f"{label}.log").read_text(errors="replace")[-300:]
        result["sides"][label] = side
    for key, used in merged.items():
        result["sides"][key] = {
            "cpu_us_per_call": used / max(calls, 1) * 1e6,
            "cpu_share_of_wall": used / wall,
        }
    for recorder in recorders.values():
        if recorder.poll() is None:
            recorder.kill()
    shutil.rmtree(directory, ignore_errors=True)
    return result


def _cpu(process: Any) -> float | None:
    """CPU seconds of a process (all its threads), ``None`` once it is gone."""
    try:
        times = process.cpu_times()
        return float(times.user + times.system)
    except Exception:
        return None
