"""Image(pip=[...]) on Local: a cached venv keyed by the image's content hash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import skyward as sky


@sky.compute
def import_package() -> tuple[str, str, str]:
    import sys

    import humanize

    return humanize.__file__, sys.executable, humanize.intcomma(1234567)


def _steps(events: list[Any]) -> set[tuple[str, bool]]:
    return {(e.step, e.cached) for e in events if isinstance(e, sky.BootstrapProgress)}


@pytest.mark.slow
def test_pip_package_is_importable_on_every_node_and_cached(tmp_path: Path) -> None:
    image = sky.Image(pip=["humanize==4.11.0"])
    local = sky.Local(cache_dir=str(tmp_path / "cache"))
    first: list[Any] = []
    with sky.ComputePool(
        provider=local, nodes=2, image=image, display="quiet", on_event=first.append
    ) as pool:
        results = import_package() @ pool
    venv = tmp_path / "cache" / "envs" / image.content_hash()
    for module_file, executable, formatted in results:
        assert module_file.startswith(str(venv)), "imported from the image's own venv"
        assert executable.startswith(str(venv))
        assert formatted == "1,234,567"
    assert ("deps", False) in _steps(first), "the first pool built the environment"

    second: list[Any] = []
    with sky.ComputePool(
        provider=local, nodes=2, image=image, display="quiet", on_event=second.append
    ) as pool:
        assert (import_package() >> pool)[2] == "1,234,567"
    assert ("deps", True) in _steps(second), "the second pool reused it and said so"
    assert ("deps", False) not in _steps(second)


def test_package_missing_from_the_image_is_not_importable(tmp_path: Path) -> None:
    """The client has no humanize: an empty image reuses the client, and it is missing."""
    with (
        sky.ComputePool(provider=sky.Local(), display="quiet") as pool,
        pytest.raises(ModuleNotFoundError, match="humanize"),
    ):
        import_package() >> pool
