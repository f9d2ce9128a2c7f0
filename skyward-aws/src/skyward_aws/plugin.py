"""Entry point of skyward-aws (group ``skyward``, name ``aws``).

Registers ``sky.AWS``, the Trainium and Inferentia accelerator definitions, and the
bootstrap step that mounts EBS and S3 volumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from skyward.accelerators import AcceleratorDefinition
from skyward.hookspecs import hookimpl
from skyward.image import BootstrapStep, Image
from skyward.provider import ProviderConfig
from skyward.spec import ComputeSpec
from skyward_aws.config import AWS
from skyward_aws.volumes import volume_steps

NEURON_ACCELERATORS = (
    AcceleratorDefinition(name="Trainium", vendor="AWS", memory_gb=(32,), aliases=("Trainium1",)),
    AcceleratorDefinition(name="Trainium2", vendor="AWS", memory_gb=(96,)),
    AcceleratorDefinition(
        name="Inferentia", vendor="AWS", memory_gb=(8,), aliases=("Inferentia1",)
    ),
    AcceleratorDefinition(name="Inferentia2", vendor="AWS", memory_gb=(32,)),
)


@hookimpl
def register_providers(register: Callable[[type[ProviderConfig]], None]) -> None:
    register(AWS)


@hookimpl
def register_accelerators(register: Callable[[AcceleratorDefinition], None]) -> None:
    for definition in NEURON_ACCELERATORS:
        register(definition)


@hookimpl
def bootstrap_steps(image: Image, spec: ComputeSpec | None) -> Sequence[BootstrapStep]:
    return volume_steps(spec)
