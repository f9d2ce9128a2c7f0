"""The plugin contract: hookspecs, lazy loading, registration, and a third-party provider."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pluggy
import pytest

import skyward as sky
from skyward import hookspecs, plugins
from skyward.accelerators import AcceleratorDefinition
from skyward.errors import PluginError, PluginNotInstalledError
from skyward.image import BootstrapStep
from skyward.integrations import Framework
from skyward.offers import Offer
from tests.conftest import agent_processes

pytestmark = pytest.mark.usefixtures("fresh_plugins")


@sky.compute
def double(x: int) -> int:
    return 2 * x


@sky.compute
def node_index() -> int:
    return sky.instance_info().node


@pytest.fixture
def registered() -> Iterator[Callable[[object, str], None]]:
    """Register plugin objects on the live manager for one test."""
    pm = plugins.get_plugin_manager()
    names: list[str] = []

    def register(plugin: object, name: str) -> None:
        pm.register(plugin, name=name)
        names.append(name)
        plugins.reset(pm)  # rebuild the registry from the manager on next use

    yield register
    for name in names:
        pm.unregister(name=name)


def test_every_hookspec_is_documented() -> None:
    pm = pluggy.PluginManager("skyward")
    pm.add_hookspecs(hookspecs)
    names = {
        "register_providers",
        "adjust_offers",
        "bootstrap_steps",
        "register_accelerators",
        "register_frameworks",
        "resolve_ssh_host",
    }
    assert {name for name in dir(pm.hook) if not name.startswith("_")} == names
    for name in names:
        doc = getattr(hookspecs, name).__doc__
        assert ":param" in doc
        assert ":returns:" in doc


def test_import_skyward_loads_no_plugins_and_no_sdk() -> None:
    code = (
        "import sys, skyward, skyward.plugins as p;"
        "assert p._manager is None, 'plugins loaded at import';"
        "bad = [m for m in ('boto3', 'pydo', 'httpx', 'rich', 'skyward_aws') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_manager_is_built_once_and_loads_entry_points() -> None:
    first = plugins.get_plugin_manager()
    assert plugins.get_plugin_manager() is first
    names = {name for name, _ in first.list_name_plugin()}
    assert "skyward.providers.local" in names
    assert {"example", "aws", "digitalocean", "verda", "integrations"} <= names


def test_disable_autoload_env_loads_only_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")
    names = {name for name, _ in plugins.get_plugin_manager().list_name_plugin()}
    assert names == set(plugins.DEFAULT_PLUGINS)
    assert plugins.get_registry().providers.keys() == {"local", "ssh"}


def test_allowlist_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plugins.LOAD_PLUGINS_ENV, "example")
    names = {name for name, _ in plugins.get_plugin_manager().list_name_plugin()}
    assert names == {*plugins.DEFAULT_PLUGINS, "example"}


def test_check_pending_rejects_misspelled_hooks() -> None:
    class Typo:
        @sky.hookimpl
        def register_provider(self, register: Any) -> None:  # missing "s"
            pass

    pm = plugins.new_plugin_manager()
    pm.register(Typo())
    with pytest.raises(pluggy.PluginValidationError, match="register_provider"):
        pm.check_pending()


def test_missing_provider_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")
    real = importlib.metadata.distribution

    def not_installed(name: str) -> Any:
        if name.startswith("skyward-"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    for attribute, extra in (("AWS", "aws"), ("DigitalOcean", "digitalocean"), ("Verda", "verda")):
        with pytest.raises(PluginNotInstalledError, match=rf'pip install "skyward\[{extra}\]"'):
            getattr(sky, attribute)
    with pytest.raises(AttributeError):
        sky.NoSuchThing  # noqa: B018


def test_installed_but_silent_package_says_so() -> None:
    # skyward-verda is installed, but with autoload off its entry point never registers.
    plugins.reset(plugins.new_plugin_manager(autoload=False))
    with pytest.raises(PluginNotInstalledError, match="installed but registered no provider"):
        sky.Verda  # noqa: B018


def test_verda_resolves_through_its_entry_point() -> None:
    from skyward_verda import Verda

    assert sky.Verda is Verda  # type: ignore[attr-defined]
    assert plugins.get_registry().provider_owner["verda"] == "verda"


def test_aws_resolves_through_its_entry_point() -> None:
    from skyward_aws import AWS

    assert sky.AWS is AWS  # type: ignore[attr-defined]
    assert plugins.get_registry().provider_owner["aws"] == "aws"


def test_integrations_resolve_through_registry(registered: Callable[[object, str], None]) -> None:
    from skyward_integrations.torch import torch

    assert sky.integrations.torch is torch  # the installed skyward-integrations
    pm = plugins.get_plugin_manager()
    real = pm.unregister(name="integrations")  # as if it were not installed
    plugins.reset(pm)
    try:
        with pytest.raises(PluginNotInstalledError, match=r'pip install "skyward\[integrations\]"'):
            sky.integrations.torch  # noqa: B018

        def torch_decorator(backend: str = "gloo") -> str:
            return f"torch:{backend}"

        class Integrations:
            @sky.hookimpl
            def register_frameworks(self, register: Callable[[Framework], None]) -> None:
                register(Framework(name="torch", entry=torch_decorator))

        registered(Integrations(), "fake-integrations")
        assert sky.integrations.torch(backend="nccl") == "torch:nccl"
    finally:
        if real is not None:
            pm.register(real, name="integrations")
        plugins.reset(pm)


def test_provider_name_clash_names_both_plugins(registered: Callable[[object, str], None]) -> None:
    class Impostor:
        provider_name = "local"

    class Clash:
        @sky.hookimpl
        def register_providers(self, register: Any) -> None:
            register(Impostor)

    registered(Clash(), "impostor-plugin")
    with pytest.raises(PluginError, match="impostor-plugin") as caught:
        plugins.get_registry()
    assert "skyward.providers.local" in str(caught.value)


def test_accelerator_hook_extends_the_catalog(registered: Callable[[object, str], None]) -> None:
    class Chips:
        @sky.hookimpl
        def register_accelerators(self, register: Any) -> None:
            register(AcceleratorDefinition(name="Inferentia3", vendor="AWS", memory_gb=(64,)))

    registered(Chips(), "chips")
    spec = sky.AcceleratorSpec.AWS.Inferentia(version=3)
    assert spec.name == "Inferentia3"
    assert plugins.accelerator_catalog().owner("Inferentia3") == "chips"
    assert plugins.accelerator_catalog().owner("Trainium2") == "aws"


def test_bootstrap_hook_adds_steps(registered: Callable[[object, str], None]) -> None:
    class Drivers:
        @sky.hookimpl
        def bootstrap_steps(self, image: sky.Image, spec: Any) -> Sequence[BootstrapStep]:
            return [BootstrapStep(name="drivers", script="echo drivers-installed", after="apt")]

    registered(Drivers(), "drivers")
    image = sky.Image(apt=["curl"])
    script = image.bootstrap(steps=plugins.bootstrap_steps(image, None))
    assert "echo drivers-installed" in script
    assert script.index("_sky_say step apt") < script.index("_sky_say step drivers")
    assert script.index("drivers-installed") < script.index("_sky_say step deps")


def test_adjust_offers_hook_reprices(registered: Callable[[object, str], None]) -> None:
    class Discount:
        @sky.hookimpl
        def adjust_offers(self, spec: Any, offers: Sequence[Offer]) -> list[Offer]:
            return [
                Offer(
                    provider=o.provider,
                    instance_type=o.instance_type,
                    vcpus=o.vcpus,
                    memory_gb=o.memory_gb,
                    region=o.region,
                    price_on_demand=(o.price_on_demand or 0) / 2,
                )
                for o in offers
            ]

    registered(Discount(), "discount")
    from skyward_example_provider import Example

    from skyward.selection import offers_for
    from skyward.spec import build_spec

    offers = offers_for(Example().create(), build_spec())
    assert [o.price_on_demand for o in offers] == [0.25]


def test_third_party_provider_runs_a_pool_with_no_core_change() -> None:
    """``skyward-example-provider`` is a separate distribution found by its entry point."""
    entry_points = importlib.metadata.entry_points(group="skyward")
    assert "skyward_example_provider.plugin" in {ep.value for ep in entry_points}

    example_class = sky.Example  # type: ignore[attr-defined]  # resolved via the registry
    assert plugins.get_registry().provider_owner["example"] == "example"
    events: list[Any] = []
    with sky.ComputePool(
        provider=example_class(), nodes=2, display="quiet", on_event=events.append
    ) as pool:
        assert double(21) >> pool == 42
        assert node_index() @ pool == (0, 1)
        pool_id = pool.pool_id
    assert agent_processes(pool_id) == []
    provisioned = [e for e in events if isinstance(e, sky.InstanceProvisioned)]
    assert [e.provider for e in provisioned] == ["example", "example"]
    assert provisioned[0].price_on_demand == 0.5
    final = events[-1]
    assert isinstance(final, sky.CostFinal)
    assert final.hourly_rate == 1.0
    assert final.total_cost > 0
