"""Bootstrap a node through any remote shell: the steps SSH and Kubernetes pods share.

A :class:`RemoteShell` runs a command (stdin in, lines out, an exit code back) and
uploads files; ``SSHConnection`` is one (an SSH session), and the Kubernetes transport is
another (``pods/exec``). :func:`bootstrap_node` is what every transport does with one:

1. ``uname`` tells the node's platform; when it matches the client's, the client's own
   ``uv`` binary is uploaded (no download on the node);
2. Skyward's wheels (:mod:`skyward.wheels`) are uploaded once per fingerprint;
3. ``Image.bootstrap()`` (plus plugin steps) runs through ``sh -s`` on stdin — nothing is
   left on disk, and it holds no secrets; its ``::skyward:`` markers become progress
   events and every other line a log line.

It returns the agent's Python, which the transport then starts its agent with.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from skyward import plugins
from skyward.wheels import build_node_wheels

if TYPE_CHECKING:
    from skyward.image import Image
    from skyward.provider import BootstrapReporter
    from skyward.spec import ComputeSpec

__all__ = ["HOME", "RemoteShell", "ShellResult", "bootstrap_node"]

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


def bootstrap_node(
    shell: RemoteShell,
    image: Image,
    reporter: BootstrapReporter,
    *,
    spec: ComputeSpec | None,
    fail: Callable[[str], Exception],
    ttl: int = 0,
) -> str:
    """Steps 1 to 3 above on ``shell``; the agent's Python. ``fail(message)`` makes the
    exception raised when the script fails (the transport names the node in it)."""
    same_platform = _upload_uv(shell, reporter)
    wheels = build_node_wheels(include_binary=same_platform)
    remote_wheels = f"{HOME}/wheels/{wheels.fingerprint}"
    if shell.run(f"test -f {remote_wheels}/.complete").code == 0:
        reporter.step("upload", cached=True)
    else:
        reporter.step("upload")
        shell.upload(wheels.files, remote_wheels)
        shell.run(f"touch {remote_wheels}/.complete")
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


def _upload_uv(shell: RemoteShell, reporter: BootstrapReporter) -> bool:
    """Give the node the client's uv when the platforms match (the script finds one
    otherwise). Returns whether the node has the client's platform."""
    probe = shell.run(f"uname -sm; test -x {HOME}/bin/uv && echo has-uv")
    lines = _text(probe.output).split()
    remote = " ".join(lines[:2])
    local = f"{platform.system()} {platform.machine()}"
    if remote != local:
        reporter.log(f"node is {remote}, client {local}: the node installs uv itself")
        return False
    if "has-uv" not in lines:
        from skyward.providers.local_env import find_uv

        shell.upload([Path(find_uv())], f"{HOME}/bin")
        shell.run(f"chmod 755 {HOME}/bin/uv")
    return True
