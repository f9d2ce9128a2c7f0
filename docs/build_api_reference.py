"""Write docs/api.md: one mkdocstrings entry for every name in ``skyward.__all__``.

The page groups the names the way a user looks for them; a name in ``__all__`` that no
group lists (or a group name that is not public) is an error, so the reference can never
silently miss a public name. Run ``make docs``; a test fails when api.md is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

import skyward

GROUPS: dict[str, tuple[str, list[str]]] = {
    "Pools": (
        "Open machines, send calls, close them.",
        ["ComputePool", "pool", "MultiPool"],
    ),
    "Remote functions": (
        "Decorate a function; a call is *pending* until it is sent to a pool with "
        "`>>` (one worker), `@` (every node), `&` or `gather` (in parallel).",
        ["compute", "ComputeFunction", "PendingCompute", "PendingBatch", "gather", "put", "Ref"],
    ),
    "What to run on": (
        "Images, volumes, allocation and the spec a pool builds from its arguments.",
        [
            "Image",
            "BootstrapStep",
            "Volume",
            "S3Volume",
            "Allocation",
            "AllocationLike",
            "ComputeSpec",
        ],
    ),
    "Providers and selection": (
        "Built-in providers (`sky.AWS`, `sky.DigitalOcean`, ... come from plugins), the "
        "provider interface, and how a pool picks among several.",
        [
            "Local",
            "SSH",
            "SSHHost",
            "ProviderConfig",
            "Provider",
            "Offer",
            "SelectionLike",
            "ProviderSelector",
            "select_first",
            "select_cheapest",
            "select_available",
        ],
    ),
    "Accelerators": (
        "The accelerator catalog and helpers to ask about a name.",
        [
            "Accelerator",
            "AcceleratorSpec",
            "NVIDIA",
            "select_instance",
            "is_nvidia",
            "is_amd",
            "is_tpu",
            "is_trainium",
            "is_inferentia",
        ],
    ),
    "On the node": (
        "What a function running on a pool can ask about where it runs.",
        ["instance_info", "InstanceInfo", "current_accelerator", "shard", "DistributedSampler"],
    ),
    "Events and callbacks": (
        "Everything a pool reports, in the order a user sees it, and how to listen.",
        [
            "SkywardEvent",
            "Callback",
            "compose",
            "emit",
            "use_callback",
            "InfraCreating",
            "InfraCreated",
            "InstanceLaunching",
            "InstanceProvisioned",
            "BootstrapStarting",
            "BootstrapProgress",
            "BootstrapCompleted",
            "Metrics",
            "BatchSubmitted",
            "TaskSubmitted",
            "TaskFinished",
            "LogLine",
            "PoolStopping",
            "InstanceStopping",
            "CostUpdate",
            "CostFinal",
            "Error",
            "ProviderName",
        ],
    ),
    "Errors": (
        "Every error Skyward raises on purpose; [Troubleshooting](troubleshooting.md) says "
        "what causes each and the fix.",
        [
            "SkywardError",
            "ConfigurationError",
            "PluginNotInstalledError",
            "CapacityError",
            "NoAvailableProviderError",
            "AllProvidersFailedError",
            "PoolClosedError",
            "PoolTimeoutError",
            "BudgetExceededError",
            "TaskTimeoutError",
            "WorkerLostError",
            "AgentAuthenticationError",
            "SerializationError",
            "RemoteError",
        ],
    ),
    "Plugins and integrations": (
        "Writing a plugin: see [Plugins](plugins.md).",
        ["hookimpl", "integrations"],
    ),
}


def grouped_names() -> list[str]:
    return [name for _, names in GROUPS.values() for name in names]


def check() -> None:
    listed = grouped_names()
    public = set(skyward.__all__)
    missing = sorted(public - set(listed))
    extra = sorted(set(listed) - public)
    twice = sorted({name for name in listed if listed.count(name) > 1})
    if missing or extra or twice:
        raise SystemExit(
            f"docs/build_api_reference.py is out of step with skyward.__all__: "
            f"not listed {missing}, not public {extra}, listed twice {twice}"
        )


def render() -> str:
    check()
    lines = [
        "# API reference",
        "",
        "Every public name of `skyward` (`import skyward as sky`), generated from the",
        "docstrings by `docs/build_api_reference.py` and mkdocstrings; do not edit by hand.",
        "",
    ]
    for title, (intro, names) in GROUPS.items():
        lines += [f"## {title}", "", intro, ""]
        for name in names:
            lines += [f"::: skyward.{name}", ""]
    return "\n".join(lines)


def main() -> None:
    target = Path(__file__).resolve().parent / "api.md"
    target.write_text(render())
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
