"""AWS end to end: a pool on AWS-on-moto whose instances are SSH test hosts.

moto launches no machines, so the connection hook (``resolve_ssh_host``, the extension
point a user needs for a bastion or private addresses) maps each instance onto an SSH
test host. Before answering, it plays cloud-init: it reads the instance's user-data from
the EC2 API and runs that script, then puts the host key and authorized key it wrote
into the test host — so the pinned host key and the per-pool client key are checked for
real.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

import skyward as sky
from skyward import plugins
from skyward.provider import Instance
from skyward.ssh.hosts import SSHHost
from tests.aws_fakes import AwsEnv
from tests.ssh_hosts import SSHTestHost

pytestmark = pytest.mark.usefixtures("fresh_plugins")


class CloudInit:
    """The test's connection hook: instance → test host, after running its user-data."""

    def __init__(self, hosts: list[SSHTestHost], scratch: Path) -> None:
        self.hosts = hosts
        self.scratch = scratch
        self.mapped: dict[str, SSHTestHost] = {}
        self.lock = threading.Lock()
        self.saved: dict[str, tuple[bytes, bytes, bytes]] = {}

    @sky.hookimpl
    def resolve_ssh_host(self, instance: Instance, host: SSHHost) -> SSHHost:
        with self.lock:
            target = self.mapped.get(instance.id)
            if target is None:
                target = self.hosts[len(self.mapped)]
                self.mapped[instance.id] = target
                self._boot(instance.id, host.user or "ubuntu", target)
        return SSHHost(target.address, user=target.user, port=target.port)

    def _boot(self, instance_id: str, username: str, target: SSHTestHost) -> None:
        ec2 = boto3.client("ec2", region_name="us-east-1")
        encoded = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        script = base64.b64decode(encoded["UserData"]["Value"]).decode()
        root = self.scratch / instance_id
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
        new_key = (root / "home" / username / ".ssh/authorized_keys").read_bytes()
        authorized.write_bytes(new_key)  # only the pool's key, as on a fresh machine
        target.restart()

    def restore(self) -> None:
        for target in self.mapped.values():
            key, public, authorized = self.saved[target.user]
            key_file = target.state_dir / "ssh_host_ed25519_key"
            key_file.write_bytes(key)
            key_file.with_suffix(".pub").write_bytes(public)
            (target.home / ".ssh" / "authorized_keys").write_bytes(authorized)
            target.restart()


@pytest.fixture
def cloud(aws_env: AwsEnv, ssh_hosts: Any, tmp_path: Path) -> Iterator[CloudInit]:
    hook = CloudInit(ssh_hosts(2), tmp_path / "cloud-init")
    plugins.get_plugin_manager().register(hook, name="test-cloud-init")
    plugins.reset(plugins.get_plugin_manager())
    try:
        yield hook
    finally:
        plugins.get_plugin_manager().unregister(name="test-cloud-init")
        hook.restore()


@sky.compute
def where() -> tuple[int, str, str]:
    import getpass

    info = sky.instance_info()
    return info.node, getpass.getuser(), info.job_id


@sky.compute
def boom() -> None:
    raise RuntimeError("inside the pool")


def _leftovers(pool_id: str) -> dict[str, list[Any]]:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    tag = [{"Name": "tag:skyward:pool", "Values": [pool_id]}]
    instances = [
        i["InstanceId"]
        for r in ec2.describe_instances(
            Filters=[*tag, {"Name": "instance-state-name", "Values": ["pending", "running"]}]
        )["Reservations"]
        for i in r["Instances"]
    ]
    return {
        "instances": instances,
        "launch_templates": ec2.describe_launch_templates()["LaunchTemplates"],
        "key_pairs": [
            k for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"].endswith(pool_id)
        ],
        "volumes": ec2.describe_volumes(Filters=tag)["Volumes"],
    }


def _aws() -> Any:
    return sky.AWS(ssh_cidr="127.0.0.1/32", instance_timeout=30)  # type: ignore[attr-defined]


POWEROFF_HARMLESS = {"SKYWARD_POWEROFF_CMD": "true"}


def test_two_node_pool_runs_and_leaves_nothing(aws_env: AwsEnv, cloud: CloudInit) -> None:
    events: list[Any] = []
    with sky.ComputePool(
        provider=_aws(),
        nodes=2,
        machine="m5.large",
        env=POWEROFF_HARMLESS,
        display="quiet",
        on_event=events.append,
    ) as pool:
        one = where() >> pool
        every = where() @ pool
        pool_id = pool.pool_id
        for host in cloud.mapped.values():
            (agent,) = [p for p in host.processes() if "skyward.agent" in p.cmdline()]
            assert "--on-expire=poweroff" in agent.cmdline(), "a lost client powers it off"
    assert one[2] == pool_id
    assert [e[0] for e in every] == [0, 1]
    assert {e[1] for e in every} == {h.user for h in cloud.mapped.values()}
    provisioned = [e for e in events if isinstance(e, sky.InstanceProvisioned)]
    assert [e.provider for e in provisioned] == ["aws", "aws"]
    expected = aws_env.pricing.prices[("us-east-1", "m5.large")]
    assert all(e.price_on_demand == pytest.approx(expected) for e in provisioned)
    assert all(e.spot and e.price_spot is not None for e in provisioned), "spot when available"
    final = events[-1]
    assert isinstance(final, sky.CostFinal)
    assert final.total_cost > 0
    assert _leftovers(pool_id) == {
        "instances": [],
        "launch_templates": [],
        "key_pairs": [],
        "volumes": [],
    }


def test_exception_in_the_pool_body_tears_everything_down(
    aws_env: AwsEnv, cloud: CloudInit
) -> None:
    pool = sky.ComputePool(provider=_aws(), nodes=2, cpu=2, env=POWEROFF_HARMLESS, display="quiet")
    with pytest.raises(RuntimeError, match="inside the pool"), pool:
        boom() >> pool
    assert _leftovers(pool.pool_id)["instances"] == []
    assert _leftovers(pool.pool_id)["key_pairs"] == []
    for host in cloud.mapped.values():
        assert not [p for p in host.processes() if "skyward.agent" in " ".join(p.cmdline())]
