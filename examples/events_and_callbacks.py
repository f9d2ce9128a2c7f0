"""Events and callbacks: everything a pool reports, to your own function.

`on_event=` listens to one pool; `sky.use_callback` to every pool opened inside it.
Runs on this machine (sky.Local), no cloud account needed.
"""

from collections import Counter

import skyward as sky

seen: Counter[str] = Counter()
lines: list[str] = []


def count(event: sky.SkywardEvent) -> None:
    seen[type(event).__name__] += 1


def keep_output(event: sky.SkywardEvent) -> None:
    if isinstance(event, sky.LogLine):
        lines.append(f"node {event.node} said: {event.line.strip()}")
    elif isinstance(event, sky.CostFinal):
        lines.append(f"the pool cost ${event.total_cost:.4f} over {event.total_seconds:.1f}s")


@sky.compute
def shout(word: str) -> str:
    print(word.upper())  # a node's prints come back as LogLine events
    return word


def main() -> None:
    with sky.use_callback(keep_output):
        pool = sky.ComputePool(provider=sky.Local(), nodes=2, display="quiet", on_event=count)
        with pool:
            shout("hello") @ pool
    for line in sorted(lines):
        print(line)
    for name in ("InstanceProvisioned", "BootstrapCompleted", "LogLine", "CostFinal"):
        print(f"{name}: {seen[name]}")


if __name__ == "__main__":
    main()
