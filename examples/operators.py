"""The operators: `>>` one worker, `@` every node, `&` and `gather` in parallel,
`pool.submit` for a future and `pool.map` for a lazy stream of results.

Runs on this machine (sky.Local), no cloud account needed.
"""

import skyward as sky


@sky.compute
def square(x: int) -> int:
    return x * x


@sky.compute
def check(x: int) -> int:
    if x == 3:
        raise ValueError("3 is not welcome")
    return x


def main() -> None:
    with sky.ComputePool(provider=sky.Local(), nodes=2, display="quiet") as pool:
        print("one worker:", square(7) >> pool)
        print("every node:", square(2) @ pool)
        a, b = (square(3) & square(4)) >> pool
        print("in parallel:", a, b)
        print("gather:", sky.gather(*(square(i) for i in range(5))) >> pool)
        # As they complete (any order), and errors in place of results instead of raising.
        done = sorted(sky.gather(*(square(i) for i in range(5)), ordered=False) >> pool)
        print("gather, as completed:", done)
        mixed = sky.gather(*(check(i) for i in range(5)), return_exceptions=True) >> pool
        print(
            "gather, errors kept:",
            [type(r).__name__ if isinstance(r, Exception) else r for r in mixed],
        )
        future = pool.submit(square(9))
        print("submit:", future.result())
        print("map:", list(pool.map(square, range(6))))


if __name__ == "__main__":
    main()
