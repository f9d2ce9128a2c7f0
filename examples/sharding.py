"""Sharding: every node takes its own part of the data, so `@ pool` covers it once.

Runs on this machine (sky.Local), no cloud account needed.
"""

import skyward as sky


@sky.compute
def partial_sum(numbers: list[int]) -> tuple[int, int, int]:
    info = sky.instance_info()
    mine = sky.shard(numbers)  # this node's slice: node i of total_nodes
    return info.node, len(mine), sum(mine)


@sky.compute
def aligned(xs: list[int], ys: list[str]) -> bool:
    # Several arrays are cut at the same indices, so pairs stay together, even shuffled.
    x_part, y_part = sky.shard(xs, ys, shuffle=True, seed=0)
    return all(str(x) == y for x, y in zip(x_part, y_part, strict=True))


def main() -> None:
    numbers = list(range(1_000))
    with sky.ComputePool(provider=sky.Local(), nodes=3, display="quiet") as pool:
        parts = partial_sum(numbers) @ pool
        for node, count, subtotal in parts:
            print(f"node {node}: {count} numbers, sum {subtotal}")
        print("total:", sum(subtotal for _, _, subtotal in parts), "expected:", sum(numbers))
        xs = list(range(100))
        print("shards aligned:", all(aligned(xs, [str(x) for x in xs]) @ pool))
    # Outside a pool the same code sees a one-node cluster: the whole list.
    print("locally:", partial_sum.local(numbers))


if __name__ == "__main__":
    main()
