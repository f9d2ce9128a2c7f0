"""Skyward for the nodes: wheels built from the client's own installed distributions.

Nodes must run exactly the Skyward the client runs. Rather than installing "skyward" from
an index (which could resolve to another version), the client ships what it has:

- pure-Python distributions (skyward-core and its pure dependencies) are repacked from
  their installed files into wheels — or, for an editable install, built from the
  source tree with ``uv build``;
- compiled distributions (psutil, ...) are repacked too when the node has the client's
  platform (so a node with no index access still works); for another platform they are
  pinned to the client's exact version and installed from the index.

Plugins whose code must run on the nodes too (skyward-integrations: the code that sets up
torch/JAX/... in each worker) say so with an entry point in group ``skyward.node``
(:data:`NODE_GROUP`); their distributions and what they need are shipped the same way.

The result is cached under ``~/.cache/skyward/wheels/<fingerprint>``; the fingerprint
changes when any shipped version or editable source file changes.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from attrs import frozen

from skyward.hookspecs import NODE_GROUP

__all__ = ["NODE_GROUP", "NodeWheels", "build_node_wheels", "closure", "node_distributions"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")
# Needed on the client only (to build environments, to speak SSH), never on a node:
# the agent imports neither.
_CLIENT_ONLY = {"uv", "paramiko"}
ROOT_DISTRIBUTION = "skyward-core"


@frozen
class NodeWheels:
    """What a node installs to run the client's Skyward."""

    directory: Path
    """Holds the ``*.whl`` files and ``requirements.txt``."""
    fingerprint: str
    wheels: tuple[Path, ...]
    pinned: tuple[str, ...]
    """``name==version`` of compiled distributions, installed from the index."""

    @property
    def files(self) -> list[Path]:
        return [*self.wheels, self.directory / "requirements.txt"]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    names = []
    for requirement in dist.requires or []:
        if ";" in requirement and "extra" in requirement.split(";", 1)[1]:
            continue
        match = _NAME.match(requirement)
        if match is not None and _canonical(match.group(0)) not in _CLIENT_ONLY:
            names.append(match.group(0))
    return names


def node_distributions() -> list[str]:
    """Installed distributions that declared a ``skyward.node`` entry point."""
    names = set()
    for entry in metadata.entry_points(group=NODE_GROUP):
        if entry.dist is not None:
            names.add(entry.dist.metadata["Name"])
    return sorted(names)


def closure(root: str = ROOT_DISTRIBUTION, *more: str) -> list[metadata.Distribution]:
    """``root`` (and ``more``) with every distribution they need at run time, as
    installed here."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [root, *more]
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist
        todo.extend(_requirement_names(dist))
    return [seen[k] for k in sorted(seen)]


def _editable_source(dist: metadata.Distribution) -> Path | None:
    raw = dist.read_text("direct_url.json")
    if not raw:
        return None
    info = json.loads(raw)
    if not info.get("dir_info", {}).get("editable"):
        return None
    url = str(info.get("url", ""))
    return Path(url.removeprefix("file://")) if url.startswith("file://") else None


def _is_pure(dist: metadata.Distribution) -> bool:
    wheel = dist.read_text("WHEEL") or ""
    return "Root-Is-Purelib: true" in wheel


def _source_digest(source: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(source.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and ".venv" not in path.parts:
            digest.update(str(path.relative_to(source)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _wheel_tag(dist: metadata.Distribution) -> str:
    for line in (dist.read_text("WHEEL") or "").splitlines():
        if line.startswith("Tag:"):
            return line.split(":", 1)[1].strip()
    return "py3-none-any"


def _fingerprint(dists: list[metadata.Distribution], include_binary: bool) -> str:
    digest = hashlib.sha256(b"binary" if include_binary else b"pure")
    for dist in dists:
        digest.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
        source = _editable_source(dist)
        if source is not None:
            digest.update(_source_digest(source).encode())
    return digest.hexdigest()[:16]


def _record_line(name: str, data: bytes) -> list[str]:
    hashed = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={hashed}", str(len(data))]


def _repack(dist: metadata.Distribution, out: Path) -> Path:
    """A wheel of an installed distribution, from its own file list and wheel tag."""
    name = re.sub(r"[-.]+", "_", dist.metadata["Name"])
    wheel_path = out / f"{name}-{dist.version}-{_wheel_tag(dist)}.whl"
    records: list[list[str]] = []
    record_name = ""
    with zipfile.ZipFile(wheel_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in dist.files or []:
            relative = str(file)
            if relative.endswith("RECORD"):
                record_name = relative
                continue
            if "__pycache__" in relative or relative.startswith(".."):
                continue  # bytecode is rebuilt; files outside site-packages are scripts
            if relative.endswith(("INSTALLER", "REQUESTED", "direct_url.json")):
                continue
            data = Path(str(dist.locate_file(file))).read_bytes()
            archive.writestr(relative, data)
            records.append(_record_line(relative, data))
        rows = io.StringIO()
        csv.writer(rows, lineterminator="\n").writerows([*records, [record_name, "", ""]])
        archive.writestr(record_name, rows.getvalue())
    return wheel_path


def _build_editable(source: Path, out: Path, uv: str) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [uv, "build", "--wheel", "--quiet", "--out-dir", tmp, str(source)],
            check=True,
            capture_output=True,
        )
        built = next(Path(tmp).glob("*.whl"))
        return Path(shutil.move(str(built), out / built.name))


def build_node_wheels(cache_dir: Path | None = None, *, include_binary: bool = False) -> NodeWheels:
    """Wheels and pins for the client's Skyward; built once per fingerprint.

    :param include_binary: the node has the client's platform, so compiled
        distributions are shipped as wheels too instead of pinned.
    """
    from skyward.providers.local_env import find_uv

    dists = closure(ROOT_DISTRIBUTION, *node_distributions())
    fingerprint = _fingerprint(dists, include_binary)
    root = (cache_dir or Path.home() / ".cache" / "skyward" / "wheels") / fingerprint
    done = root / ".complete"
    if not done.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{fingerprint}-", dir=root.parent))
        pinned: list[str] = []
        for dist in dists:
            source = _editable_source(dist)
            if source is not None:
                _build_editable(source, staging, find_uv())
            elif include_binary or _is_pure(dist):
                _repack(dist, staging)
            else:
                pinned.append(f"{dist.metadata['Name']}=={dist.version}")
        (staging / "requirements.txt").write_text("".join(f"{p}\n" for p in pinned))
        (staging / ".complete").write_text(fingerprint)
        try:
            staging.rename(root)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process won the race
    wheels = tuple(sorted(root.glob("*.whl")))
    pins = tuple(line for line in (root / "requirements.txt").read_text().splitlines() if line)
    return NodeWheels(directory=root, fingerprint=fingerprint, wheels=wheels, pinned=pins)
