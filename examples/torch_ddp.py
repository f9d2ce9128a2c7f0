"""Distributed PyTorch (DDP, gloo on CPU) on 2 local nodes x 2 workers: 4 ranks, one model.

Run: .venv/bin/python examples/torch_ddp.py
Every worker process is one rank; sky.DistributedSampler gives each rank an equal share of
the data, and DDP keeps the weights identical on every rank.
"""

from __future__ import annotations

import skyward as sky


@sky.integrations.torch(backend="gloo")
@sky.compute
def train(epochs: int) -> tuple[int, float, float]:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x = torch.randn(200, 8)
    y = x @ torch.arange(1.0, 9.0) + 0.5
    dataset = TensorDataset(x, y.unsqueeze(1))
    sampler = sky.DistributedSampler(dataset, shuffle=True)  # this rank's equal share
    loader = DataLoader(dataset, batch_size=16, sampler=sampler)
    model = DistributedDataParallel(torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = torch.tensor(0.0)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for features, target in loader:
            loss = torch.nn.functional.mse_loss(model(features), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    checksum = float(sum(p.detach().sum() for p in model.parameters()))
    return dist.get_rank(), float(loss), checksum


if __name__ == "__main__":
    with sky.ComputePool(provider=sky.Local(), nodes=2, concurrency=2) as pool:
        results = train(epochs=20) @ pool
    for rank, loss, checksum in results:
        print(f"rank {rank}: last loss {loss:.4f}, weight checksum {checksum:.6f}")
    print("identical weights on every rank:", len({round(c, 9) for _, _, c in results}) == 1)
