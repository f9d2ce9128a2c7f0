"""``Example``: nodes are processes in a scratch directory, priced at a made-up rate.

Written only against Skyward's public provider interface (``skyward.provider``,
``skyward.agent_process``, ``skyward.hookimpl``), as a third party would.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from attrs import define, field, frozen

import skyward
from skyward.agent_process import (
    AgentProcess,
    connect_loopback,
    start_agent_process,
    stop_process_group,
)
from skyward.errors import ConfigurationError
from skyward.offers import Offer
from skyward.provider import (
    AgentConfig,
    AgentEndpoint,
    BootstrapReporter,
    Infrastructure,
    Instance,
    InstanceState,
    LaunchRequest,
    Stream,
)
from skyward.spec import ComputeSpec

HOURLY_PRICE = 0.5


@frozen
class Example:
    """A provider that "rents" local processes at $0.50 an hour."""

    provider_name: ClassVar[str] = "example"

    def validate(self, spec: ComputeSpec) -> None:
        if not spec.image.is_empty:
            raise ConfigurationError(
                "image", "the example provider cannot install packages", "Use sky.Image()"
            )

    def create(self) -> ExampleProvider:
        return ExampleProvider()


@frozen
class ExampleInfra(Infrastructure):
    root: Path = Path()


@define
class ExampleProvider:
    name: str = "example"
    calls: list[str] = field(factory=list)
    agents: dict[str, AgentProcess] = field(factory=dict)
    gone: set[str] = field(factory=set)

    def offers(self, spec: ComputeSpec) -> Sequence[Offer]:
        self.calls.append("offers")
        return [
            Offer(
                provider=self.name,
                instance_type="example.small",
                vcpus=1,
                memory_gb=1,
                region="example-1",
                price_on_demand=HOURLY_PRICE,
            )
        ]

    def prepare(self, spec: ComputeSpec, pool_id: str) -> Infrastructure:
        self.calls.append("prepare")
        return ExampleInfra(region="example-1", root=Path(tempfile.mkdtemp(prefix="example-")))

    def launch(self, infra: Infrastructure, request: LaunchRequest) -> Sequence[Instance]:
        self.calls.append("launch")
        return [
            Instance(
                id=f"ex-{request.pool_id}-{n}",
                provider=self.name,
                state=InstanceState.PENDING,
                instance_type=request.offer.instance_type,
                ip="127.0.0.1",
                price_on_demand=HOURLY_PRICE,
                tags=dict(request.tags),
            )
            for n in range(request.count)
        ]

    def describe(self, instances: Sequence[Instance]) -> Sequence[Instance]:
        self.calls.append("describe")
        state = {True: InstanceState.TERMINATED, False: InstanceState.RUNNING}
        return [
            Instance(
                id=i.id,
                provider=i.provider,
                state=state[i.id in self.gone],
                instance_type=i.instance_type,
                ip=i.ip,
                price_on_demand=i.price_on_demand,
                tags=i.tags,
            )
            for i in instances
        ]

    def terminate(self, instances: Sequence[Instance]) -> None:
        self.calls.append("terminate")
        for instance in instances:
            agent = self.agents.pop(instance.id, None)
            if agent is not None:
                stop_process_group(agent.process)
            self.gone.add(instance.id)

    def list_by_tag(self, pool_id: str | None = None) -> Sequence[Instance]:
        return []

    def connect(self, infra: Infrastructure, instance: Instance) -> ExampleTransport:
        assert isinstance(infra, ExampleInfra)
        return ExampleTransport(self, infra.root / instance.id, instance)

    def teardown(self, infra: Infrastructure) -> None:
        self.calls.append("teardown")
        assert isinstance(infra, ExampleInfra)
        shutil.rmtree(infra.root, ignore_errors=True)


@define
class ExampleTransport:
    provider: ExampleProvider
    directory: Path
    instance: Instance

    def bootstrap(self, image: skyward.Image, reporter: BootstrapReporter) -> None:
        reporter.step("deps", cached=True)

    def start_agent(self, config: AgentConfig) -> AgentEndpoint:
        agent = start_agent_process(
            sys.executable,
            config,
            cwd=self.directory,
            pool_id=self.instance.tags.get("skyward:pool", ""),
            instance_id=self.instance.id,
            provider="example",
        )
        self.provider.agents[self.instance.id] = agent
        return agent.endpoint

    def open_stream(self, endpoint: AgentEndpoint) -> Stream:
        return connect_loopback(endpoint.port)

    def close(self) -> None:
        agent = self.provider.agents.get(self.instance.id)
        if agent is not None:
            stop_process_group(agent.process)


@skyward.hookimpl
def register_providers(register: Callable[[type[Example]], None]) -> None:
    register(Example)
