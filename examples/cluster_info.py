"""Cluster information: where a function runs (node, worker, head address, accelerators).

Runs on this machine (sky.Local), no cloud account needed.
"""

import skyward as sky


@sky.compute
def where() -> str:
    info = sky.instance_info()
    role = "head" if info.is_head else "worker node"
    return (
        f"node {info.node}/{info.total_nodes} ({role}), worker {info.worker} of "
        f"{info.workers_per_node}, head at {info.head_addr}:{info.head_port}, "
        f"accelerator {sky.current_accelerator()}"
    )


def main() -> None:
    # concurrency=2: two workers per node; `@ pool` runs once on every worker.
    with sky.ComputePool(provider=sky.Local(), nodes=2, concurrency=2, display="quiet") as pool:
        for line in where() @ pool:
            print(line)
        print("pool id:", pool.pool_id)


if __name__ == "__main__":
    main()
