"""Entry point of skyward-integrations (group ``skyward``, name ``integrations``).

Registers ``sky.integrations.torch``, ``.jax``, ``.keras``, ``.tensorflow``,
``.transformers``, ``.JoblibPool``, ``.ScikitLearnPool``, ``.joblib_backend`` and
``.sklearn_backend``. Importing this module imports no framework: each is imported on first
use (the joblib backend when a backend is made, torch/JAX/... on the node when a decorated
function runs).
"""

from __future__ import annotations

from collections.abc import Callable

from skyward.hookspecs import hookimpl
from skyward.integrations import Framework
from skyward_integrations import jax, joblib, keras, tensorflow, torch, transformers


@hookimpl
def register_frameworks(register: Callable[[Framework], None]) -> None:
    register(Framework("torch", torch.torch))
    register(Framework("jax", jax.jax))
    register(Framework("keras", keras.keras))
    register(Framework("tensorflow", tensorflow.tensorflow))
    register(Framework("transformers", transformers.transformers))
    register(Framework("JoblibPool", joblib.JoblibPool))
    register(Framework("ScikitLearnPool", joblib.ScikitLearnPool))
    register(Framework("joblib_backend", joblib.joblib_backend))
    register(Framework("sklearn_backend", joblib.sklearn_backend))
