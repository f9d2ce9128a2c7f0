"""The client program of the fault matrix's signal cells (Ctrl-C, SIGTERM, SIGKILL).

``python -m tests.fault_client SPEC`` (SPEC: JSON from :meth:`tests.fault_matrix.Client.start`)
builds the target's provider, opens a pool, prints ``{"pool": id}``, runs one call, then
starts a 600 s call and waits: the test delivers the signal while that call runs.
"""

from __future__ import annotations

import json
import signal
import sys

import skyward as sky
from tests.fault_matrix import record, target_named


def main(spec_text: str) -> None:
    # Python leaves SIGINT ignored when it starts ignored (a test run started in the
    # background by a non-interactive shell): a user's program at a terminal has Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    spec = json.loads(spec_text)
    provider = target_named(spec["target"]).client_provider(spec["args"])
    ledger = spec["ledger"]
    with sky.ComputePool(
        provider=provider, nodes=spec["nodes"], display="quiet", **spec["options"]
    ) as pool:
        print(json.dumps({"pool": pool.pool_id}), flush=True)
        record(ledger, "first") >> pool
        record(ledger, "in-flight", 600) >> pool
    print("left the pool", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
