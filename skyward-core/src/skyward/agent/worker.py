"""A worker process: ``python -m skyward.agent.worker <fd>``, started by the agent.

It reads :class:`~skyward.messages.Task` frames from the socket it inherited as ``fd``,
runs them one at a time, and answers each with a :class:`~skyward.messages.Result`. It
shares the agent's stdout and stderr (so its output streams like the agent's own) and
dies with the agent.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys

from skyward import cluster, messages, wire
from skyward.agent.output import line_buffered
from skyward.agent.tasks import run_task

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    sys.stdout, sys.stderr = line_buffered(1), line_buffered(2)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the client's business
    sock = socket.socket(fileno=int(args[0]))
    reader, writer = wire.FrameReader(sock), wire.FrameWriter(sock)
    init = reader.read()
    if not isinstance(init, messages.WorkerInit):
        raise SystemExit(f"skyward worker: expected WorkerInit, got {type(init).__name__}")
    cluster.set_node_info(init.info)
    cluster.set_worker(init.info.worker)
    writer.send(messages.Heartbeat())  # ready
    while True:
        try:
            task = reader.read()
        except EOFError:
            return  # the agent closed our socket: we are done
        writer.send(run_task(task))


if __name__ == "__main__":
    main()
