"""SSH test hosts that can run torch, JAX, Keras, transformers, scikit-learn and TensorFlow
(CPU builds only).

A node gets its Python environment from the pool's :class:`~skyward.Image`: the bootstrap
runs ``uv pip install`` of ``Image.pip`` in the host's own venv. Two things make that work
for the frameworks on the test hosts, without ever touching a CUDA wheel:

- torch is pinned to ``torch==2.13.0+cpu``, a version only the local wheel folder
  (``/opt/wheels``) holds; uv ignores pip's configuration, so each host's uv is handed that
  folder in its user configuration (``~/.config/uv/uv.toml``: ``find-links``), the way an
  administrator would point a cluster's machines at a local wheelhouse;
- the same file gives each host user a uv cache outside its home, keyed by the torch
  version, under ``/var/cache/skyward-tests`` (the farm wipes the homes every session). The
  first run fills it (a minute or two; about 4.7 GB a host user with TensorFlow); later runs
  hard-link from it, so building a host's venv takes seconds. A file lock keeps two sessions
  from preparing it at once (the farm's own lock already serialises the hosts).

The other frameworks come from the package index at the client's exact versions (TensorFlow,
absent from the client, at tests/tf_env.py's), so the nodes run what the client runs and the
cache stays valid.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import pwd
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import skyward as sky
from tests.ssh_hosts import SSHTestHost
from tests.tf_env import TENSORFLOW, TF_KERAS

TORCH_VERSION = "2.13.0+cpu"
WHEELS = Path("/opt/wheels")
CACHE_ROOT = Path(os.environ.get("SKYWARD_TEST_CACHE", "/var/cache/skyward-tests"))
CACHE_KEY = f"uv-torch-{TORCH_VERSION.replace('+', '-')}"

# What each framework needs on a node, pinned to the client's versions.
FRAMEWORKS = {
    "torch": ("torch",),
    "jax": ("jax", "jaxlib"),
    "keras": ("keras",),
    "transformers": ("transformers", "accelerate"),
    "sklearn": ("scikit-learn", "joblib"),
    # Not in the client's environment (tests/tf_env.py keeps it apart): its pins from there.
    "tensorflow": (TENSORFLOW, TF_KERAS),
}


def _pin(distribution: str) -> str:
    if "==" in distribution:
        return distribution
    if distribution == "torch":
        return f"torch=={TORCH_VERSION}"  # never the index's torch: that is the CUDA build
    return f"{distribution}=={importlib.metadata.version(distribution)}"


def framework_image(*frameworks: str, env: dict[str, str] | None = None) -> sky.Image:
    """An image with ``frameworks`` installed at the client's versions (torch: the CPU build)."""
    pins = [f"numpy=={importlib.metadata.version('numpy')}"]
    for name in frameworks:
        pins.extend(_pin(d) for d in FRAMEWORKS[name])
    return sky.Image(pip=pins, env=env or {})


def _uv_config(cache: Path) -> str:
    return f'cache-dir = "{cache}"\nfind-links = ["{WHEELS}"]\n'


def _own(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


@contextlib.contextmanager
def framework_hosts(hosts: Sequence[SSHTestHost]) -> Iterator[None]:
    """While open, ``hosts`` install torch from the local wheels and keep a warm uv cache."""
    if not any(WHEELS.glob(f"torch-{TORCH_VERSION}-*.whl")):
        raise RuntimeError(f"the CPU torch wheel {TORCH_VERSION} is missing from {WHEELS}")
    base = CACHE_ROOT / CACHE_KEY
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    written: list[Path] = []
    with open(CACHE_ROOT / f"{CACHE_KEY}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for host in hosts:
                user = pwd.getpwnam(host.user)
                cache = base / host.user
                cache.mkdir(mode=0o700, exist_ok=True)
                if cache.stat().st_uid != user.pw_uid:  # the user was made again: new uid
                    _own(cache, user.pw_uid, user.pw_gid)
                config = host.home / ".config" / "uv"
                config.mkdir(parents=True, exist_ok=True)
                (config / "uv.toml").write_text(_uv_config(cache))
                for path in (host.home / ".config", config, config / "uv.toml"):
                    os.chown(path, user.pw_uid, user.pw_gid)
                written.append(host.home / ".config")
            yield
        finally:
            # Other tests on these hosts get them as the farm made them.
            for path in written:
                shutil.rmtree(path, ignore_errors=True)
