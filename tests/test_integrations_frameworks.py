"""@sky.integrations.jax, .keras, .transformers and .tensorflow on real Local pools.

JAX psum and all-gather across worker processes; Keras DataParallel fit leaving identical
weights; a Hugging Face Trainer (tiny model built from a config, nothing downloaded) taking a
few steps with world size 2; TF_CONFIG listing every worker (TensorFlow itself is tested in
its own environment).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest

import skyward as sky
from skyward_integrations._distributed import PORTS


@sky.integrations.jax(timeout=60)
@sky.compute
def jax_collectives() -> dict[str, Any]:
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    index = jax.process_index()
    gathered = multihost_utils.process_allgather(jax.numpy.array([index * 10.0]))
    mesh = jax.make_mesh((jax.device_count(),), ("d",))
    spec = jax.sharding.PartitionSpec("d")
    local = np.full((1, 3), index + 1.0, dtype=np.float32)
    global_array = multihost_utils.host_local_array_to_global_array(local, mesh, spec)

    @jax.jit
    def total(x: Any) -> Any:
        return x.sum()

    psum = jax.shard_map(lambda x: jax.lax.psum(x, "d"), mesh=mesh, in_specs=spec, out_specs=spec)(
        global_array
    )
    return {
        "index": index,
        "count": jax.process_count(),
        "devices": jax.device_count(),
        "allgather": [float(v) for v in np.asarray(gathered).ravel()],
        "sum": float(total(global_array)),
        "psum": [
            float(v)
            for v in np.asarray(multihost_utils.process_allgather(psum, tiled=True)).ravel()[:3]
        ],
    }


def test_jax_collectives_across_worker_processes(
    local_pool_factory: Callable[..., sky.ComputePool],
) -> None:
    with local_pool_factory(nodes=2, concurrency=2, timeout=600) as pool:
        results = jax_collectives() @ pool
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert {r["count"] for r in results} == {4}
    assert {r["devices"] for r in results} == {4}
    assert all(r["allgather"] == [0.0, 10.0, 20.0, 30.0] for r in results)
    assert {r["sum"] for r in results} == {3.0 * (1 + 2 + 3 + 4)}
    assert all(r["psum"] == [10.0, 10.0, 10.0] for r in results)


@sky.compute
def head_port() -> int:
    return sky.instance_info().head_port


def test_jax_coordinator_port_cannot_be_taken_before_jax_binds_it(
    local_pool_factory: Callable[..., sky.ComputePool],
) -> None:
    # CI once saw "Failed to start RPC server" on worker 0: the coordinator's port, free when
    # the pool picked it, had gone to another process by the time JAX bound it. Here that
    # other process comes first, every time, and takes the port if it can.
    with local_pool_factory(nodes=2, timeout=600) as pool:
        port = (head_port() >> pool) + PORTS["jax"]
        with socket.socket() as stranger:
            try:
                stranger.bind(("127.0.0.1", port))
                stranger.listen()
                taken = True
            except OSError:
                taken = False
            results = jax_collectives() @ pool
    assert not taken
    assert [r["index"] for r in results] == [0, 1]
    assert all(r["allgather"] == [0.0, 10.0] for r in results)


@sky.integrations.keras(backend="jax", timeout=60)
@sky.compute
def keras_fit() -> dict[str, Any]:
    import keras
    import numpy as np

    info = sky.instance_info()
    rng = np.random.default_rng(info.node * 2 + info.worker)  # a different shard per worker
    x = rng.normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    weights = [w.tolist() for w in model.get_weights()]
    return {
        "backend": keras.backend.backend(),
        "distribution": type(keras.distribution.distribution()).__name__,
        "weights": weights,
        "loss": history.history["loss"][-1],
    }


def test_keras_data_parallel_fit_gives_identical_weights(
    local_pool_factory: Callable[..., sky.ComputePool],
) -> None:
    with local_pool_factory(nodes=2, concurrency=2, timeout=600) as pool:
        results = keras_fit() @ pool
    assert {r["backend"] for r in results} == {"jax"}
    assert {r["distribution"] for r in results} == {"DataParallel"}
    assert all(r["weights"] == results[0]["weights"] for r in results)


@sky.integrations.keras(backend="torch", timeout=60)
@sky.compute
def keras_on_torch() -> tuple[str, int, int]:
    import keras
    import torch.distributed as dist

    return keras.backend.backend(), dist.get_rank(), dist.get_world_size()


def test_keras_on_torch_sets_up_torch_distributed(
    local_pool_factory: Callable[..., sky.ComputePool],
) -> None:
    with local_pool_factory(nodes=2, timeout=600) as pool:
        assert keras_on_torch() @ pool == (("torch", 0, 2), ("torch", 1, 2))


@sky.integrations.transformers(backend="gloo", timeout=60)
@sky.compute
def hf_train(output_dir: str) -> dict[str, Any]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (32, 8), generator=generator)
    data = [
        {
            "input_ids": ids[i],
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": torch.tensor(int(ids[i, 0]) % 2),
        }
        for i in range(32)
    ]
    args = TrainingArguments(
        output_dir=os.path.join(
            output_dir, f"{sky.instance_info().node}-{sky.instance_info().worker}"
        ),
        per_device_train_batch_size=4,
        max_steps=3,
        use_cpu=True,
        ddp_backend="gloo",
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    return {
        "mode": str(args.parallel_mode),
        "world": args.world_size,
        "steps": trainer.state.global_step,
        "checksum": checksum,
    }


def test_hf_trainer_runs_distributed(
    local_pool_factory: Callable[..., sky.ComputePool], tmp_path: Any
) -> None:
    with local_pool_factory(nodes=2, concurrency=2, timeout=600) as pool:
        results = hf_train(str(tmp_path)) @ pool
    assert {r["world"] for r in results} == {4}
    assert all("DISTRIBUTED" in r["mode"] for r in results)
    assert {r["steps"] for r in results} == {3}
    assert all(r["checksum"] == pytest.approx(results[0]["checksum"], rel=1e-12) for r in results)


@sky.integrations.tensorflow(timeout=60)
@sky.compute
def tf_config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(os.environ["TF_CONFIG"])
    return config


def test_tf_config_lists_every_worker(local_pool_factory: Callable[..., sky.ComputePool]) -> None:
    with local_pool_factory(nodes=2, concurrency=2, timeout=600) as pool:
        results = tf_config() @ pool
        again = tf_config() @ pool  # set up once per process: the same list
    workers = results[0]["cluster"]["worker"]
    assert len(workers) == 4
    assert len(set(workers)) == 4  # a port per worker
    assert all(w.startswith("127.0.0.1:") for w in workers)
    assert [r["task"] for r in results] == [{"type": "worker", "index": i} for i in range(4)]
    assert all(r["cluster"]["worker"] == workers for r in results)
    assert again == results


def test_bad_arguments_are_configuration_errors() -> None:
    with pytest.raises(sky.ConfigurationError, match="backend"):
        sky.integrations.keras(backend="mxnet")
    with pytest.raises(sky.ConfigurationError, match="timeout"):
        sky.integrations.jax(timeout=0)
    with pytest.raises(TypeError, match="decorates a function"):
        sky.integrations.torch()(42)


@sky.compute
def use_keras_and_jax_early() -> str:
    os.environ["KERAS_BACKEND"] = "torch"
    import jax.numpy
    import keras

    float(jax.numpy.ones(2).sum())  # JAX has run: its backends are initialised
    return str(keras.backend.backend())


@sky.integrations.keras(backend="jax", timeout=30)
@sky.compute
def keras_late() -> None: ...


@sky.integrations.jax(timeout=30)
@sky.compute
def jax_late() -> None: ...


def test_keras_and_jax_imported_too_early_are_clear_errors(
    local_pool_factory: Callable[..., sky.ComputePool],
) -> None:
    with local_pool_factory(nodes=1, concurrency=1, timeout=600) as pool:
        assert use_keras_and_jax_early() >> pool == "torch"
        with pytest.raises(sky.ConfigurationError, match="already imported with the 'torch'"):
            keras_late() >> pool
        with pytest.raises(sky.ConfigurationError, match="JAX already ran an operation"):
            jax_late() >> pool
