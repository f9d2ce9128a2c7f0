"""A driver process: one tool, kept warm, answering the orchestrator's operations.

``python -m bench.driver FD``: FD is this end of a socket pair; messages are
``(op, kwargs)`` and answers ``("ok", value)`` or ``("error", traceback)``. The first
operation is ``setup`` (with ``kind``, see ``bench.tools.KINDS``), the last ``exit``.
"""

from __future__ import annotations

import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

from bench.tools import KINDS, Tool


def main(argv: list[str]) -> None:
    conn = Connection(int(argv[0]))
    tool: Tool | None = None
    while True:
        try:
            op, kwargs = conn.recv()
        except EOFError:
            op, kwargs = "exit", {}
        try:
            value: Any = None
            if op == "setup":
                tool = KINDS[kwargs.pop("kind")]()
                tool.setup(**kwargs)
            elif op == "exit":
                if tool is not None:
                    tool.close()
                    tool = None
            else:
                assert tool is not None, "setup first"
                value = getattr(tool, op)(**kwargs)
            reply: tuple[str, Any] = ("ok", value)
        except BaseException:
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            break
        if op == "exit":
            break
    conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.stdout.flush()
    # Ray/Dask may leave non-daemon threads behind; the tool is closed, so leave now.
    import os

    os._exit(0)
