"""The distributed-training decorators across the real SSH test hosts.

Two hosts (127.0.0.11 and .12, each its own unix user with its own sshd), so every rank but
node 0's reaches ``MASTER_ADDR`` at another address. The hosts build their environment from
the pool's image like any node: torch from the local CPU wheel; JAX, Keras, transformers and
scikit-learn at the client's versions (tests/framework_hosts.py). One pool runs, in order,
torch gloo DDP, a Hugging Face Trainer on the same process group, a Keras DataParallel fit,
JAX collectives on the JAX that Keras set up, and a ``GridSearchCV`` through the joblib
backend.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

import skyward as sky
from tests.framework_hosts import framework_hosts, framework_image
from tests.ssh_hosts import ClientKey, SSHTestHost
from tests.test_integrations_frameworks import hf_train, jax_collectives, keras_fit
from tests.test_integrations_torch import _check_world, train
from tests.tf_mwms_check import mwms


def _provider(hosts: list[SSHTestHost], key: ClientKey, known_hosts: Path) -> sky.SSH:
    return sky.SSH(
        hosts=[
            sky.SSHHost(h.address, user=h.user, port=h.port, identity_file=str(key.private_path))
            for h in hosts
        ],
        known_hosts=str(known_hosts),
    )


@pytest.mark.slow
# The hosts' lock may be held by another session for minutes, and a cold uv cache (a fresh
# machine) downloads the frameworks once.
@pytest.mark.timeout(900)
def test_frameworks_across_ssh_hosts(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    hosts = ssh_hosts(2)
    provider = _provider(hosts, ssh_client_key, ssh_known_hosts)
    image = framework_image(
        "torch",
        "jax",
        "keras",
        "transformers",
        "sklearn",
        # Every collective stays on loopback, whatever the machine's name resolves to.
        env={"JAX_PLATFORMS": "cpu", "GLOO_SOCKET_IFNAME": "lo"},
    )
    timings: dict[str, float] = {}
    with framework_hosts(hosts):
        started = time.monotonic()
        with sky.ComputePool(
            provider=provider, nodes=2, concurrency=1, image=image, display="quiet", timeout=900
        ) as pool:
            timings["pool"] = time.monotonic() - started
            results: dict[str, Any] = {}
            for name, pending in (
                ("torch", train()),
                # Relative: each worker writes under its own directory on its host.
                ("transformers", hf_train("hf-output")),
                ("keras", keras_fit()),
                ("jax", jax_collectives()),
            ):
                mark = time.monotonic()
                results[name] = pending @ pool
                timings[name] = time.monotonic() - mark
            # scikit-learn's fits on the hosts' workers, through the joblib backend.
            x, y = make_classification(n_samples=2_000, n_features=20, random_state=0)
            mark = time.monotonic()
            with sky.integrations.sklearn_backend(pool) as backend:
                search = GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=3, n_jobs=-1)
                search.fit(x, y)
            timings["sklearn"] = time.monotonic() - mark
    print(f"timings: {timings}")

    ddp = results["torch"]
    _check_world(ddp, nodes=2, workers=1)
    assert {r["env"]["MASTER_ADDR"] for r in ddp} == {hosts[0].address}

    hf = results["transformers"]
    assert {r["world"] for r in hf} == {2}
    assert all("DISTRIBUTED" in r["mode"] for r in hf)
    assert {r["steps"] for r in hf} == {3}
    assert hf[1]["checksum"] == pytest.approx(hf[0]["checksum"], rel=1e-12)

    keras = results["keras"]
    assert {r["backend"] for r in keras} == {"jax"}
    assert {r["distribution"] for r in keras} == {"DataParallel"}
    assert keras[0]["weights"] == keras[1]["weights"]

    local = GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=3).fit(x, y)
    assert backend.batches_sent >= 2
    assert search.best_params_ == local.best_params_
    assert list(search.cv_results_["mean_test_score"]) == list(local.cv_results_["mean_test_score"])

    jax = results["jax"]
    assert [r["index"] for r in jax] == [0, 1]
    assert {r["count"] for r in jax} == {2}
    assert all(r["allgather"] == [0.0, 10.0] for r in jax)
    assert {r["sum"] for r in jax} == {3.0 * (1 + 2)}
    assert all(r["psum"] == [3.0, 3.0, 3.0] for r in jax)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tensorflow_multi_worker_mirrored_strategy_across_ssh_hosts(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    # TensorFlow only on the hosts (the client never imports it); tf-keras for fit, as
    # Keras 3's fit under the strategy is broken upstream (keras-team/keras#20585).
    hosts = ssh_hosts(2)
    image = framework_image(
        "tensorflow", env={"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    )
    with (
        framework_hosts(hosts),
        sky.ComputePool(
            provider=_provider(hosts, ssh_client_key, ssh_known_hosts),
            nodes=2,
            concurrency=1,
            image=image,
            display="quiet",
            timeout=900,
        ) as pool,
    ):
        workers = mwms() @ pool
    assert [w["index"] for w in workers] == [0, 1]
    assert {w["replicas"] for w in workers} == {2}
    assert {w["allreduce"] for w in workers} == {3.0}
    assert workers[0]["weights"] == workers[1]["weights"]
