"""Cloud machines for tests: a provider's instances become SSH test hosts.

No fake cloud launches machines, so the connection hook (``resolve_ssh_host``, the extension
point a user needs for a bastion or private addresses) maps each instance onto an SSH test
host. Before answering it plays cloud-init: it runs the instance's own user-data (from the
fake API), then puts the host key and authorized key that script wrote into the test host,
so the pinned host key and the per-pool client key are checked for real.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from skyward import plugins
from skyward.hookspecs import hookimpl
from skyward.provider import Instance
from skyward.ssh.hosts import SSHHost
from tests.ssh_hosts import SSHTestHost

__all__ = ["CloudInit", "registered"]


class CloudInit:
    """A connection hook (``resolve_ssh_host``) for tests: instance → SSH test host, after
    playing cloud-init there with the user-data ``user_data(instance)`` returns (the EC2
    API's, a droplet's, a Verda startup script). Only ``provider``'s instances when given;
    others pass on to the next hook. ``restore()`` puts the hosts back."""

    def __init__(
        self,
        hosts: list[SSHTestHost],
        scratch: Path,
        user_data: Callable[[Instance], str],
        provider: str | None = None,
    ) -> None:
        self.hosts = hosts
        self.scratch = scratch
        self.user_data = user_data
        self.provider = provider
        self.mapped: dict[str, SSHTestHost] = {}
        self.lock = threading.Lock()
        self.saved: dict[str, tuple[bytes, bytes, bytes]] = {}

    @hookimpl
    def resolve_ssh_host(self, instance: Instance, host: SSHHost) -> SSHHost | None:
        if self.provider is not None and instance.provider != self.provider:
            return None
        with self.lock:
            target = self.mapped.get(instance.id)
            if target is None:
                target = self.hosts[len(self.mapped)]
                self.mapped[instance.id] = target
                self._boot(instance, host.user or "root", target)
        return SSHHost(target.address, user=target.user, port=target.port)

    def _boot(self, instance: Instance, username: str, target: SSHTestHost) -> None:
        script = self.user_data(instance)
        root = self.scratch / instance.id
        env = {"PATH": "/usr/bin:/bin", "SKYWARD_ROOT": str(root), "SKYWARD_POWEROFF_CMD": "true"}
        runner = subprocess.Popen(["sh"], stdin=subprocess.PIPE, env=env, start_new_session=True)
        runner.communicate(script.encode(), timeout=30)
        assert runner.returncode == 0
        os.killpg(runner.pid, signal.SIGKILL)  # the self-destruct timer: not on this machine
        key_file = target.state_dir / "ssh_host_ed25519_key"
        authorized = target.home / ".ssh" / "authorized_keys"
        self.saved[target.user] = (
            key_file.read_bytes(),
            key_file.with_suffix(".pub").read_bytes(),
            authorized.read_bytes(),
        )
        shutil.copyfile(root / "etc/ssh/ssh_host_ed25519_key", key_file)
        shutil.copyfile(root / "etc/ssh/ssh_host_ed25519_key.pub", key_file.with_suffix(".pub"))
        home = root / ("root" if username == "root" else f"home/{username}")
        authorized.write_bytes((home / ".ssh/authorized_keys").read_bytes())
        target.restart()

    def restore(self) -> None:
        for target in self.mapped.values():
            key, public, authorized = self.saved[target.user]
            key_file = target.state_dir / "ssh_host_ed25519_key"
            key_file.write_bytes(key)
            key_file.with_suffix(".pub").write_bytes(public)
            (target.home / ".ssh" / "authorized_keys").write_bytes(authorized)
            target.restart()


@contextmanager
def registered(*hooks: CloudInit) -> Iterator[None]:
    """Register the hooks (the last one is asked first) and put every host back after."""
    manager = plugins.get_plugin_manager()
    names = [f"test-cloud-init-{i}" for i in range(len(hooks))]
    for hook, name in zip(hooks, names, strict=True):
        manager.register(hook, name=name)
    plugins.reset(manager)
    try:
        yield
    finally:
        for hook, name in zip(hooks, names, strict=True):
            manager.unregister(name=name)
            hook.restore()
