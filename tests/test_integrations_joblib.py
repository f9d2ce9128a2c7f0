"""The joblib backend and the scikit-learn pools, on a real Local pool of 2 nodes x 2 workers.

Results must be exactly what the same code gives locally; tasks must spread over every
worker; the backend must batch tiny tasks, run joblib's callbacks off the connection's reader
thread, and keep the client's warning filters from breaking tasks on nodes.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
import types
import warnings
from collections.abc import Iterator
from typing import Any

import joblib
import numpy as np
import pytest
import sklearn
from joblib import Parallel, delayed
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_val_score
from sklearn.tree import DecisionTreeClassifier

import skyward as sky
from skyward_integrations._joblib_backend import SkywardBackend


def where(x: int) -> tuple[int, int, int, int, int]:
    info = sky.instance_info()
    return x * x, info.node, info.worker, os.getpid(), os.getppid()


def slow_square(x: int) -> int:
    time.sleep(0.05)
    return x * x


def fails_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError(f"bad item {x}")
    return x


def nested(x: int) -> tuple[list[int], str]:
    inner = Parallel(n_jobs=2)(delayed(abs)(-x - i) for i in range(3))
    return inner, type(joblib.parallel.get_active_backend()[0]).__name__


@pytest.fixture(scope="module")
def pool() -> Iterator[sky.ComputePool]:
    with sky.ComputePool(
        provider=sky.Local(), nodes=2, concurrency=2, display="quiet", timeout=600
    ) as opened:
        yield opened


@pytest.fixture
def backend(pool: sky.ComputePool) -> Iterator[SkywardBackend]:
    with sky.integrations.joblib_backend(pool) as made:
        yield made


def test_results_are_local_results_and_every_worker_takes_part(backend: SkywardBackend) -> None:
    results = Parallel(n_jobs=-1, batch_size=1)(delayed(where)(x) for x in range(40))
    assert [r[0] for r in results] == [x * x for x in range(40)]
    slots = {(node, worker) for _, node, worker, _, _ in results}
    assert slots == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert os.getpid() not in {pid for _, _, _, pid, _ in results}  # nothing ran here
    assert backend.batches_sent == 40


def test_n_jobs_follows_joblib_semantics(backend: SkywardBackend) -> None:
    assert backend.effective_n_jobs(-1) == 4
    assert backend.effective_n_jobs(None) == 4
    assert backend.effective_n_jobs(-2) == 3
    assert backend.effective_n_jobs(3) == 3
    # One job would make joblib run everything in the client: never report fewer than two.
    assert backend.effective_n_jobs(1) == 2
    assert backend.effective_n_jobs(-10) == 2
    with pytest.raises(ValueError, match="n_jobs == 0"):
        backend.effective_n_jobs(0)
    assert Parallel(n_jobs=1)(delayed(where)(1) for _ in range(2))[0][3] != os.getpid()


def test_exceptions_are_the_local_exceptions(backend: SkywardBackend) -> None:
    with pytest.raises(ValueError, match="bad item 7"):
        Parallel(n_jobs=-1)(delayed(fails_on_seven)(x) for x in range(20))
    # The backend stays usable after an error.
    assert Parallel(n_jobs=-1)(delayed(fails_on_seven)(x) for x in range(5)) == list(range(5))


def test_generators_ordered_and_unordered(backend: SkywardBackend) -> None:
    ordered = Parallel(n_jobs=-1, return_as="generator")(delayed(slow_square)(x) for x in range(12))
    assert isinstance(ordered, types.GeneratorType)
    assert list(ordered) == [x * x for x in range(12)]
    unordered = Parallel(n_jobs=-1, return_as="generator_unordered")(
        delayed(slow_square)(x) for x in range(12)
    )
    assert sorted(unordered) == [x * x for x in range(12)]


def test_nested_parallel_runs_sequentially_on_the_worker(backend: SkywardBackend) -> None:
    results = Parallel(n_jobs=-1)(delayed(nested)(x) for x in range(4))
    assert [r[0] for r in results] == [[x, x + 1, x + 2] for x in range(4)]
    assert {r[1] for r in results} == {"SequentialBackend"}


def test_timeout_is_enforced(backend: SkywardBackend) -> None:
    # joblib raises multiprocessing's TimeoutError, as it does with its local backends.
    with pytest.raises(multiprocessing.TimeoutError):
        Parallel(n_jobs=-1, timeout=0.3)(delayed(time.sleep)(1.5) for _ in range(4))


def test_tiny_tasks_are_batched(backend: SkywardBackend) -> None:
    results = Parallel(n_jobs=-1)(delayed(abs)(-x) for x in range(3000))
    assert results == list(range(3000))
    assert backend.batches_sent < 300, backend.batches_sent


class _ThreadRecordingBackend(SkywardBackend):
    threads: set[str]

    def retrieve_result_callback(self, out: Any) -> Any:
        self.threads.add(threading.current_thread().name)
        return super().retrieve_result_callback(out)


def test_callbacks_run_on_the_backends_own_thread(pool: sky.ComputePool) -> None:
    backend = _ThreadRecordingBackend(pool)
    backend.threads = set()
    with joblib.parallel_config(backend=backend):
        assert Parallel(n_jobs=-1)(delayed(abs)(-x) for x in range(30)) == list(range(30))
    assert backend.threads
    assert all(name.startswith("skyward-joblib") for name in backend.threads), backend.threads


def _data() -> tuple[Any, Any]:
    return make_classification(n_samples=120, n_features=6, random_state=0)


def test_grid_search_gives_the_local_result(backend: SkywardBackend) -> None:
    x, y = _data()
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}
    with joblib.parallel_config(backend="sequential"):
        local = GridSearchCV(LogisticRegression(max_iter=200), grid, cv=3, n_jobs=1).fit(x, y)
    sent_before = backend.batches_sent
    remote = GridSearchCV(LogisticRegression(max_iter=200), grid, cv=3, n_jobs=-1).fit(x, y)
    assert backend.batches_sent > sent_before  # the fits really went to the pool
    assert remote.best_params_ == local.best_params_
    np.testing.assert_array_equal(
        remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"]
    )
    np.testing.assert_array_equal(remote.best_estimator_.coef_, local.best_estimator_.coef_)


def test_cross_val_score_and_randomized_search_give_the_local_result(
    backend: SkywardBackend,
) -> None:
    x, y = _data()
    tree = DecisionTreeClassifier(random_state=0)
    with joblib.parallel_config(backend="sequential"):
        local_scores = cross_val_score(tree, x, y, cv=4, n_jobs=1)
        local_search = RandomizedSearchCV(
            tree, {"max_depth": list(range(1, 9))}, n_iter=5, cv=3, random_state=1, n_jobs=1
        ).fit(x, y)
    np.testing.assert_array_equal(cross_val_score(tree, x, y, cv=4, n_jobs=-1), local_scores)
    remote_search = RandomizedSearchCV(
        tree, {"max_depth": list(range(1, 9))}, n_iter=5, cv=3, random_state=1, n_jobs=-1
    ).fit(x, y)
    assert remote_search.best_params_ == local_search.best_params_
    np.testing.assert_array_equal(
        remote_search.cv_results_["mean_test_score"], local_search.cv_results_["mean_test_score"]
    )


def test_client_only_warning_filters_do_not_break_tasks(backend: SkywardBackend) -> None:
    # A warning category from a module that exists only in this client (like a cloud SDK's).
    module = types.ModuleType("client_only_sdk")
    category = type("ClientOnlyWarning", (UserWarning,), {"__module__": "client_only_sdk"})
    module.ClientOnlyWarning = category  # type: ignore[attr-defined]
    sys.modules["client_only_sdk"] = module
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=category)
            before = list(warnings.filters)
            x, y = _data()
            scores = cross_val_score(DecisionTreeClassifier(random_state=0), x, y, cv=3, n_jobs=-1)
            assert len(scores) == 3
            assert warnings.filters == before  # the user's filters are left as they were
    finally:
        del sys.modules["client_only_sdk"]


def test_pools_pin_the_clients_versions_into_the_image() -> None:
    pool = sky.integrations.ScikitLearnPool(provider=sky.Local(), display="quiet")
    assert f"scikit-learn=={sklearn.__version__}" in pool.spec.image.pip
    assert f"joblib=={joblib.__version__}" in pool.spec.image.pip
    pinned = sky.integrations.JoblibPool(
        provider=sky.Local(), joblib_version="1.5.0", image=sky.Image(pip=["numpy"])
    )
    assert pinned.spec.image.pip == ("numpy", "joblib==1.5.0")
    kept = sky.integrations.JoblibPool(provider=sky.Local(), image=sky.Image(pip=["joblib"]))
    assert kept.spec.image.pip == ("joblib",)
    with pytest.raises(sky.ConfigurationError, match="joblib_version"):
        sky.integrations.JoblibPool(
            provider=sky.Local(), joblib_version="1.5.0", image=sky.Image(pip=["joblib>=1"])
        )


@pytest.mark.slow
def test_scikit_learn_pool_end_to_end_on_nodes_with_only_their_image() -> None:
    # The nodes get a fresh environment with scikit-learn pinned to the client's version and
    # no skyward-integrations: the backend must not need it there.
    x, y = _data()
    local = cross_val_score(LogisticRegression(max_iter=200), x, y, cv=3, n_jobs=1)
    with sky.integrations.ScikitLearnPool(
        provider=sky.Local(), nodes=2, display="quiet", timeout=600
    ) as pool:
        assert isinstance(joblib.parallel.get_active_backend()[0], SkywardBackend)
        remote = cross_val_score(LogisticRegression(max_iter=200), x, y, cv=3, n_jobs=-1)
        assert pool.is_active
    np.testing.assert_array_equal(remote, local)
    assert not isinstance(joblib.parallel.get_active_backend()[0], SkywardBackend)


def column_sum(x: np.ndarray, column: int) -> float:
    return float(x[:, column].sum())


def _sent(pool: sky.ComputePool) -> list[int]:
    return [c.bytes_sent for c in pool._cluster.clients]  # type: ignore[union-attr]


def test_large_shared_arguments_cross_once_per_node(
    pool: sky.ComputePool, backend: SkywardBackend
) -> None:
    x = np.random.default_rng(0).normal(size=(80_000, 16))  # 10 MB, in every task
    before, batches = _sent(pool), backend.batches_sent
    results = Parallel(n_jobs=-1, batch_size=1)(delayed(column_sum)(x, c) for c in range(16))
    sent = [a - b for a, b in zip(_sent(pool), before, strict=True)]
    assert results == [column_sum(x, c) for c in range(16)]
    assert backend.batches_sent - batches == 16  # 8 batches a node, one copy of x each
    assert all(x.nbytes <= node < x.nbytes + 300_000 for node in sent), sent

    # GridSearchCV hands the same X and y to every fit: they too cross once per node.
    big_x, big_y = make_classification(n_samples=40_000, n_features=30, random_state=0)
    search = GridSearchCV(LogisticRegression(max_iter=200), {"C": [0.01, 0.1, 1.0]}, cv=3)
    local = GridSearchCV(LogisticRegression(max_iter=200), {"C": [0.01, 0.1, 1.0]}, cv=3)
    with joblib.parallel_config(backend="sequential"):
        local.fit(big_x, big_y)
    before = _sent(pool)
    # y is 320 kB: below joblib's max_nbytes ("1M") it would go with every batch.
    with joblib.parallel_config(max_nbytes="100K"):
        search.set_params(n_jobs=-1).fit(big_x, big_y)
    sent = [a - b for a, b in zip(_sent(pool), before, strict=True)]
    assert search.best_params_ == local.best_params_
    assert list(search.cv_results_["mean_test_score"]) == list(local.cv_results_["mean_test_score"])
    # Each fit's own train/test indices (about 320 kB a fit, 9 fits) are sent for it;
    # a second copy of X would be 9.6 MB more.
    size = big_x.nbytes + big_y.nbytes
    indices = 9 * big_y.nbytes
    assert all(size <= node < size + indices + 300_000 for node in sent), (sent, size)


def refs_on_node(chunk: np.ndarray | None = None) -> int:
    from skyward.refs import stored

    return len([r for r in stored() if not r.startswith("fn-")])  # not the functions


node_refs = sky.compute(refs_on_node)


def test_arguments_of_one_task_leave_the_nodes_when_it_is_done(
    pool: sky.ComputePool, backend: SkywardBackend
) -> None:
    # A stream of large chunks, each used by one task: they must not pile up on the nodes.
    chunks = [np.full(20_000, float(i)) for i in range(40)]  # 160 kB each
    counts = Parallel(n_jobs=-1, batch_size=1, max_nbytes="100K")(
        delayed(refs_on_node)(c) for c in chunks
    )
    # Each node runs 20 of them: a count near 20 would mean none left before the call ended.
    assert max(counts) <= 12, counts
    deadline = time.monotonic() + 10
    while any(node_refs() @ pool) and time.monotonic() < deadline:
        time.sleep(0.1)  # releases are messages: let them land
    assert not any(node_refs() @ pool)


def test_max_nbytes_none_sends_everything_with_its_batch(
    pool: sky.ComputePool, backend: SkywardBackend
) -> None:
    x = np.ones((1000, 200))  # 1.6 MB
    before = _sent(pool)
    Parallel(n_jobs=-1, batch_size=1, max_nbytes=None)(delayed(column_sum)(x, c) for c in range(8))
    sent = sum(a - b for a, b in zip(_sent(pool), before, strict=True))
    assert sent >= 8 * x.nbytes  # joblib's "no memory mapping": a copy in every batch
