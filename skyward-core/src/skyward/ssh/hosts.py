"""Where to connect: ``"user@host:port"`` strings, :class:`SSHHost` objects, ssh_config aliases."""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path

from attrs import evolve, field, frozen

from skyward.errors import ConfigurationError

__all__ = ["SSHHost", "parse_host"]

_TARGET = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?(?:\[(?P<ipv6>[^\]]+)\]|(?P<host>[^:@\s\[\]]+))(?::(?P<port>\d+))?$"
)


def _port(_: object, __: object, value: int | None) -> None:
    if value is not None and not 0 < value < 65536:
        raise ConfigurationError("hosts", f"port {value} is out of range", "Use 1..65535")


@frozen
class SSHHost:
    """One machine reachable over SSH.

    ``None`` fields are filled from ``~/.ssh/config`` (for a host alias), then from
    defaults: the current user, port 22, and the keys ssh would try.
    """

    host: str
    """Hostname, address, or an alias from ``~/.ssh/config``."""
    user: str | None = None
    port: int | None = field(default=None, validator=_port)
    identity_file: str | None = None
    """Private key to authenticate with; the ssh-agent and default keys otherwise."""
    jump: SSHHost | None = None
    """A bastion to reach ``host`` through (like ``ProxyJump``)."""

    @property
    def target(self) -> str:
        """``user@host:port`` as given (for messages)."""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{user}{host}{port}"

    def resolved(self, config_path: Path | None = None) -> SSHHost:
        """Apply ``~/.ssh/config`` (HostName, User, Port, IdentityFile, ProxyJump)."""
        path = config_path or Path.home() / ".ssh" / "config"
        found: dict[str, object] = {}
        if path.exists():
            import paramiko  # client-side only: nodes never resolve hosts

            config = paramiko.SSHConfig.from_path(str(path))
            found = dict(config.lookup(self.host))
        hostname = str(found.get("hostname", self.host))
        user = self.user or _str(found.get("user")) or getpass.getuser()
        port = self.port or int(str(found.get("port", 22)))
        identity = self.identity_file
        if identity is None and "identityfile" in found:
            files = found["identityfile"]
            if isinstance(files, list) and files:
                identity = os.path.expanduser(str(files[0]))
        jump = self.jump
        if jump is None and found.get("proxyjump"):
            jump = parse_host(str(found["proxyjump"]).split(",")[0])
        if jump is not None:
            jump = jump.resolved(config_path)
        return evolve(self, host=hostname, user=user, port=port, identity_file=identity, jump=jump)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_host(value: str | SSHHost) -> SSHHost:
    """``"user@host:port"`` (any part but host optional; ``[::1]:22`` for IPv6) → SSHHost."""
    if isinstance(value, SSHHost):
        return value
    if not isinstance(value, str):
        raise ConfigurationError(
            "hosts", f"{value!r} is not a host", 'Use "user@host:port" or sky.SSHHost(...)'
        )
    match = _TARGET.match(value.strip())
    if match is None:
        raise ConfigurationError(
            "hosts", f"{value!r} is not user@host:port", 'Use e.g. "ubuntu@10.0.0.5:22"'
        )
    port = int(match["port"]) if match["port"] else None
    return SSHHost(host=match["ipv6"] or match["host"], user=match["user"], port=port)
