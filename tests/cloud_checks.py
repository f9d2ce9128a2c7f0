"""Checks every cloud provider's tests make the same way (AWS, DigitalOcean, Verda).

End to end: a two-node pool runs a function on each node, as the node's login, with the
agent told to power off when its client is gone. Against the provider alone: prepare and
launch with the first ranked offer, tearing down what prepare made if the launch fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import skyward as sky
from skyward.offers import Offer
from skyward.provider import MANAGED_TAG, POOL_TAG, LaunchRequest
from tests.cloud_init import CloudInit

__all__ = ["POWEROFF_HARMLESS", "launch", "ranked_offers", "two_node_pool", "where"]

POWEROFF_HARMLESS = {"SKYWARD_POWEROFF_CMD": "true"}
"""The agent's power-off on an SSH test host is a no-op (it would stop the host)."""


@sky.compute
def where() -> tuple[int, str, str]:
    """(node, login, job id) of the node that runs it."""
    import getpass

    info = sky.instance_info()
    return info.node, getpass.getuser(), info.job_id


def two_node_pool(
    provider: Any,
    cloud: CloudInit,
    name: str,
    *,
    during: Callable[[], None] | None = None,
    **size: Any,
) -> tuple[str, list[Any]]:
    """Open a two-node pool of ``size`` (``cpu=2``, ``machine=...``) on ``provider``, run
    :func:`where` on one node and on both, and check what every cloud must get right;
    ``during`` runs before the pool closes. Returns the pool id and its events."""
    events: list[Any] = []
    with sky.ComputePool(
        provider=provider,
        nodes=2,
        env=POWEROFF_HARMLESS,
        display="quiet",
        on_event=events.append,
        **size,
    ) as pool:
        one = where() >> pool
        every = where() @ pool
        pool_id = pool.pool_id
        for host in cloud.mapped.values():
            # the agent itself (its workers are processes of their own)
            (agent,) = [p for p in host.processes() if "skyward.agent" in p.cmdline()]
            assert "--on-expire=poweroff" in agent.cmdline(), "a lost client powers it off"
        if during is not None:
            during()
    assert one[2] == pool_id
    assert [e[0] for e in every] == [0, 1]
    assert {e[1] for e in every} == {h.user for h in cloud.mapped.values()}
    provisioned = [e for e in events if isinstance(e, sky.InstanceProvisioned)]
    assert [e.provider for e in provisioned] == [name, name]
    return pool_id, events


def ranked_offers(provider: Any, spec: Any) -> list[Offer]:
    """The provider's offers for ``spec`` in the order selection tries them."""
    return list(sky.selection.rank_offers(sky.selection.offers_for(provider, spec), spec))


def launch(
    provider: Any, spec: Any, pool_id: str, offer: Offer | None = None
) -> tuple[Any, list[Any]]:
    """Prepare ``pool_id`` and launch ``spec.nodes`` of ``offer`` (the first ranked one
    when not given); what prepare made is torn down if the launch fails."""
    if offer is None:
        offers = ranked_offers(provider, spec)
        assert offers, "no offer"
        offer = offers[0]
    infra = provider.prepare(spec, pool_id)
    tags = {MANAGED_TAG: "true", POOL_TAG: pool_id}
    request = LaunchRequest(pool_id=pool_id, offer=offer, count=spec.nodes, spec=spec, tags=tags)
    try:
        return infra, list(provider.launch(infra, request))
    except BaseException:
        provider.teardown(infra)
        raise
