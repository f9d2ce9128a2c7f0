"""Bootstrap a node through any remote shell: the steps SSH and Kubernetes pods share.

A :class:`RemoteShell` runs a command (stdin in, lines out, an exit code back) and
uploads files; ``SSHConnection`` is one (an SSH session), and the Kubernetes transport is
another (``pods/exec``). :func:`bootstrap_node` is what every transport does with one:

1. one probe command (:func:`probe_node`) tells the node's platform, whether uv and which
   wheel sets are there (and what else the transport asks, such as SSH's sweep scan);
   when the platform matches the client's, the client's own ``uv`` binary is uploaded
   (no download on the node);
2. Skyward's wheels (:mod:`skyward.wheels`, fingerprinted once per pool) are uploaded
   once per fingerprint;
3. ``Image.bootstrap()`` (plus plugin steps) runs through ``sh -s`` on stdin — nothing is
   left on disk, and it holds no secrets; its ``::skyward:`` markers become progress
   events and every other line a log line.

It returns the agent's Python, which the transport then starts its agent with.
"""

from __future__ import annotations

import platform
import secrets
import shlex
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from attrs import frozen

from skyward import plugins
from skyward.wheels import NodeWheels, build_node_wheels

if TYPE_CHECKING:
    from skyward.image import Image
    from skyward.provider import BootstrapReporter
    from skyward.spec import ComputeSpec

__all__ = ["HOME", "Probe", "RemoteShell", "ShellResult", "bootstrap_node", "probe_node"]

HOME = ".skyward"
"""Skyward's directory on a node, relative to the remote shell's home directory."""
_TAIL = 25


class ShellResult(Protocol):
    @property
    def code(self) -> int: ...

    @property
    def output(self) -> str | bytes:
        """stdout and stderr, merged."""
        ...


class RemoteShell(Protocol):
    """A shell on a node, as :func:`bootstrap_node` needs one. Commands run in the
    remote home directory, under ``sh``, with stderr merged into stdout."""

    def run(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        on_line: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> ShellResult: ...

    def upload(self, files: list[Path], remote_dir: str) -> None:
        """Copy ``files`` into ``remote_dir`` (created if missing; relative to home)."""
        ...


def _text(output: str | bytes) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output


@frozen
class Probe:
    """What one command told about a node before anything is uploaded."""

    platform: str
    """``uname -sm``: ``Linux x86_64``."""
    has_uv: bool
    wheels: frozenset[str]
    """Fingerprints of the complete wheel sets on the node."""
    output: str
    """The whole output, for what the caller's ``extra`` script printed."""


_HAS_UV = "::skyward:has-uv"
_WHEELS_MARK = "::skyward:wheels"


def probe_node(shell: RemoteShell, extra: str = "") -> Probe:
    """One command for everything the client must know before uploading (each was its
    own command, and every command is a channel and a shell on the node); ``extra`` is
    more shell script to run in the same command."""
    script = (
        f"uname -sm; test -x {HOME}/bin/uv && echo {_HAS_UV}\n"
        f"for f in {HOME}/wheels/*/.complete; do\n"
        f'  [ -e "$f" ] && f=${{f%/.complete}} && echo "{_WHEELS_MARK} ${{f##*/}}"\n'
        f"done\n"
        f"{extra}"
    )
    output = _text(shell.run(f"sh -c {shlex.quote(script)}", timeout=60).output)
    lines = output.splitlines()
    wheels = frozenset(
        line.split()[1] for line in lines if line.startswith(_WHEELS_MARK) and line.split()[1:]
    )
    platform_line = lines[0].split() if lines else []
    return Probe(
        platform=" ".join(platform_line[:2]),
        has_uv=_HAS_UV in lines,
        wheels=wheels,
        output=output,
    )


# The wheels a pool's nodes install, built (or fingerprinted) once per pool: every
# node's bootstrap asked for them, and fingerprinting an editable install hashes its
# whole source tree (about 10 ms of the client's GIL per node).
_WHEELS: dict[tuple[str, bool], NodeWheels] = {}
_WHEELS_LOCK = threading.Lock()
_WHEELS_KEPT = 8  # pools remembered; a process rarely opens more at once


def _node_wheels(pool_id: str, *, include_binary: bool) -> NodeWheels:
    with _WHEELS_LOCK:  # the other nodes wait for the first, which they would redo
        key = (pool_id, include_binary)
        wheels = _WHEELS.get(key) if pool_id else None
        if wheels is None:
            wheels = build_node_wheels(include_binary=include_binary)
            if pool_id:
                while len(_WHEELS) >= _WHEELS_KEPT:
                    del _WHEELS[next(iter(_WHEELS))]
                _WHEELS[key] = wheels
        return wheels


def bootstrap_node(
    shell: RemoteShell,
    image: Image,
    reporter: BootstrapReporter,
    *,
    spec: ComputeSpec | None,
    fail: Callable[[str], Exception],
    ttl: int = 0,
    pool_id: str = "",
    probe: Probe | None = None,
) -> str:
    """Steps 1 to 3 above on ``shell``; the agent's Python. ``fail(message)`` makes the
    exception raised when the script fails (the transport names the node in it);
    ``probe``, when the transport probed already; ``pool_id`` lets the pool's nodes share
    one fingerprint of the wheels."""
    if probe is None:
        probe = probe_node(shell)
    same_platform = _upload_uv(shell, probe, reporter)
    wheels = _node_wheels(pool_id, include_binary=same_platform)
    remote_wheels = f"{HOME}/wheels/{wheels.fingerprint}"
    if wheels.fingerprint in probe.wheels:
        reporter.step("upload", cached=True)
    else:
        reporter.step("upload")
        # Uploaded beside the target and renamed into place, complete: a pool opening on
        # the same node at the same time never installs from a half-written set.
        incoming = f"{HOME}/wheels/.incoming-{secrets.token_hex(6)}"
        shell.upload(wheels.files, incoming)
        shell.run(
            f"touch {incoming}/.complete; [ -e {remote_wheels}/.complete ] || "
            f"{{ rm -rf {remote_wheels}; mv {incoming} {remote_wheels}; }}; rm -rf {incoming}"
        )
    script = image.bootstrap(ttl, steps=plugins.bootstrap_steps(image, spec))
    tail: list[str] = []
    step = "start"
    python = ""

    def on_line(line: str) -> None:
        nonlocal step, python
        if line.startswith("::skyward:step "):
            step = line.split(maxsplit=1)[1]
            reporter.step(step)
        elif line.startswith("::skyward:cached "):
            reporter.step(line.split(maxsplit=1)[1], cached=True)
        elif line.startswith("::skyward:python "):
            python = line.split(maxsplit=1)[1]
        else:
            tail.append(line)
            del tail[:-_TAIL]
            reporter.log(line)

    command = f'SKYWARD_WHEELS="$HOME/{remote_wheels}" exec sh -s'
    result = shell.run(command, stdin=script.encode(), on_line=on_line)
    if result.code != 0:
        output = "\n".join(tail)
        raise fail(f"bootstrap step {step!r} failed (exit {result.code}):\n{output}")
    if not python:
        raise fail("bootstrap finished without naming the agent's Python")
    return python


def _upload_uv(shell: RemoteShell, probe: Probe, reporter: BootstrapReporter) -> bool:
    """Give the node the client's uv when the platforms match (the script finds one
    otherwise). Returns whether the node has the client's platform."""
    local = f"{platform.system()} {platform.machine()}"
    if probe.platform != local:
        reporter.log(f"node is {probe.platform}, client {local}: the node installs uv itself")
        return False
    if not probe.has_uv:
        from skyward.providers.local_env import find_uv

        # Renamed into place: another pool opening on this node may be running the uv
        # already there, and writing into a running binary fails (ETXTBSY).
        incoming = f"{HOME}/bin/.incoming-{secrets.token_hex(6)}"
        shell.upload([Path(find_uv())], incoming)
        shell.run(
            f"chmod 755 {incoming}/uv && mv -f {incoming}/uv {HOME}/bin/uv; rm -rf {incoming}"
        )
    return True
