"""``sky.shard()``: each worker takes its own slice of data that every worker received whole."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence, Sized
from typing import Any, TypeVar, overload

from skyward.cluster import instance_info
from skyward.errors import ConfigurationError

__all__ = ["DistributedSampler", "partition_indices", "shard"]

T = TypeVar("T")


def partition_indices(
    length: int, part: int, parts: int, *, shuffle: bool = False, seed: int | None = None
) -> list[int]:
    """Indices of part ``part`` of ``parts``: contiguous (or shuffled) and exact.

    Every index lands in exactly one part and part sizes differ by at most one. With
    ``shuffle`` every part must use the same ``seed`` so the parts still partition.
    """
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is outside 0..{parts - 1}")
    order = list(range(length))
    if shuffle:
        random.Random(seed).shuffle(order)
    base, extra = divmod(length, parts)
    start = part * base + min(part, extra)
    stop = start + base + (1 if part < extra else 0)
    return order[start:stop]


def _take(data: Any, indices: list[int]) -> Any:
    if isinstance(data, list):
        return [data[i] for i in indices]
    if isinstance(data, tuple):
        return tuple(data[i] for i in indices)
    if hasattr(data, "__array__") and hasattr(data, "shape"):
        return data[indices]  # numpy (and array-likes with fancy indexing)
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        return [data[i] for i in indices]
    raise ConfigurationError(
        "shard",
        f"cannot shard a {type(data).__name__}",
        "Pass lists, tuples or numpy arrays",
    )


def _default_seed(job_id: str) -> int:
    # Nodes must agree on the permutation without talking to each other: derive it
    # from the pool's id, which every node knows.
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big")


@overload
def shard(array: T, /, *, shuffle: bool = False, seed: int | None = None) -> T: ...
@overload
def shard(
    first: Any, second: Any, /, *arrays: Any, shuffle: bool = False, seed: int | None = None
) -> tuple[Any, ...]: ...
def shard(*arrays: Any, shuffle: bool = False, seed: int | None = None) -> Any:
    """This worker's part of each array (one array in, one out; several in, a tuple out).

    Parts follow the worker's rank (``node * workers_per_node + worker`` of
    ``total_nodes * workers_per_node``), so a call broadcast with ``@`` (once on every
    worker) covers the data exactly once. Several arrays are cut at the same indices, so
    ``x`` and ``y`` stay aligned.
    """
    if not arrays:
        raise ConfigurationError("shard", "nothing to shard", "Pass one or more arrays")
    for array in arrays:
        if not hasattr(array, "__len__") or isinstance(array, str | bytes):
            raise ConfigurationError(
                "shard",
                f"cannot shard a {type(array).__name__}",
                "Pass lists, tuples or numpy arrays",
            )
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ConfigurationError(
            "shard", f"arrays have different lengths {sorted(lengths)}", "Pass aligned arrays"
        )
    info = instance_info()
    if shuffle and seed is None:
        seed = _default_seed(info.job_id)
    indices = partition_indices(
        lengths.pop(),
        info.node * info.workers_per_node + info.worker,
        info.total_nodes * info.workers_per_node,
        shuffle=shuffle,
        seed=seed,
    )
    parts = tuple(_take(a, indices) for a in arrays)
    return parts[0] if len(parts) == 1 else parts


class DistributedSampler:
    """Indices of this worker's share of a dataset, for ``torch.utils.data.DataLoader``.

    Same semantics as ``torch.utils.data.DistributedSampler``, without needing torch: one
    replica per worker of every node (``rank = node * workers_per_node + worker``, as
    ``sky.integrations.torch`` numbers ranks), and **every rank gets the same number of
    indices** — the list is padded by wrapping around (or, with ``drop_last``, trimmed),
    because a rank with one batch more than the others would wait forever in DDP's
    all-reduce. Call :meth:`set_epoch` each epoch so shuffling differs between epochs (and
    agrees between ranks).
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        info = instance_info()
        if num_replicas is None:
            num_replicas = info.total_nodes * info.workers_per_node
        if rank is None:
            rank = info.node * info.workers_per_node + info.worker
        if num_replicas < 1:
            raise ConfigurationError(
                "num_replicas", f"{num_replicas} is not a positive count", "Use e.g. 2"
            )
        if not 0 <= rank < num_replicas:
            raise ConfigurationError(
                "rank", f"{rank} is outside 0..{num_replicas - 1}", "Leave rank unset"
            )
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        length = len(dataset)
        if drop_last and length % num_replicas:
            self.num_samples = length // num_replicas  # torch: ceil((length - n) / n)
        else:
            self.num_samples = -(-length // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Use a different (but rank-wide identical) shuffle for ``epoch``."""
        self.epoch = epoch

    def _indices(self) -> list[int]:
        order = list(range(len(self.dataset)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        if self.drop_last:
            order = order[: self.total_size]
        else:
            while order and len(order) < self.total_size:
                order += order[: self.total_size - len(order)]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return self.num_samples
