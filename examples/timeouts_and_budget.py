"""Cost and failure safety on one page: a call timeout, retries, the pool's own timeout and
max_cost. On sky.Local everything is free, so the budget is never spent here; on a cloud
the same max_cost closes the pool and raises sky.BudgetExceededError.

Runs on this machine (sky.Local), no cloud account needed.
"""

import time

import skyward as sky


@sky.compute(timeout=1)
def too_slow() -> None:
    time.sleep(30)


@sky.compute(retries=2, retry_on=(ConnectionError,))
def flaky(path: str) -> int:
    # Counts its attempts in a file: the retries run on the node, not here.
    with open(path, "a+") as f:
        f.write("x")
        f.seek(0)
        tries = len(f.read())
    if tries < 3:
        raise ConnectionError(f"attempt {tries} failed")
    return tries


def main() -> None:
    import tempfile

    with sky.ComputePool(provider=sky.Local(), timeout=300, max_cost=1.0, display="quiet") as pool:
        try:
            too_slow() >> pool
        except sky.TaskTimeoutError as error:
            print("timed out:", error)
        with tempfile.NamedTemporaryFile(suffix=".count") as counter:
            print("succeeded on attempt", flaky(counter.name) >> pool)


if __name__ == "__main__":
    main()
