"""Run by tests/test_integrations_tensorflow.py with the TensorFlow environment's Python
(tests/tf_env.py): MultiWorkerMirroredStrategy across a 2-node Local pool, set up by
@sky.integrations.tensorflow. Prints one JSON line with what every worker saw."""

from __future__ import annotations

import json
import sys
from typing import Any

import skyward as sky


@sky.integrations.tensorflow(timeout=120)
@sky.compute
def mwms() -> dict[str, Any]:
    import numpy as np
    import tensorflow as tf
    import tf_keras

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    index = json.loads(__import__("os").environ["TF_CONFIG"])["task"]["index"]

    def step() -> Any:
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.constant(float(index + 1)))

    total = strategy.experimental_local_results(strategy.run(step))[0]
    with strategy.scope():
        tf_keras.utils.set_random_seed(0)
        model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(index)
    x = rng.normal(size=(32, 4)).astype("float32")
    model.fit(x, x.sum(axis=1, keepdims=True), batch_size=8, epochs=1, verbose=0)
    return {
        "index": index,
        "replicas": strategy.num_replicas_in_sync,
        "allreduce": float(total),
        "weights": [w.tolist() for w in model.get_weights()],
    }


if __name__ == "__main__":
    env = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with sky.ComputePool(provider=sky.Local(), nodes=2, env=env, display="quiet") as pool:
        results = mwms() @ pool
    json.dump(list(results), sys.stdout)
    print()
