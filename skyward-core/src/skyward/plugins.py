"""The plugin registry: loads plugins once, on first need, and keeps what they register.

``import skyward`` loads nothing. The first call that needs a provider, an accelerator
definition or a framework builds the :class:`pluggy.PluginManager`: hookspecs, then the
built-in plugins (``DEFAULT_PLUGINS``), then the entry points of group ``skyward``, then
``check_pending()`` so a misspelled hook fails loudly.

Escape hatches:

- ``SKYWARD_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points (built-ins still load);
- ``SKYWARD_LOAD_PLUGINS=aws,verda``: load only these entry points;
- ``get_plugin_manager().set_blocked(name)`` before first use, as pluggy allows.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy
from attrs import define, field
from pluggy import HookImpl

from skyward import accelerators, hookspecs
from skyward.errors import PluginError, PluginNotInstalledError

if TYPE_CHECKING:
    from skyward.accelerators import AcceleratorCatalog, AcceleratorDefinition
    from skyward.image import BootstrapStep, Image
    from skyward.integrations import Framework
    from skyward.provider import Instance, ProviderConfig
    from skyward.spec import ComputeSpec
    from skyward.ssh.hosts import SSHHost

__all__ = [
    "DEFAULT_PLUGINS",
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "LOAD_PLUGINS_ENV",
    "PluginRegistry",
    "accelerator_catalog",
    "get_plugin_manager",
    "get_registry",
    "reset",
]

ENTRY_POINT_GROUP = "skyward"
DISABLE_AUTOLOAD_ENV = "SKYWARD_DISABLE_PLUGIN_AUTOLOAD"
LOAD_PLUGINS_ENV = "SKYWARD_LOAD_PLUGINS"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "skyward.builtin_accelerators",
    "skyward.mig",
    "skyward.providers.local",
    "skyward.providers.ssh",
)
"""Built-in plugins: registered through the same hooks as any third-party package."""

# Where first-party names live, so a missing one can name the exact install command.
# A table of hints, not imports: core never imports these packages.
EXTRA_FOR_NAME: Mapping[str, str] = {
    "AWS": "aws",
    "DigitalOcean": "digitalocean",
    "Verda": "verda",
}

_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_registry: PluginRegistry | None = None


def _autoload_disabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false")


def _allowlist() -> set[str] | None:
    raw = os.environ.get(LOAD_PLUGINS_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = _allowlist()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        name = entry_point.name
        if allowed is not None and name not in allowed:
            continue
        if pm.is_blocked(name) or pm.has_plugin(name):
            continue
        try:
            plugin = entry_point.load()
        except Exception as error:
            raise PluginError(name, f"could not be imported: {error!r}") from error
        pm.register(plugin, name=name)


def _new_manager(*, autoload: bool) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("skyward")
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if autoload:
        _load_entry_points(pm)
    pm.check_pending()
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first call (thread-safe, once)."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = _new_manager(autoload=not _autoload_disabled())
        return _manager


def reset(manager: pluggy.PluginManager | None = None) -> None:
    """Forget the current manager and registry (tests use a fresh one per test).

    With ``manager``, use it instead of building one on next use.
    """
    global _manager, _registry
    with _lock:
        _manager = manager
        _registry = None


def new_plugin_manager(*, autoload: bool = False) -> pluggy.PluginManager:
    """A fresh manager with the specs and built-in plugins (for tests and tools)."""
    return _new_manager(autoload=autoload)


@define
class PluginRegistry:
    """What plugins registered, indexed for lookup."""

    providers: dict[str, type[ProviderConfig]] = field(factory=dict)
    """Provider name → config class."""
    provider_owner: dict[str, str] = field(factory=dict)
    """Provider name → plugin that registered it."""
    attributes: dict[str, type[ProviderConfig]] = field(factory=dict)
    """``skyward`` attribute name (``"AWS"``) → config class."""
    frameworks: dict[str, Framework] = field(factory=dict)
    catalog: AcceleratorCatalog | None = None


def _plugin_name(pm: pluggy.PluginManager, plugin: object) -> str:
    return pm.get_name(plugin) or repr(plugin)


def call_impl(impl: HookImpl, **arguments: object) -> object:
    """Call one implementation with the arguments it asks for (it may take a subset)."""
    return impl.function(**{name: arguments[name] for name in impl.argnames})


def _call_each(pm: pluggy.PluginManager, hook_name: str, make_register: Any) -> None:
    """Call a registration hook once per plugin, so each registration knows its owner."""
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        owner = _plugin_name(pm, impl.plugin)
        register = make_register(owner)
        try:
            call_impl(impl, register=register)
        except PluginError:
            raise
        except Exception as error:
            raise PluginError(owner, f"{hook_name} failed: {error!r}") from error


def _build_registry(pm: pluggy.PluginManager) -> PluginRegistry:
    from skyward.accelerators import AcceleratorCatalog

    registry = PluginRegistry(catalog=AcceleratorCatalog())

    def provider_register(owner: str) -> Any:
        def register(config_class: type[ProviderConfig]) -> None:
            name = getattr(config_class, "provider_name", None)
            if not isinstance(name, str) or not name:
                raise PluginError(owner, f"{config_class!r} has no provider_name")
            existing = registry.providers.get(name)
            if existing is not None and existing is not config_class:
                first = registry.provider_owner[name]
                raise PluginError(owner, f"provider {name!r} is already registered by {first!r}")
            registry.providers[name] = config_class
            registry.provider_owner[name] = owner
            registry.attributes[config_class.__name__] = config_class

        return register

    def accelerator_register(owner: str) -> Any:
        catalog = registry.catalog
        assert catalog is not None

        def register(definition: AcceleratorDefinition) -> None:
            catalog.register(definition, plugin=owner)

        return register

    def framework_register(owner: str) -> Any:
        def register(framework: Framework) -> None:
            existing = registry.frameworks.get(framework.name)
            if existing is not None and existing is not framework:
                raise PluginError(owner, f"framework {framework.name!r} is already registered")
            registry.frameworks[framework.name] = framework

        return register

    _call_each(pm, "register_providers", provider_register)
    _call_each(pm, "register_accelerators", accelerator_register)
    _call_each(pm, "register_frameworks", framework_register)
    return registry


def get_registry() -> PluginRegistry:
    """The registry built from the plugin manager, once."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = _build_registry(get_plugin_manager())
        return _registry


def accelerator_catalog() -> AcceleratorCatalog:
    """The accelerator catalog: built-in definitions plus every plugin's."""
    catalog = get_registry().catalog
    assert catalog is not None
    return catalog


def provider_attribute(name: str) -> type[ProviderConfig]:
    """Resolve ``sky.<name>`` to a registered provider config class.

    :raises PluginNotInstalledError: naming the ``pip install`` that provides it.
    """
    config_class = get_registry().attributes.get(name)
    if config_class is not None:
        return config_class
    extra = EXTRA_FOR_NAME.get(name)
    if extra is None:
        raise AttributeError(f"module 'skyward' has no attribute {name!r}")
    distribution = f"skyward-{extra}"
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        message = (
            f"sky.{name} needs the {distribution} package, which is not installed. "
            f'Install it with: pip install "skyward[{extra}]"'
        )
    else:
        message = (
            f"sky.{name}: {distribution} is installed but registered no provider named "
            f"{name!r} (is plugin autoload disabled by {DISABLE_AUTOLOAD_ENV} or "
            f'{LOAD_PLUGINS_ENV}?). Reinstall with: pip install "skyward[{extra}]"'
        )
    raise PluginNotInstalledError(name, message)


def framework(name: str) -> Framework:
    """Resolve ``sky.integrations.<name>``.

    :raises PluginNotInstalledError: naming ``pip install "skyward[integrations]"``.
    """
    found = get_registry().frameworks.get(name)
    if found is not None:
        return found
    raise PluginNotInstalledError(
        name,
        f"sky.integrations.{name} is provided by the skyward-integrations package, which is "
        "not installed or does not provide it. Install it with: "
        'pip install "skyward[integrations]"',
    )


def bootstrap_steps(image: Image, spec: ComputeSpec | None) -> list[BootstrapStep]:
    """Every plugin's bootstrap steps for ``image``, in plugin registration order."""
    hook = get_plugin_manager().hook.bootstrap_steps
    steps: list[BootstrapStep] = []
    for contributed in reversed(hook(image=image, spec=spec)):  # pluggy: last-registered first
        if contributed:
            steps.extend(contributed)
    return steps


def resolve_ssh_host(instance: Instance, host: SSHHost) -> SSHHost:
    """Where to SSH for ``instance``: a plugin's answer, else ``host``."""
    answer = get_plugin_manager().hook.resolve_ssh_host(instance=instance, host=host)
    return answer if answer is not None else host


accelerators.use_live_catalog(accelerator_catalog)
