"""Hello, Skyward: a 3-node pool on this machine, no cloud account needed.

Run it with `make example` (or `python examples/hello.py` in the project's venv).
"""

import skyward as sky


@sky.compute
def greet(name: str) -> str:
    info = sky.instance_info()
    return f"hello {name} from node {info.node} of {info.total_nodes}"


@sky.compute
def square(x: int) -> int:
    return x * x


@sky.compute
def partial_sum(numbers: list[int]) -> int:
    return sum(sky.shard(numbers))


@sky.pool(provider=sky.Local(), nodes=3)
def main() -> None:
    print(greet("world") >> sky)  # one worker
    for line in greet("everyone") @ sky:  # every node
        print(line)
    a, b = (square(3) & square(4)) >> sky  # in parallel
    print("3² + 4² =", a + b)
    squares = sky.gather(*(square(i) for i in range(10))) >> sky
    print("squares:", list(squares))
    total = sum(partial_sum(list(range(1_000))) @ sky)  # each node sums its shard
    print("sum of 0..999 =", total)


if __name__ == "__main__":
    main()
