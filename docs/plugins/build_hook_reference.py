"""Write docs/plugins/hooks.md from the hookspecs' signatures and docstrings.

Run ``make docs``; a test fails when hooks.md is out of date.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from skyward import hookspecs

AREAS = {
    "register_providers": "1. Provisioning",
    "resolve_ssh_host": "1. Provisioning",
    "adjust_offers": "2. Pricing and offers",
    "bootstrap_steps": "3. Bootstrap",
    "register_accelerators": "4. Accelerator catalogs",
    "register_frameworks": "5. Distributed-framework setup",
}


def render() -> str:
    lines = [
        "# Hook reference",
        "",
        "Generated from `skyward/hookspecs.py` by `docs/plugins/build_hook_reference.py`;",
        "do not edit by hand. Implement a hook with `@skyward.hookimpl` on a function of the",
        "same name in your plugin module; it may take a subset of the arguments.",
        "",
    ]
    for name, area in AREAS.items():
        spec = getattr(hookspecs, name)
        signature = str(inspect.signature(spec)).replace("'", "")
        options = getattr(spec, "skyward_spec", {}) or {}
        lines += [f"## {area}: `{name}`", "", "```python", f"def {name}{signature}", "```", ""]
        if options.get("firstresult"):
            lines += ["*firstresult*: the first non-`None` result wins.", ""]
        lines += [inspect.cleandoc(spec.__doc__ or ""), ""]
    return "\n".join(lines)


def main() -> None:
    target = Path(__file__).with_name("hooks.md")
    target.write_text(render())
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
