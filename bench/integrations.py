"""Integration benchmarks, ratios from one run on this machine.

Run: bench/.venv/bin/python bench/integrations.py [--tasks 10000] [--out FILE]
(`make bench-env` installs Ray, Dask, scikit-learn and torch's CPU build there; a backend whose
package is missing is reported as such, not skipped silently).

- joblib: N tiny tasks (`abs`) through loky (2 processes), Skyward's backend (Local pool of
  2 nodes), Ray's and Dask's joblib backends (2 workers each); wall time and tasks/s.
- GridSearchCV with 48 fits: local `n_jobs=2` vs Skyward's backend (first run, when the
  workers still import scikit-learn, and a second, warm run).
- torch DDP time to the first step: a 2-node Local pool (pool start, torch import, gloo
  process group, one DDP step) vs `torchrun --nnodes=1 --nproc-per-node=2` doing the same.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from joblib import Parallel, delayed, parallel_config

import skyward as sky

Row = tuple[str, float, str]


def _wall(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _tiny(tasks: int) -> Callable[[], Any]:
    def run() -> None:
        out = Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(tasks))
        assert out == list(range(tasks))

    return run


@contextmanager
def _ray() -> Iterator[None]:
    import ray
    from ray.util.joblib import register_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    register_ray()
    try:
        with parallel_config(backend="ray", n_jobs=2):
            yield
    finally:
        ray.shutdown()


@contextmanager
def _dask() -> Iterator[None]:
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster),
        parallel_config(backend="dask", n_jobs=2),
    ):
        yield


def joblib_rows(tasks: int, pool: sky.ComputePool) -> list[Row]:
    rows: list[Row] = []
    with parallel_config(backend="loky", n_jobs=2):
        _tiny(100)()  # start loky's workers outside the measurement
        loky = _wall(_tiny(tasks))
    rows.append((f"joblib {tasks:,} tiny tasks: loky, 2 processes", loky, "1.00x"))
    with sky.integrations.joblib_backend(pool) as backend:
        _tiny(100)()
        sent = backend.batches_sent
        skyward = _wall(_tiny(tasks))
        batches = backend.batches_sent - sent
    rows.append(
        (
            f"joblib {tasks:,} tiny tasks: Skyward backend, Local 2 nodes ({batches} batches)",
            skyward,
            f"{skyward / loky:.2f}x",
        )
    )
    for name, context in (("Ray", _ray), ("Dask", _dask)):
        try:
            with context():
                _tiny(100)()
                took = _wall(_tiny(tasks))
            rows.append(
                (
                    f"joblib {tasks:,} tiny tasks: {name} backend, 2 workers",
                    took,
                    f"{took / loky:.2f}x",
                )
            )
        except ImportError as error:
            rows.append((f"joblib: {name} backend", float("nan"), f"not installed ({error})"))
    return rows


def grid_rows(pool: sky.ComputePool) -> list[Row]:
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    x, y = make_classification(n_samples=2000, n_features=40, random_state=0)
    grid = {"C": [10.0**k for k in range(-4, 4)], "fit_intercept": [True, False]}

    def search() -> GridSearchCV:  # 16 candidates x 3 folds = 48 fits
        return GridSearchCV(LogisticRegression(max_iter=500), grid, cv=3, n_jobs=2).fit(x, y)

    with parallel_config(backend="loky"):
        search()
        local = _wall(search)
    rows: list[Row] = [("GridSearchCV 48 fits: local loky n_jobs=2", local, "1.00x")]
    with sky.integrations.sklearn_backend(pool):
        cold = _wall(search)
        warm = _wall(search)
    rows.append(
        ("GridSearchCV 48 fits: Skyward, Local 2 nodes, first run", cold, f"{cold / local:.2f}x")
    )
    rows.append(
        ("GridSearchCV 48 fits: Skyward, Local 2 nodes, warm", warm, f"{warm / local:.2f}x")
    )
    return rows


_TORCHRUN_SCRIPT = """
import time, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
dist.init_process_group("gloo")
model = DistributedDataParallel(torch.nn.Linear(4, 1))
model(torch.randn(8, 4)).sum().backward()
dist.barrier()
dist.destroy_process_group()
"""


@sky.integrations.torch(backend="gloo")
@sky.compute
def first_step() -> int:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(torch.nn.Linear(4, 1))
    model(torch.randn(8, 4)).sum().backward()
    dist.barrier()
    return dist.get_rank()


def torch_rows() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "step.py"
        script.write_text(_TORCHRUN_SCRIPT)
        torchrun = Path(sys.executable).with_name("torchrun")
        started = time.perf_counter()
        subprocess.run(
            [str(torchrun), "--nnodes=1", "--nproc-per-node=2", str(script)],
            check=True,
            capture_output=True,
        )
        baseline = time.perf_counter() - started
    started = time.perf_counter()
    with sky.ComputePool(provider=sky.Local(), nodes=2, display="quiet") as pool:
        opened = time.perf_counter() - started
        assert first_step() @ pool == (0, 1)
        total = time.perf_counter() - started
        again = _wall(lambda: first_step() @ pool)
    return [
        ("torch DDP first step: torchrun, 1 node x 2 processes", baseline, "1.00x"),
        (
            f"torch DDP first step: Skyward Local 2 nodes (pool start {opened:.1f} s)",
            total,
            f"{total / baseline:.2f}x",
        ),
        (
            "torch DDP: a second call on the same pool (group kept)",
            again,
            f"{again / baseline:.2f}x",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows: list[Row] = []
    with sky.ComputePool(provider=sky.Local(), nodes=2, display="quiet") as pool:
        rows += joblib_rows(args.tasks, pool)
        rows += grid_rows(pool)
    rows += torch_rows()
    lines = [
        f"Integrations, measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "",
        "| case | wall s | vs first row of its group |",
        "|---|---:|---:|",
        *(f"| {name} | {seconds:.2f} | {ratio} |" for name, seconds, ratio in rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
