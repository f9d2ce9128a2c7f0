"""Documentation that is generated from code must be current."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_hook_reference_is_up_to_date() -> None:
    module = runpy.run_path(str(ROOT / "docs" / "plugins" / "build_hook_reference.py"))
    expected = module["render"]()
    actual = (ROOT / "docs" / "plugins" / "hooks.md").read_text()
    assert actual == expected, "run `make docs` to regenerate docs/plugins/hooks.md"


def test_architecture_names_every_core_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    package = ROOT / "skyward-core" / "src" / "skyward"
    for module in package.rglob("*.py"):
        if module.stem == "__init__" and module.parent != package:
            continue
        name = str(module.relative_to(package).with_suffix(""))
        assert f"`{name}`" in text or f"{name}`" in text, name
