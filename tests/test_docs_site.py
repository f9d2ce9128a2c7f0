"""The documentation site builds with --strict, and its generated pages are current."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import skyward as sky

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_api_reference_is_up_to_date_and_lists_every_public_name() -> None:
    module = runpy.run_path(str(DOCS / "build_api_reference.py"))
    expected = module["render"]()
    actual = (DOCS / "api.md").read_text()
    assert actual == expected, "run `make docs` to regenerate docs/api.md"
    for name in sky.__all__:
        assert f"::: skyward.{name}\n" in actual, name


@pytest.mark.slow
def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "WARNING" not in result.stderr, result.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in sky.__all__:
        assert f'id="skyward.{name}"' in api, f"{name} has no entry on the API page"
    troubleshooting = (tmp_path / "site" / "troubleshooting" / "index.html").read_text()
    for name in sky.errors.__all__:
        assert name in troubleshooting, f"Troubleshooting does not explain {name}"


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*.md"):
        name = page.relative_to(DOCS).as_posix()
        assert f" {name}" in nav or f"- {name}" in nav, f"{name} is not in mkdocs.yml's nav"


def test_sphinx_roles_become_api_links_or_code() -> None:
    roles = runpy.run_path(str(DOCS / "site_hooks" / "griffe_sphinx_roles.py"))
    rewrite = roles["rewrite"]
    assert rewrite("raises :class:`~skyward.errors.ConfigurationError`.") == (
        "raises [`ConfigurationError`][skyward.ConfigurationError]."
    )
    assert rewrite(":func:`skyward.gather`") == "[`skyward.gather`][skyward.gather]"
    # Not public: plain code, never a link the strict build could not resolve.
    assert rewrite(":class:`~skyward.errors.PluginError`") == "`PluginError`"
    assert rewrite(":mod:`skyward.live_view`") == "`skyward.live_view`"
