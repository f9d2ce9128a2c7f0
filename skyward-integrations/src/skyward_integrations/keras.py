"""``@sky.integrations.keras``: Keras 3 on a chosen backend, distributed over every worker.

``KERAS_BACKEND`` is read once, when keras is first imported; this sets it before that and
refuses (clearly) when the user's code imported keras with another backend first.

- ``"jax"``: ``keras.distribution.initialize`` (``jax.distributed`` with node 0's JAX port,
  plus a seed agreed by every process) and, with more than one worker, a ``DataParallel``
  distribution over every device: ``model.fit`` on each worker's share of the data trains
  one model.
- ``"torch"``: torch.distributed as :func:`skyward_integrations.torch.torch` sets it up;
  wrap the model in DDP yourself (Keras has no distribution for torch).
- ``"tensorflow"``: ``TF_CONFIG`` as :func:`skyward_integrations.tensorflow.tensorflow`
  sets it; build ``tf.distribute.MultiWorkerMirroredStrategy`` yourself (Keras 3's ``fit``
  under it is broken upstream: keras-team/keras#20585).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from attrs import field, frozen

from skyward.cluster import InstanceInfo
from skyward.errors import ConfigurationError
from skyward_integrations._distributed import (
    DEFAULT_TIMEOUT,
    check_timeout,
    decorate,
    port_for,
    ranks,
)
from skyward_integrations.jax import _backends_initialised
from skyward_integrations.tensorflow import TensorFlowSetup, new_secret
from skyward_integrations.torch import TorchSetup

__all__ = ["KerasSetup", "keras"]

BACKENDS = ("jax", "tensorflow", "torch")


@frozen
class KerasSetup:
    backend: str = "jax"
    timeout: float = DEFAULT_TIMEOUT
    name: str = "keras"
    secret: bytes = field(factory=new_secret, repr=False)
    """TensorFlow's rendezvous secret (made here, on the client: every worker shares it)."""

    def __call__(self, info: InstanceInfo) -> None:
        self._select_backend(info)
        if self.backend == "torch":
            TorchSetup(timeout=self.timeout)(info)
        elif self.backend == "tensorflow":
            TensorFlowSetup(timeout=self.timeout, secret=self.secret)(info)
        else:
            self._jax(info)

    def _select_backend(self, info: InstanceInfo) -> None:
        if "keras" in sys.modules:
            import keras as _keras

            current = _keras.backend.backend()
            if current != self.backend:
                raise ConfigurationError(
                    "backend",
                    f"keras was already imported with the {current!r} backend on node "
                    f"{info.node} worker {info.worker}, and a backend is chosen only at import",
                    f"Import keras only inside the decorated function, or use "
                    f'keras(backend="{current}")',
                )
        os.environ["KERAS_BACKEND"] = self.backend

    def _jax(self, info: InstanceInfo) -> None:
        me = ranks(info)
        if not info.accelerators:
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
        if _backends_initialised():
            raise ConfigurationError(
                "keras",
                f"JAX already ran an operation in this worker (node {info.node}, worker "
                f"{info.worker}); Keras's distribution must be set up before any",
                "Import keras and jax only inside the decorated function",
            )
        import jax as _jax

        if os.environ.get("JAX_PLATFORMS") == "cpu":
            _jax.config.update("jax_cpu_collectives_implementation", "gloo")  # type: ignore[no-untyped-call]
        import keras as _keras

        if me.world_size > 1 and not _jax.distributed.is_initialized():
            _keras.distribution.initialize(
                job_addresses=f"{info.head_addr}:{port_for(info, 'jax')}",
                num_processes=me.world_size,
                process_id=me.rank,
            )
        if me.world_size > 1:
            _keras.distribution.set_distribution(
                _keras.distribution.DataParallel(
                    devices=_keras.distribution.list_devices(), auto_shard_dataset=False
                )
            )


def keras(fn: Any = None, /, *, backend: str = "jax", timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Choose Keras's backend and set up its distribution on every worker.

    :param backend: ``"jax"`` (default; data parallel over every worker), ``"torch"`` or
        ``"tensorflow"``.
    :param timeout: seconds every worker waits for the others (torch and TensorFlow).
    """
    if backend not in BACKENDS:
        raise ConfigurationError(
            "backend", f"{backend!r} is not a Keras backend", 'Use "jax", "tensorflow" or "torch"'
        )
    setup = KerasSetup(backend=backend, timeout=check_timeout(timeout))
    if fn is not None:
        return decorate(fn, setup)
    return lambda target: decorate(target, setup)
