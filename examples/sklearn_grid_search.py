"""A scikit-learn grid search spread over 2 local nodes x 2 workers, checked against a
local run.

Run: .venv/bin/python examples/sklearn_grid_search.py
Inside the sklearn_backend block every `n_jobs=-1` in scikit-learn (here GridSearchCV's 24
fits) runs on the pool's workers; the result is exactly the local one.
"""

from __future__ import annotations

import time

from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import skyward as sky

X, y = make_classification(n_samples=300, n_features=10, random_state=0)
GRID = {"C": [0.1, 1.0, 10.0, 100.0], "gamma": ["scale", 0.01]}


def search(n_jobs: int) -> GridSearchCV:
    return GridSearchCV(SVC(), GRID, cv=3, n_jobs=n_jobs).fit(X, y)


if __name__ == "__main__":
    started = time.perf_counter()
    local = search(n_jobs=1)
    local_s = time.perf_counter() - started
    with (
        sky.ComputePool(provider=sky.Local(), nodes=2, concurrency=2) as pool,
        sky.integrations.sklearn_backend(pool),
    ):
        started = time.perf_counter()
        remote = search(n_jobs=-1)
        remote_s = time.perf_counter() - started
    print(f"best params {remote.best_params_}, score {remote.best_score_:.4f}")
    print(f"local {local_s:.2f} s, on the pool {remote_s:.2f} s")
    print(
        "same as local:",
        remote.best_params_ == local.best_params_
        and list(remote.cv_results_["mean_test_score"])
        == list(local.cv_results_["mean_test_score"]),
    )
