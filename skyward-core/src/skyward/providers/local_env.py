"""Python environments for ``Local`` nodes: one cached venv per image content hash.

An empty image reuses the client's own interpreter. Any other image gets a venv built with
uv under the cache directory, keyed by ``Image.content_hash()``; concurrent nodes (and
concurrent pools) building the same image take a file lock, so it is built once. Skyward
itself is made importable in the venv from the client's own copy (a ``.pth`` entry pointing
at a directory holding only the ``skyward`` package and the packages of plugins nodes need),
and its runtime dependencies are installed at the client's exact versions.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import skyward
from skyward.errors import ProvisioningError
from skyward.image import Image
from skyward.provider import BootstrapReporter

__all__ = ["default_cache_dir", "ensure_environment", "find_uv"]

_READY = ".skyward-ready"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")
# Needed to *build* environments on the client, not to run an agent.
_CLIENT_ONLY = {"uv"}
_COMPILED = ".skyward-bytecode"
AGENT_PACKAGES = ("attr", "attrs", "cloudpickle", "psutil")
"""Third-party packages a node agent imports (``tests/test_startup_imports.py`` holds the
agent to these): compiled to bytecode when the venv is built, so an agent started where
nothing writes bytecode (``PYTHONDONTWRITEBYTECODE``, common in containers) does not
compile them again at every start."""


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "skyward" / "local"


def find_uv() -> str:
    """The uv binary: the one installed with skyward-core, else one on PATH."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except Exception:  # not installed, or its lookup fails on this interpreter
        pass
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file():
        return str(beside)
    found = shutil.which("uv")
    if found is None:
        raise ProvisioningError("local", "uv is needed to build image environments: pip install uv")
    return found


def runtime_requirements() -> list[str]:
    """skyward-core's own dependencies, pinned to the versions installed here."""
    pins = []
    for requirement in importlib.metadata.requires("skyward-core") or []:
        if ";" in requirement and "extra" in requirement.split(";", 1)[1]:
            continue
        match = _NAME.match(requirement)
        if match is None or match.group(0) in _CLIENT_ONLY:
            continue
        name = match.group(0)
        pins.append(f"{name}=={importlib.metadata.version(name)}")
    return pins


def _run(command: list[str], reporter: BootstrapReporter, step: str) -> None:
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    assert process.stdout is not None
    tail: list[str] = []
    for raw in process.stdout:
        line = raw.decode(errors="replace").rstrip()
        reporter.log(line)
        tail = [*tail[-19:], line]
    if process.wait() != 0:
        output = "\n".join(tail)
        raise ProvisioningError("local", f"bootstrap step {step!r} failed:\n{output}")


def _node_packages() -> dict[str, Path]:
    """Import name -> directory of ``skyward`` and of every plugin that nodes need
    (entry-point group ``skyward.node``, see :mod:`skyward.wheels`)."""
    from importlib import metadata
    from importlib.util import find_spec

    from skyward.hookspecs import NODE_GROUP

    packages = {"skyward": Path(skyward.__file__).resolve().parent}
    for entry in metadata.entry_points(group=NODE_GROUP):
        name = entry.value.split(":", 1)[0].split(".", 1)[0]
        spec = find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            packages[name] = Path(next(iter(spec.submodule_search_locations))).resolve()
    return packages


def _skyward_link_dir(cache_dir: Path) -> Path:
    """A directory whose only entries are links to the client's ``skyward`` package and
    to the packages of plugins that run on nodes too."""
    packages = _node_packages()
    listing = "\n".join(f"{name}={path}" for name, path in sorted(packages.items()))
    key = hashlib.sha256(listing.encode()).hexdigest()[:12]
    link_dir = cache_dir / "skyward-src" / key
    for name, package in packages.items():
        link = link_dir / name
        if link.exists():
            continue
        link_dir.mkdir(parents=True, exist_ok=True)
        tmp = link_dir / f".{name}.{key}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(package, target_is_directory=True)
        tmp.replace(link)
    return link_dir


def _link_skyward(env_dir: Path, cache_dir: Path) -> None:
    pth = _site_packages(env_dir) / "skyward-client.pth"
    line = f"{_skyward_link_dir(cache_dir)}\n"
    if not pth.exists() or pth.read_text() != line:
        pth.write_text(line)


def _site_packages(env_dir: Path) -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return env_dir / "lib" / version / "site-packages"


def ensure_environment(image: Image, cache_dir: Path, reporter: BootstrapReporter) -> str:
    """Path of a Python interpreter that has ``image`` installed, building it if needed."""
    if image.apt:
        reporter.log(
            "Local nodes share this machine: apt packages "
            f"({', '.join(image.apt)}) are not installed; install them yourself if needed"
        )
    if image.is_empty:
        reporter.step("deps", cached=True)
        return sys.executable
    env_dir = cache_dir / "envs" / image.content_hash()
    python = env_dir / "bin" / "python"
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(env_dir.parent / f"{env_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (env_dir / _READY).exists():
            reporter.step("deps", cached=True)
            reporter.step("skyward", cached=True)
            _link_skyward(env_dir, cache_dir)  # node plugins installed since it was built
            if not (env_dir / _COMPILED).exists():
                _compile_agent_packages(env_dir)  # a venv built before this was done
            return str(python)
        reporter.step("uv")
        uv = find_uv()
        reporter.step("deps")
        if env_dir.exists():
            shutil.rmtree(env_dir)  # a half-built venv from an interrupted run
        _run([uv, "venv", "--quiet", "--python", sys.executable, str(env_dir)], reporter, "deps")
        install = [uv, "pip", "install", "--python", str(python)]
        if image.pip_extra_index_url:
            install += ["--extra-index-url", image.pip_extra_index_url]
        _run([*install, *runtime_requirements(), *image.pip], reporter, "deps")
        reporter.step("skyward")
        _link_skyward(env_dir, cache_dir)
        _compile_agent_packages(env_dir)
        (env_dir / _READY).write_text(image.content_hash() + "\n")
    return str(python)


def _compile_agent_packages(env_dir: Path) -> None:
    """Bytecode for :data:`AGENT_PACKAGES` in the venv, once (the venv runs this very
    interpreter, so the client compiles for it); not the whole venv, which would cost a
    fresh image a second or more."""
    import compileall

    site_packages = _site_packages(env_dir)
    for name in AGENT_PACKAGES:
        if (site_packages / name).is_dir():
            compileall.compile_dir(site_packages / name, maxlevels=0, quiet=2, workers=1)
    (env_dir / _COMPILED).touch()
