"""The plugin contract: every hook a Skyward plugin may implement.

A plugin is a module (or object) with functions decorated by ``@skyward.hookimpl`` whose
names match the specs below. Third-party plugins are found through the entry-point group
``skyward``::

    [project.entry-points.skyward]
    myprovider = "skyward_myprovider.plugin"

Implementations may accept a subset of a spec's arguments. Specs only ever grow new
arguments; removals go through ``warn_on_impl`` deprecation first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from skyward.accelerators import AcceleratorDefinition
    from skyward.image import BootstrapStep, Image
    from skyward.integrations import Framework
    from skyward.offers import Offer
    from skyward.provider import Instance, ProviderConfig
    from skyward.spec import ComputeSpec
    from skyward.ssh.hosts import SSHHost

__all__ = ["NODE_GROUP", "hookimpl", "hookspec"]

NODE_GROUP = "skyward.node"
"""Entry-point group of plugins whose code must also run on the nodes (the value names the
module): their distributions are shipped to nodes with skyward-core (:mod:`skyward.wheels`)
and linked into Local image environments."""

hookspec = pluggy.HookspecMarker("skyward")
hookimpl = pluggy.HookimplMarker("skyward")


# -- 1. provisioning ----------------------------------------------------------------------


@hookspec
def register_providers(register: Callable[[type[ProviderConfig]], None]) -> None:
    """Register provider config classes.

    Called once, when the plugin registry is first needed. Call ``register(cls)`` for each
    provider; ``cls.provider_name`` is its registry name and ``cls.__name__`` the attribute
    it is reachable as on the ``skyward`` module (``sky.AWS``). Two plugins registering the
    same name is a :class:`~skyward.errors.PluginError` naming both.

    :param register: the registry's callback.
    :returns: nothing; every implementation is called.
    """


@hookspec(firstresult=True)
def resolve_ssh_host(instance: Instance, host: SSHHost) -> SSHHost | None:
    """Say where to SSH to reach a cloud instance (a bastion, private addresses, a tunnel).

    Called by remote providers once per instance, before connecting. The first non-``None``
    result wins; the host key is still verified against the key pinned for the instance.

    :param instance: the instance as its provider described it.
    :param host: where the provider would connect (its public address, port 22, its user).
    :returns: another :class:`~skyward.ssh.hosts.SSHHost` to connect to, or ``None``.
    """


# -- 2. pricing and offers ----------------------------------------------------------------


@hookspec
def adjust_offers(spec: ComputeSpec, offers: Sequence[Offer]) -> Sequence[Offer] | None:
    """Re-price, annotate or drop offers before selection ranks them.

    Called once per provider and pool, after ``Provider.offers``. Implementations run in
    pluggy's call order (``tryfirst`` first, then the most recently registered), each
    receiving the previous one's result (a negotiated discount, then a policy
    that drops regions, ...). Return ``None`` to leave the offers as they are.

    :param spec: what the pool asked for.
    :param offers: the offers so far.
    :returns: the new offers, or ``None``.
    """


# -- 3. bootstrap -------------------------------------------------------------------------


@hookspec
def bootstrap_steps(image: Image, spec: ComputeSpec | None) -> Sequence[BootstrapStep] | None:
    """Contribute steps to a node's bootstrap script (volumes, drivers, MIG, ...).

    Called each time a bootstrap script is generated; every result is used, in plugin
    registration order. Each step's script must be idempotent POSIX ``sh`` and must not
    embed secrets.

    :param image: the image being built.
    :param spec: the pool's spec, or ``None`` when the script is built for an image alone.
    :returns: steps to add, or ``None``.
    """


# -- 4. accelerator catalogs --------------------------------------------------------------


@hookspec
def register_accelerators(register: Callable[[AcceleratorDefinition], None]) -> None:
    """Add accelerator definitions to the catalog (Trainium from the AWS package, ...).

    Called once, when the catalog is first needed. A name already registered with a
    different definition is a :class:`~skyward.errors.PluginError`.

    :param register: the catalog's callback.
    :returns: nothing; every implementation is called.
    """


# -- 5. distributed-framework setup -------------------------------------------------------


@hookspec
def register_frameworks(register: Callable[[Framework], None]) -> None:
    """Register distributed-framework integrations (torch, jax, keras, ...).

    Called once, when ``sky.integrations`` is first used. A framework object carries the
    per-node environment and initialisation for its engine and becomes reachable as
    ``sky.integrations.<name>``.

    :param register: the registry's callback.
    :returns: nothing; every implementation is called.
    """
