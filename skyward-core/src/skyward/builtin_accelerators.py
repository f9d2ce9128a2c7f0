"""Built-in plugin: NVIDIA, AMD and Google accelerator definitions.

Registered through ``register_accelerators`` like any plugin's; Trainium and Inferentia
come from the AWS package the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from skyward.accelerators import BUILTIN_ACCELERATORS, AcceleratorDefinition
from skyward.hookspecs import hookimpl


@hookimpl
def register_accelerators(register: Callable[[AcceleratorDefinition], None]) -> None:
    for definition in BUILTIN_ACCELERATORS:
        register(definition)
