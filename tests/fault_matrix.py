"""The fault matrix: every provider x every way a pool can end or break.

``tests/test_fault_matrix.py`` runs one test per cell (a :class:`Target` x a :class:`Fault`)
and checks two things after each: **nothing is left** (what the target's
:meth:`Target.leftovers` lists is empty) and **no task was lost or doubled** (every call
appends a line to its own file in a :class:`Ledger` directory on the node side, when it
starts and when it ends, so a test counts executions where they happen, not where the
client believes they happened). ``docs/reliability.md`` is rendered from the same
declarations and a run of the suite (``make reliability-doc``).

The protocol a provider joins by
================================

A provider joins the matrix by adding ONE class to :data:`TARGETS`: a subclass of
:class:`Target` (its fake, its environment and its faults). The suite never names a
provider. A target declares:

``name``, ``provider``
    The cell's column title and the registry name ``skyward down --provider`` takes.
``resources``
    What :meth:`Target.leftovers` looks for, in words (the doc prints it).
``nodes``
    Nodes per pool (2 unless the fault needs one, see :meth:`Target.nodes_for`).
``not_applicable``
    ``{Fault: reason}``: a fault that cannot happen on this provider (no API to throttle
    on a machine you own). The cell is documented "n/a" with the reason and not run;
    every other cell must really run.
``known_bugs``
    ``{Fault: text}``: a cell that fails today because of a known defect; it runs as a
    strict ``xfail`` (it fails the suite the day it starts passing, so the marker goes)
    and the doc shows the defect.
``injections``
    ``{Fault: text}``: how this target injects each fault (for the doc).

and implements, for a running cell:

:meth:`Target.setup` (``request``, ``fault``)
    Bring up its fake and hosts through pytest fixtures (``request.getfixturevalue``).
:meth:`Target.config` / :meth:`Target.pool_options`
    The ``ProviderConfig`` of a pool and any extra ``ComputePool`` options.
:meth:`Target.client_args` / :meth:`Target.client_env` and the static
:meth:`Target.client_provider`
    How a separate client program (``tests/fault_client.py``, for Ctrl-C, SIGTERM and
    SIGKILL) builds the same provider: JSON-able arguments in, a config out.
:meth:`Target.leftovers` (``pool_id``)
    ``{kind: [what is left]}`` for every kind in ``resources``.
:meth:`Target.partial_launch`, :meth:`Target.api_faults` (``phase``),
:meth:`Target.lose_node` (``pool``, ``node``), :meth:`Target.partition` (``seconds``)
    Inject a fault. The defaults raise :class:`NotApplicableError`: a target overrides
    only what applies to it.
:meth:`Target.cleanup` (``pool_id``)
    Remove what a failed (or known-bug) cell left, so the next cell starts clean.

A new provider's target, in outline (``AWSTarget`` below is the complete model: a fake API
driven by the real SDK, instances mapped onto SSH test hosts by ``resolve_ssh_host``)::

    class DigitalOceanTarget(Target):
        name, provider = "DigitalOcean", "digitalocean"
        resources = ("droplets tagged with the pool", "SSH keys `skyward-<pool>`", ...)
        injections = {Fault.PARTIAL_LAUNCH: "the fake refuses the second droplet", ...}

        def setup(self, request, fault):  # the fake API, hosts, the cloud-init hook
            self.fake = request.getfixturevalue("do_fake")
        def config(self): return sky.DigitalOcean(token="fake", ...)
        def client_args(self): return {...}          # JSON for the client program
        @staticmethod
        def client_provider(args): ...               # same config, in that program
        def leftovers(self, pool_id): return {"droplets": [...], "ssh keys": [...]}
        @contextlib.contextmanager
        def partial_launch(self): ...                # and api_faults, lose_node, ...

    TARGETS = (LocalTarget, SSHTarget, AWSTarget, DigitalOceanTarget)

then ``make reliability-doc`` (the doc grows a column; its test fails until it is
regenerated).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest

import skyward as sky
from skyward.provider import Instance, ProviderConfig
from tests.conftest import agent_processes, wait_until
from tests.ssh_hosts import ClientKey, NamespaceHost, SSHTestHost, kill_user_processes

ROOT = Path(__file__).resolve().parent.parent


class Fault(enum.Enum):
    """The rows of the matrix; each value is its title in the doc."""

    RETURN = "normal return"
    EXCEPTION = "exception"
    CTRL_C = "Ctrl-C"
    SIGTERM = "SIGTERM"
    SIGKILL_DOWN = "client SIGKILL, then `skyward down`"
    PARTIAL_LAUNCH = "partial launch failure"
    API_FAULTS_LAUNCH = "API throttling and 5xx during launch"
    API_FAULTS_TEARDOWN = "API throttling and 5xx during teardown"
    NODE_LOSS = "node loss mid-call"
    PARTITION = "network partition mid-call"


# What the suite does and checks in each row, whatever the provider (rendered in the doc).
FAULT_CHECKS: dict[Fault, str] = {
    Fault.RETURN: "4 calls as one batch over 2 nodes, then the `with` block ends: each "
    "call started and ended exactly once, the results came back.",
    Fault.EXCEPTION: "one call, then a call that raises, then the block is left by the "
    "exception: the caller gets the remote `RuntimeError`; each call ran exactly once.",
    Fault.CTRL_C: "a client program opens the pool, runs a call, starts a 600 s call and "
    "gets SIGINT while it runs: it exits with `KeyboardInterrupt`; the first call ran "
    "once, the interrupted one started once and never ended (not re-run).",
    Fault.SIGTERM: "as Ctrl-C, with SIGTERM: exit status 143, same ledger checks.",
    Fault.SIGKILL_DOWN: "as Ctrl-C, but the client is SIGKILLed (agents' heartbeat "
    "timeout 300 s, so only the sweep can clean up); then `skyward down --provider P "
    "--pool ID` runs and must exit 0; the ledger as for Ctrl-C.",
    Fault.PARTIAL_LAUNCH: "a 2-node pool whose second node cannot be had: opening the "
    "pool raises; no call ran.",
    Fault.API_FAULTS_LAUNCH: "throttling and 5xx answers armed on the launch calls: the "
    "pool still opens (retries), every armed fault was really answered, 4 calls ran "
    "exactly once.",
    Fault.API_FAULTS_TEARDOWN: "the pool runs 4 calls (each once), then throttling and "
    "5xx answers are armed on the teardown calls before the block ends: every armed "
    "fault was answered and teardown still removed everything.",
    Fault.NODE_LOSS: "the node of a 30 s call is lost while the call runs: the caller gets "
    "`WorkerLostError` (no hang), the call started once and was not re-run; 4 more calls "
    "then run exactly once on the pool.",
    Fault.PARTITION: "1-node pool; the link to the node is cut for 3 s during a 5 s "
    "call: the call completes, once; one more call runs once.",
}

LEAVES_NOTHING = "0 resources left"


class NotApplicableError(Exception):
    """Raised by a target's injector for a fault it cannot have."""


# -- the node-side ledger --------------------------------------------------------------


def _note(ledger: str, call_id: str, word: str) -> None:
    """Append ``<word> <node>`` to ``<ledger>/<call_id>`` (runs on the node)."""
    import os as os_

    import skyward as sky_

    node = sky_.instance_info().node
    fd = os_.open(os_.path.join(ledger, call_id), os_.O_WRONLY | os_.O_APPEND | os_.O_CREAT)
    try:
        with contextlib.suppress(PermissionError):
            os_.fchmod(fd, 0o666)  # another node's user may append (a doubled call)
        os_.write(fd, f"{word} {node}\n".encode())
    finally:
        os_.close(fd)


@sky.compute
def record(ledger: str, call_id: str, seconds: float = 0.0) -> str:
    """Note the call's start, nap ``seconds``, note its end."""
    import time as time_

    _note(ledger, call_id, "start")
    time_.sleep(seconds)
    _note(ledger, call_id, "end")
    return call_id


@sky.compute
def record_then_fail(ledger: str, call_id: str) -> None:
    _note(ledger, call_id, "start")
    _note(ledger, call_id, "end")
    raise RuntimeError("inside the pool")


class Ledger:
    """A directory every node's user may write: one file per call id."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o777)

    @classmethod
    def fresh(cls) -> Ledger:
        return cls(Path(tempfile.mkdtemp(prefix="skyward-ledger-")))

    def __str__(self) -> str:
        return str(self.directory)

    def lines(self, call_id: str) -> list[str]:
        path = self.directory / call_id
        return path.read_text().splitlines() if path.exists() else []

    def count(self, call_id: str, word: str) -> int:
        return sum(1 for line in self.lines(call_id) if line.split()[0] == word)

    def node_of(self, call_id: str) -> int:
        return int(self.lines(call_id)[0].split()[1])

    def wait_started(self, call_id: str, timeout: float = 60.0) -> None:
        assert wait_until(lambda: self.count(call_id, "start") > 0, timeout), (
            f"call {call_id} never started"
        )

    def assert_once(self, *call_ids: str) -> None:
        for call_id in call_ids:
            assert (self.count(call_id, "start"), self.count(call_id, "end")) == (1, 1), (
                f"call {call_id} should have run exactly once: {self.lines(call_id)}"
            )

    def assert_cut_short(self, call_id: str) -> None:
        """Started exactly once and never ended: neither lost before it ran nor re-run."""
        assert (self.count(call_id, "start"), self.count(call_id, "end")) == (1, 0), (
            f"call {call_id} should have started once and been cut short: {self.lines(call_id)}"
        )

    def call_ids(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir())

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


# -- the protocol ------------------------------------------------------------------------


class Target:
    """One provider's column of the matrix. See the module docstring for the protocol."""

    name: ClassVar[str]
    provider: ClassVar[str]
    resources: ClassVar[tuple[str, ...]]
    not_applicable: ClassVar[Mapping[Fault, str]] = {}
    known_bugs: ClassVar[Mapping[Fault, str]] = {}
    injections: ClassVar[Mapping[Fault, str]] = {}

    def nodes_for(self, fault: Fault) -> int:
        return 1 if fault is Fault.PARTITION else 2

    def setup(self, request: pytest.FixtureRequest, fault: Fault) -> None:
        """Bring up the fake and the hosts for one cell."""

    def config(self) -> ProviderConfig:
        raise NotImplementedError

    def pool_options(self) -> dict[str, Any]:
        return {}

    def client_args(self) -> dict[str, Any]:
        """JSON-able arguments from which :meth:`client_provider` rebuilds :meth:`config`."""
        return {}

    def client_env(self) -> dict[str, str]:
        """Extra environment for the client program and ``skyward down``."""
        return {}

    def down_args(self) -> list[str]:
        """Extra arguments ``skyward down --provider P`` needs for this target."""
        return []

    @staticmethod
    def client_provider(args: dict[str, Any]) -> ProviderConfig:
        """Run in the client program: the provider config (register any hook here)."""
        raise NotImplementedError

    def leftovers(self, pool_id: str) -> dict[str, list[str]]:
        raise NotImplementedError

    def partial_launch(self) -> contextlib.AbstractContextManager[None]:
        """While active, a pool's launch fails part-way."""
        raise NotApplicableError

    def api_faults(self, phase: str) -> contextlib.AbstractContextManager[None]:
        """While active, the provider API answers throttling/5xx during ``phase``
        (``"launch"`` or ``"teardown"``); on exit, checks every armed fault was answered."""
        raise NotApplicableError

    def lose_node(self, pool: sky.ComputePool, node: int) -> None:
        """Node ``node`` of ``pool`` is lost (its machine or its agent dies) now."""
        raise NotApplicableError

    def partition(self, seconds: float) -> None:
        """Cut the link to node 0 for ``seconds`` (blocks until healed)."""
        raise NotApplicableError

    def cleanup(self, pool_id: str) -> None:
        """Remove what a failed cell left behind."""


def _agents_on(host: SSHTestHost, pool_id: str) -> list[str]:
    found = []
    for process in host.processes():
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(process.cmdline())
            if "skyward.agent" in cmdline and f"--job-id={pool_id}" in cmdline:
                found.append(f"{host.user}:{process.pid}")
    return found


def _host_from_dict(data: dict[str, Any]) -> SSHTestHost:
    return SSHTestHost(
        data["user"],
        data["address"],
        int(data["port"]),
        Path(data["home"]),
        data["host_key_public"],
        Path(data["state_dir"]),
    )


def _host_to_dict(host: SSHTestHost) -> dict[str, Any]:
    return {
        "user": host.user,
        "address": host.address,
        "port": host.port,
        "home": str(host.home),
        "host_key_public": host.host_key_public,
        "state_dir": str(host.state_dir),
        "sshd_pid": host.sshd_pid,
    }


# -- Local -------------------------------------------------------------------------------


class LocalTarget(Target):
    name = "Local"
    provider = "local"
    resources = ("agent processes of the pool", "node directories (the pool's temp dir)")
    not_applicable: ClassVar[Mapping[Fault, str]] = {
        Fault.PARTIAL_LAUNCH: "launch only makes directories on this machine; there is "
        "no machine to be refused",
        Fault.API_FAULTS_LAUNCH: "no provider API: nodes are processes on this machine",
        Fault.API_FAULTS_TEARDOWN: "no provider API: nodes are processes on this machine",
        Fault.PARTITION: "client and nodes share this machine's loopback: no link to cut",
    }
    injections: ClassVar[Mapping[Fault, str]] = {
        Fault.NODE_LOSS: "the node's agent process is SIGKILLed",
    }

    def config(self) -> ProviderConfig:
        return sky.Local()

    @staticmethod
    def client_provider(args: dict[str, Any]) -> ProviderConfig:
        return sky.Local()

    def leftovers(self, pool_id: str) -> dict[str, list[str]]:
        return {
            "agents": [str(p.pid) for p in agent_processes(pool_id)],
            "node directories": [
                str(p) for p in Path(tempfile.gettempdir()).glob(f"skyward-{pool_id}-*")
            ],
        }

    def lose_node(self, pool: sky.ComputePool, node: int) -> None:
        (agent,) = [
            p
            for p in agent_processes(pool.pool_id)
            if p.environ().get("SKYWARD_INSTANCE_ID") == f"{pool.pool_id}-node{node}"
        ]
        agent.kill()

    def cleanup(self, pool_id: str) -> None:
        for process in agent_processes(pool_id):
            with contextlib.suppress(psutil.Error):
                os.killpg(process.pid, signal.SIGKILL)
        for path in Path(tempfile.gettempdir()).glob(f"skyward-{pool_id}-*"):
            shutil.rmtree(path, ignore_errors=True)


# -- SSH ---------------------------------------------------------------------------------


class SSHTarget(Target):
    name = "SSH"
    provider = "ssh"
    resources = (
        "agent processes of the pool on every host",
        "node directories (`~/.skyward/pools/<pool>` on every host)",
    )
    not_applicable: ClassVar[Mapping[Fault, str]] = {
        Fault.API_FAULTS_LAUNCH: "the hosts are the user's machines: no provider API",
        Fault.API_FAULTS_TEARDOWN: "the hosts are the user's machines: no provider API",
    }
    injections: ClassVar[Mapping[Fault, str]] = {
        Fault.PARTIAL_LAUNCH: "the second host's sshd is stopped (connection refused)",
        Fault.NODE_LOSS: "the node's agent process is SIGKILLed on its host",
        Fault.PARTITION: "the node is an sshd in a network namespace; its veth link is "
        "set down (packets dropped both ways), then up",
    }

    hosts: list[SSHTestHost]
    key: ClientKey
    known_hosts: Path
    netns: NamespaceHost | None = None

    def setup(self, request: pytest.FixtureRequest, fault: Fault) -> None:
        self.key = request.getfixturevalue("ssh_client_key")
        if fault is Fault.PARTITION:
            self.netns = request.getfixturevalue("netns_host")
            self.hosts = [self.netns]
            self.known_hosts = request.getfixturevalue("tmp_path") / "known_hosts"
            self.known_hosts.write_text(self.netns.known_hosts_line + "\n")
        else:
            self.hosts = request.getfixturevalue("ssh_hosts")(2)
            self.known_hosts = request.getfixturevalue("ssh_known_hosts")

    def config(self) -> ProviderConfig:
        return self.client_provider(self.client_args())

    def client_args(self) -> dict[str, Any]:
        return {
            "hosts": [[h.address, h.user, h.port] for h in self.hosts],
            "key": str(self.key.private_path),
            "known_hosts": str(self.known_hosts),
        }

    def down_args(self) -> list[str]:
        """The hosts, the key and the known_hosts: ``skyward down`` cannot guess them."""
        hosts = [arg for h in self.hosts for arg in ("--host", f"{h.user}@{h.address}:{h.port}")]
        return [
            *hosts,
            "--identity",
            str(self.key.private_path),
            "--known-hosts",
            str(self.known_hosts),
        ]

    @staticmethod
    def client_provider(args: dict[str, Any]) -> ProviderConfig:
        return sky.SSH(
            hosts=[
                sky.SSHHost(address, user=user, port=port, identity_file=args["key"])
                for address, user, port in args["hosts"]
            ],
            known_hosts=args["known_hosts"],
            connect_timeout=5,
        )

    def leftovers(self, pool_id: str) -> dict[str, list[str]]:
        return {
            "agents": [a for h in self.hosts for a in _agents_on(h, pool_id)],
            "node directories": [
                f"{h.user}:{d}"
                for h in self.hosts
                if (d := h.home / ".skyward" / "pools" / pool_id).exists()
            ],
        }

    @contextlib.contextmanager
    def partial_launch(self) -> Iterator[None]:
        self.hosts[1].stop(drop_sessions=True)
        try:
            yield
        finally:
            self.hosts[1].start()

    def lose_node(self, pool: sky.ComputePool, node: int) -> None:
        host = self.hosts[node]
        for process in host.processes():
            with contextlib.suppress(psutil.Error):
                if "skyward.agent" in " ".join(process.cmdline()):
                    process.kill()

    def partition(self, seconds: float) -> None:
        assert self.netns is not None
        self.netns.partition(seconds).wait()

    def cleanup(self, pool_id: str) -> None:
        for host in self.hosts:
            host.kill_processes()
            shutil.rmtree(host.home / ".skyward" / "pools" / pool_id, ignore_errors=True)


# -- AWS ---------------------------------------------------------------------------------


class _ReloadedHost(SSHTestHost):
    """A test host whose sshd belongs to another process (the test's): a client program
    reloads it with SIGHUP (new host key, same sessions), as ``restart()`` would."""

    sshd: int = 0

    def restart(self, drop_sessions: bool = False) -> None:
        listening = self.log_path.read_text().count("Server listening")
        os.kill(self.sshd, signal.SIGHUP)
        assert wait_until(
            lambda: self.log_path.read_text().count("Server listening") > listening, 10, 0.02
        ), f"sshd of {self.target} did not reload"


def register_cloud_init(hosts: Sequence[SSHTestHost], scratch: Path) -> Any:
    """Register the clouds' connection hook (``tests/cloud_init.CloudInit``) for EC2."""
    from skyward import plugins
    from tests.aws_fakes import ec2_user_data
    from tests.cloud_init import CloudInit

    hook = CloudInit(list(hosts), scratch, ec2_user_data)
    plugins.get_plugin_manager().register(hook, name="test-cloud-init")
    plugins.reset(plugins.get_plugin_manager())
    return hook


def _host_keys(hosts: Sequence[SSHTestHost]) -> dict[str, tuple[bytes, bytes, bytes]]:
    """Each host's host key pair and authorized keys, which cloud-init replaces."""
    saved = {}
    for host in hosts:
        key_file = host.state_dir / "ssh_host_ed25519_key"
        saved[host.user] = (
            key_file.read_bytes(),
            key_file.with_suffix(".pub").read_bytes(),
            (host.home / ".ssh" / "authorized_keys").read_bytes(),
        )
    return saved


def _restore_host_keys(
    hosts: Sequence[SSHTestHost], saved: dict[str, tuple[bytes, bytes, bytes]]
) -> None:
    """Put back what :func:`_host_keys` saved (the farm serves the whole session)."""
    for host in hosts:
        key, public, authorized = saved[host.user]
        key_file = host.state_dir / "ssh_host_ed25519_key"
        key_file.write_bytes(key)
        key_file.with_suffix(".pub").write_bytes(public)
        (host.home / ".ssh" / "authorized_keys").write_bytes(authorized)
        host.restart()


class AWSTarget(Target):
    name = "AWS"
    provider = "aws"
    resources = (
        "instances (pending, running, stopping, stopped) tagged with the pool",
        "launch templates `skyward-<pool>`",
        "key pairs `skyward-<pool>`",
        "volumes tagged with the pool",
        "security groups tagged with the pool (the VPC's shared group is kept by design)",
        "agent processes of the pool on the hosts of instances not terminated (a "
        "terminated instance takes its processes and disk with it)",
    )
    injections: ClassVar[Mapping[Fault, str]] = {
        Fault.PARTIAL_LAUNCH: "EC2 Fleet has capacity for 1 of the 2 instances "
        "(`InsufficientInstanceCapacity` in `Errors`, moto fake)",
        Fault.API_FAULTS_LAUNCH: "Price List `GetProducts` throttled once, `CreateFleet` "
        "throttled twice (`RequestLimitExceeded`), "
        "`ImportKeyPair` answered 500 `InternalError`, `CreateLaunchTemplate` 503 "
        "`Unavailable`",
        Fault.API_FAULTS_TEARDOWN: "`TerminateInstances` throttled twice, `DeleteKeyPair` "
        "answered 503 `Unavailable`, `DescribeVolumes` 500 `InternalError`",
        Fault.NODE_LOSS: "the instance is terminated in the EC2 API and its machine "
        "disappears (sshd stopped, every process killed), as in a spot interruption. "
        "Note: the loss is reported only after the SSH reconnect gives up "
        "(`instance_timeout`, 15 s here, 300 s by default) and closing the pool spends "
        "that long again on the dead node; nothing asks EC2 whether the instance is gone",
        Fault.PARTITION: "the instance is an sshd in a network namespace; its veth link "
        "is set down, then up",
    }

    hosts: list[SSHTestHost]
    netns: NamespaceHost | None = None
    hook: Any = None
    saved: dict[str, tuple[bytes, bytes, bytes]]
    scratch: Path

    def setup(self, request: pytest.FixtureRequest, fault: Fault) -> None:
        request.getfixturevalue("fresh_plugins")
        self.aws_env = request.getfixturevalue("aws_env")
        if fault is Fault.PARTITION:
            self.netns = request.getfixturevalue("netns_host")
            self.hosts = [self.netns]
        else:
            self.hosts = request.getfixturevalue("ssh_hosts")(2)
        self.scratch = request.getfixturevalue("tmp_path") / "cloud-init"
        self.saved = _host_keys(self.hosts)
        self.hook = register_cloud_init(self.hosts, self.scratch)
        request.addfinalizer(self._restore)

    def _restore(self) -> None:
        from skyward import plugins

        with contextlib.suppress(ValueError):
            plugins.get_plugin_manager().unregister(name="test-cloud-init")
        _restore_host_keys(self.hosts, self.saved)

    def config(self) -> ProviderConfig:
        return sky.AWS(ssh_cidr="127.0.0.1/32", instance_timeout=15)  # type: ignore[no-any-return]

    def pool_options(self) -> dict[str, Any]:
        return {"cpu": 2, "env": {"SKYWARD_POWEROFF_CMD": "true"}}

    def client_args(self) -> dict[str, Any]:
        return {"hosts": [_host_to_dict(h) for h in self.hosts], "scratch": str(self.scratch)}

    def client_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "SKYWARD_CACHE"))}

    @staticmethod
    def client_provider(args: dict[str, Any]) -> ProviderConfig:
        hosts = []
        for data in args["hosts"]:
            base = _host_from_dict(data)
            host = _ReloadedHost(
                base.user, base.address, base.port, base.home, base.host_key_public,
                base.state_dir,
            )  # fmt: skip
            host.sshd = int(data["sshd_pid"])
            hosts.append(host)
        register_cloud_init(hosts, Path(args["scratch"]))
        return sky.AWS(ssh_cidr="127.0.0.1/32", instance_timeout=15)  # type: ignore[no-any-return]

    def _ec2(self) -> Any:
        import boto3

        return boto3.client("ec2", region_name="us-east-1")

    def _live_instances(self, pool_id: str) -> list[str]:
        reservations = self._ec2().describe_instances(
            Filters=[
                {"Name": "tag:skyward:pool", "Values": [pool_id]},
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                },
            ]
        )["Reservations"]
        return [i["InstanceId"] for r in reservations for i in r["Instances"]]

    def _mapped(self) -> dict[str, SSHTestHost]:
        """Instance id → host, as this process's hook or a client program's mapped them."""
        mapped: dict[str, SSHTestHost] = dict(self.hook.mapped) if self.hook else {}
        if self.scratch.exists():  # a client program's cloud-init ran there, in order
            booted = sorted(self.scratch.iterdir(), key=lambda p: p.stat().st_mtime)
            for index, path in enumerate(booted):
                mapped.setdefault(path.name, self.hosts[index % len(self.hosts)])
        return mapped

    def leftovers(self, pool_id: str) -> dict[str, list[str]]:
        ec2 = self._ec2()
        tag = [{"Name": "tag:skyward:pool", "Values": [pool_id]}]
        live = self._live_instances(pool_id)
        templates = ec2.describe_launch_templates()["LaunchTemplates"]
        mapped = self._mapped()
        return {
            "instances": live,
            "launch templates": [
                t["LaunchTemplateName"]
                for t in templates
                if t["LaunchTemplateName"] == f"skyward-{pool_id}"
            ],
            "key pairs": [
                k["KeyName"]
                for k in ec2.describe_key_pairs()["KeyPairs"]
                if k["KeyName"] == f"skyward-{pool_id}"
            ],
            "volumes": [v["VolumeId"] for v in ec2.describe_volumes(Filters=tag)["Volumes"]],
            "security groups": [
                g["GroupId"] for g in ec2.describe_security_groups(Filters=tag)["SecurityGroups"]
            ],
            "agents": [
                a
                for instance, host in mapped.items()
                if instance in live
                for a in _agents_on(host, pool_id)
            ],
        }

    @contextlib.contextmanager
    def partial_launch(self) -> Iterator[None]:
        with self.aws_env.moto.make_capacity_unavailable(lifecycle=None, available=1):
            yield

    @contextlib.contextmanager
    def api_faults(self, phase: str) -> Iterator[None]:
        moto = self.aws_env.moto
        # (action, times, error code, HTTP status); no code: the throttling error
        armed: list[tuple[str, int, str | None, int | None]] = (
            [
                ("CreateFleet", 2, None, None),
                ("ImportKeyPair", 1, "InternalError", 500),
                ("CreateLaunchTemplate", 1, "Unavailable", 503),
            ]
            if phase == "launch"
            else [
                ("TerminateInstances", 2, None, None),
                ("DeleteKeyPair", 1, "Unavailable", 503),
                ("DescribeVolumes", 1, "InternalError", 500),
            ]
        )
        for action, times, code, status in armed:
            moto.throttle_next("ec2", action, times=times, code=code, status=status)
        pricing = self.aws_env.pricing
        if phase == "launch":
            pricing.throttle_next("GetProducts")
        before, prices_before = len(moto.calls), pricing.count()
        yield
        if phase == "launch":  # the throttled price query, then the one that got through
            assert pricing.count() - prices_before >= 2, "GetProducts was not retried"
        answered = [c.action for c in moto.calls[before:] if c.throttled]
        for action, times, _, _ in armed:
            assert answered.count(action) == times, f"{action}: {answered}"

    def lose_node(self, pool: sky.ComputePool, node: int) -> None:
        cluster = pool._cluster
        assert cluster is not None
        instance = cluster.instances[node].id
        host = self.hook.mapped[instance]
        self._ec2().terminate_instances(InstanceIds=[instance])
        host.stop(drop_sessions=True)  # the machine is gone: nothing answers on it
        kill_user_processes(host.user)

    def partition(self, seconds: float) -> None:
        assert self.netns is not None
        self.netns.partition(seconds).wait()

    def cleanup(self, pool_id: str) -> None:
        from skyward_aws import AWS

        provider = AWS(ssh_cidr="127.0.0.1/32").create()
        with contextlib.suppress(Exception):
            provider.terminate(provider.list_by_tag(pool_id))
        ec2 = self._ec2()
        with contextlib.suppress(Exception):
            ec2.delete_key_pair(KeyName=f"skyward-{pool_id}")
        for host in self.hosts:
            host.kill_processes()


# -- clouds whose machines are SSH test hosts (DigitalOcean, Verda) ------------------------


def _register_hook(hook: Any) -> Any:
    from skyward import plugins

    plugins.get_plugin_manager().register(hook, name="test-cloud-init")
    plugins.reset(plugins.get_plugin_manager())
    return hook


def _reloaded_hosts(args: dict[str, Any]) -> list[SSHTestHost]:
    """The test's hosts, as a client program sees them (it reloads their sshd)."""
    hosts: list[SSHTestHost] = []
    for data in args["hosts"]:
        base = _host_from_dict(data)
        host = _ReloadedHost(
            base.user, base.address, base.port, base.home, base.host_key_public, base.state_dir
        )
        host.sshd = int(data["sshd_pid"])
        hosts.append(host)
    return hosts


class _TestHostCloud(Target):
    """A cloud on a fake API whose instances are SSH test hosts: the connection hook
    (``tests/cloud_init.CloudInit``) plays each instance's own user-data on its host, so
    the pinned host key and the pool's client key are checked for real, as for AWS.
    A subclass brings its fake (:meth:`start_fake`) and how to read an instance's
    user-data here (:meth:`user_data`) and in the client program (:meth:`remote_user_data`).
    """

    hosts: list[SSHTestHost]
    netns: NamespaceHost | None = None
    hook: Any = None
    saved: dict[str, tuple[bytes, bytes, bytes]]
    scratch: Path

    def start_fake(self, request: pytest.FixtureRequest) -> None:
        raise NotImplementedError

    def user_data(self, instance: Instance) -> str:
        raise NotImplementedError

    @staticmethod
    def remote_user_data(instance: Instance) -> str:
        raise NotImplementedError

    def setup(self, request: pytest.FixtureRequest, fault: Fault) -> None:
        from tests.cloud_init import CloudInit

        request.getfixturevalue("fresh_plugins")
        self.start_fake(request)
        if fault is Fault.PARTITION:
            self.netns = request.getfixturevalue("netns_host")
            self.hosts = [self.netns]
        else:
            self.hosts = request.getfixturevalue("ssh_hosts")(2)
        self.scratch = request.getfixturevalue("tmp_path") / "cloud-init"
        self.saved = _host_keys(self.hosts)
        self.hook = _register_hook(
            CloudInit(self.hosts, self.scratch, self.user_data, provider=self.provider)
        )
        request.addfinalizer(self._restore)

    def _restore(self) -> None:
        from skyward import plugins

        with contextlib.suppress(ValueError):
            plugins.get_plugin_manager().unregister(name="test-cloud-init")
        _restore_host_keys(self.hosts, self.saved)

    def pool_options(self) -> dict[str, Any]:
        return {"cpu": 4, "env": {"SKYWARD_POWEROFF_CMD": "true"}}

    def client_args(self) -> dict[str, Any]:
        return {"hosts": [_host_to_dict(h) for h in self.hosts], "scratch": str(self.scratch)}

    @classmethod
    def register_in_client(cls, args: dict[str, Any]) -> None:
        """In the client program: the same hook, reading user-data over HTTP."""
        from tests.cloud_init import CloudInit

        hosts = _reloaded_hosts(args)
        _register_hook(
            CloudInit(hosts, Path(args["scratch"]), cls.remote_user_data, provider=cls.provider)
        )

    def _mapped(self) -> dict[str, SSHTestHost]:
        """Instance id → host, as this process's hook or a client program's mapped them."""
        mapped: dict[str, SSHTestHost] = dict(self.hook.mapped) if self.hook else {}
        if self.scratch.exists():  # a client program's cloud-init ran there, in order
            booted = sorted(self.scratch.iterdir(), key=lambda p: p.stat().st_mtime)
            for index, path in enumerate(booted):
                mapped.setdefault(path.name, self.hosts[index % len(self.hosts)])
        return mapped

    def agents_of_live(self, pool_id: str, live: Sequence[str]) -> list[str]:
        """Agents of the pool on the hosts of instances that still exist (a deleted
        instance takes its processes with it)."""
        return [
            a for ident, host in self._mapped().items() if ident in live
            for a in _agents_on(host, pool_id)
        ]  # fmt: skip

    def machine_gone(self, instance_id: str) -> None:
        """The instance's host disappears: nothing answers on it any more."""
        host = self.hook.mapped[instance_id]
        host.stop(drop_sessions=True)
        kill_user_processes(host.user)

    def partition(self, seconds: float) -> None:
        assert self.netns is not None
        self.netns.partition(seconds).wait()

    def cleanup(self, pool_id: str) -> None:
        for host in self.hosts:
            host.kill_processes()


# -- DigitalOcean ------------------------------------------------------------------------


def _do_config() -> ProviderConfig:
    return sky.DigitalOcean(region="tor1", ssh_cidr="127.0.0.1/32", instance_timeout=15)  # type: ignore[no-any-return]


class DigitalOceanTarget(_TestHostCloud):
    name = "DigitalOcean"
    provider = "digitalocean"
    resources = (
        "droplets of the account in any state (`new`, `active`, `off`: a powered-off "
        "droplet still bills), GPU droplets included",
        "SSH keys of the account (the pool's `skyward-<pool>`)",
        "cloud firewalls of the account (the pool's `skyward-<pool>`)",
        "pool tags `skyward:pool:<pool>` (the shared `skyward:managed` tag is kept by "
        "design; tags do not bill)",
        "agent processes of the pool on the hosts of droplets not destroyed",
    )
    injections: ClassVar[Mapping[Fault, str]] = {
        Fault.PARTIAL_LAUNCH: "the create of both droplets makes one and its answer is lost "
        "(500); meanwhile the account's droplet limit is used up, so the create of the "
        "missing one is refused (422 `droplet limit`, a capacity error) and so is every "
        "other size (fake `partial_create(limit_reached=True)`, contract-checked)",
        Fault.API_FAULTS_LAUNCH: "`GET /v2/sizes` answered 429 with `retry-after` twice, "
        "the SSH key, firewall and droplet creates each made but answered 5xx (lost "
        "answers: found by fingerprint, name and tag, never created twice), a droplet "
        "listing answered 429",
        Fault.API_FAULTS_TEARDOWN: "droplet destroys answered 500 twice, the key delete 429, "
        "the firewall delete 503, the tag delete 500",
        Fault.NODE_LOSS: "the droplet is destroyed through the API (as from the control "
        "panel) and its machine disappears (sshd stopped, every process killed); reported "
        "after the SSH reconnect gives up (`instance_timeout`, 15 s here)",
        Fault.PARTITION: "the droplet is an sshd in a network namespace; its veth link is "
        "set down, then up",
    }

    fake: Any

    def start_fake(self, request: pytest.FixtureRequest) -> None:
        self.fake = request.getfixturevalue("do_fake")

    def user_data(self, instance: Instance) -> str:
        return str(self.fake.user_data(instance.id))

    @staticmethod
    def remote_user_data(instance: Instance) -> str:
        """From the fake's metadata service (what a droplet's cloud-init reads)."""
        import httpx

        from tests.do_fakes import METADATA_PREFIX

        url = os.environ["SKYWARD_DIGITALOCEAN_ENDPOINT"] + METADATA_PREFIX
        answer = httpx.get(f"{url}{instance.id}/user-data", timeout=10)
        answer.raise_for_status()
        return answer.text

    def config(self) -> ProviderConfig:
        return _do_config()

    @staticmethod
    def client_provider(args: dict[str, Any]) -> ProviderConfig:
        DigitalOceanTarget.register_in_client(args)
        return _do_config()

    def leftovers(self, pool_id: str) -> dict[str, list[str]]:
        fake = self.fake  # a fresh account per cell: everything in it is this cell's
        live = [str(d.id) for d in fake.live()]
        with fake._lock:
            keys = [str(k["name"]) for k in fake.keys.values()]
            firewalls = [str(f["name"]) for f in fake.firewalls.values()]
            tags = sorted(t for t in fake.tags if t.startswith("skyward:pool:"))
        return {
            "droplets": live,
            "ssh keys": keys,
            "firewalls": firewalls,
            "tags": tags,
            "agents": self.agents_of_live(pool_id, live),
        }

    @contextlib.contextmanager
    def partial_launch(self) -> Iterator[None]:
        self.fake.partial_create(made=1, status=500, limit_reached=True)
        try:
            yield
        finally:
            self.fake.droplet_limit = 25
        creates = [c for c in self.fake.calls if c.operation == "droplets_create"]
        assert [c.status for c in creates[:2]] == [500, 422], creates
        assert len(creates[1].body["names"]) == 1, "only the missing droplet was asked again"

    @contextlib.contextmanager
    def api_faults(self, phase: str) -> Iterator[None]:
        fake = self.fake
        # (operation, status, times, done before answering)
        armed: list[tuple[str, int, int, bool]] = (
            [
                ("sizes_list", 429, 2, False),
                ("sshKeys_create", 500, 1, True),
                ("firewalls_create", 503, 1, True),
                ("droplets_create", 503, 1, True),
                ("droplets_list", 429, 1, False),
            ]
            if phase == "launch"
            else [
                ("droplets_destroy", 500, 2, False),
                ("sshKeys_delete", 429, 1, False),
                ("firewalls_delete", 503, 1, False),
                ("tags_delete", 500, 1, False),
            ]
        )
        for operation, status, times, after in armed:
            if status == 429:
                fake.rate_limit_next(times, operation=operation, retry_after=1)
            else:
                fake.fail_next(operation, status, times, after=after)
        before = len(fake.calls)
        yield
        answered = [(c.operation, c.status) for c in fake.calls[before:]]
        for operation, status, times, _ in armed:
            assert answered.count((operation, status)) == times, f"{operation}: {answered}"
        if phase == "launch":
            creates = [o for o, s in answered if o == "droplets_create"]
            assert len(creates) == 1, "a lost create's droplets were found, not made again"

    def lose_node(self, pool: sky.ComputePool, node: int) -> None:
        from tests.do_fakes import pydo_client

        cluster = pool._cluster
        assert cluster is not None
        droplet = cluster.instances[node].id
        pydo_client(self.fake.url).droplets.destroy(int(droplet))
        self.machine_gone(droplet)

    def cleanup(self, pool_id: str) -> None:
        fake = self.fake
        with fake._lock:
            for droplet in fake.live():
                fake._destroy(droplet)
            fake.keys.clear()
            fake.firewalls.clear()
            fake.tags.clear()
        super().cleanup(pool_id)


# -- Verda -------------------------------------------------------------------------------


def _verda_config() -> ProviderConfig:
    return sky.Verda(region="FIN-01", instance_timeout=15)  # type: ignore[no-any-return]


class VerdaTarget(_TestHostCloud):
    name = "Verda"
    provider = "verda"
    resources = (
        "instances of the project not `discontinued` (an `offline` instance still bills)",
        "volumes of the project, detached, attached or in the trash",
        "SSH keys and startup scripts of the project (the pool's `skyward-<pool>`)",
        "anything the fake would bill for",
        "agent processes of the pool on the hosts of instances not deleted",
    )
    injections: ClassVar[Mapping[Fault, str]] = {
        Fault.PARTIAL_LAUNCH: "the location has room for one spot instance of the type and "
        "nothing else: the second node's spot and on-demand creates are refused (503 "
        "`Not enough resources`), as is every other type",
        Fault.API_FAULTS_LAUNCH: "`GET /instance-types` answered 503, the SSH key create made "
        "but answered 500 (found by name and content), the script create throttled (429 "
        "with `Retry-After`), an instance create made but answered 502 (found by hostname, "
        "never created twice), one instance listing 500",
        Fault.API_FAULTS_TEARDOWN: "the delete (`PUT /instances`) answered 503 then 429, the "
        "script delete 500, the key delete 429, the trash listing 502",
        Fault.NODE_LOSS: "the spot instance is preempted by Verda (discontinued, its OS "
        "volume deleted per `on_spot_discontinue`) and its machine disappears (sshd "
        "stopped, every process killed); reported after the SSH reconnect gives up "
        "(`instance_timeout`, 15 s here)",
        Fault.PARTITION: "the instance is an sshd in a network namespace; its veth link is "
        "set down, then up",
    }

    fake: Any

    def start_fake(self, request: pytest.FixtureRequest) -> None:
        self.fake = request.getfixturevalue("verda_env")

    def user_data(self, instance: Instance) -> str:
        with self.fake.lock:
            script_id = self.fake.instances[instance.id].data["startup_script_id"]
            return str(self.fake.scripts[script_id]["script"])

    @staticmethod
    def remote_user_data(instance: Instance) -> str:
        """The instance's startup script, read through the API as its boot would."""
        from skyward_verda.api import VerdaAPI

        api = VerdaAPI(
            os.environ["SKYWARD_VERDA_ENDPOINT"],
            os.environ["VERDA_CLIENT_ID"],
            os.environ["VERDA_CLIENT_SECRET"],
        )
        try:
            script_id = api.get(f"/instances/{instance.id}")["startup_script_id"]
            (script,) = api.get(f"/scripts/{script_id}")  # by id: a one-element array
            return str(script["script"])
        finally:
            api.close()

    def config(self) -> ProviderConfig:
        return _verda_config()

    @staticmethod
    def client_provider(args: dict[str, Any]) -> ProviderConfig:
        VerdaTarget.register_in_client(args)
        return _verda_config()

    def leftovers(self, pool_id: str) -> dict[str, list[str]]:
        fake = self.fake  # a fresh project per cell: everything in it is this cell's
        live = [str(i["id"]) for i in fake.live_instances()]
        with fake.lock:
            keys = [str(k["name"]) for k in fake.keys.values()]
            scripts = [str(s["name"]) for s in fake.scripts.values()]
        return {
            "instances": live,
            "volumes": [str(v["id"]) for v in fake.live_volumes(trash=True)],
            "ssh keys": keys,
            "scripts": scripts,
            "billed": fake.billing(),
            "agents": self.agents_of_live(pool_id, live),
        }

    @contextlib.contextmanager
    def partial_launch(self) -> Iterator[None]:
        fake = self.fake
        with fake.lock:
            for kind in fake.types:
                for spot in (False, True):
                    fake.capacity[("FIN-01", kind["instance_type"], spot)] = 0
            fake.capacity[("FIN-01", "CPU.4V.16G", True)] = 1
        yield
        with fake.lock:
            creates = [c for c in fake.calls if c.method == "POST" and c.path == "/instances"]
        assert [c.status for c in creates[:3]] == [201, 503, 503], creates
        assert [c.body["is_spot"] for c in creates[1:3]] == [True, False], "spot, then on-demand"

    @contextlib.contextmanager
    def api_faults(self, phase: str) -> Iterator[None]:
        fake = self.fake
        # (method, path, status, times, done before answering, retry-after)
        armed: list[tuple[str, str, int, int, bool, int | None]] = (
            [
                ("GET", "/instance-types", 503, 1, False, None),
                ("POST", "/ssh-keys", 500, 1, True, None),
                ("POST", "/scripts", 429, 1, False, 1),
                ("POST", "/instances", 502, 1, True, None),
                ("GET", "/instances", 500, 1, False, None),
            ]
            if phase == "launch"
            else [
                ("PUT", "/instances", 503, 1, False, None),
                ("PUT", "/instances", 429, 1, False, 1),
                ("DELETE", "/scripts/.+", 500, 1, False, None),
                ("DELETE", "/ssh-keys/.+", 429, 1, False, 1),
                ("GET", "/volumes/trash", 502, 1, False, None),
            ]
        )
        faults = [
            fake.inject(
                method, path, status, f"injected {status}", times=times, after=after,
                retry_after=retry_after,
            )
            for method, path, status, times, after, retry_after in armed
        ]  # fmt: skip
        yield
        for fault, (_, _, _, times, _, _) in zip(faults, armed, strict=True):
            assert fault.hits == times, f"{fault.method} {fault.path} answered {fault.hits}x"
        if phase == "launch":
            with fake.lock:
                hostnames = [
                    c.body["hostname"]
                    for c in fake.calls
                    if c.method == "POST" and c.path == "/instances"
                ]
            assert len(hostnames) == len(set(hostnames)), f"a create was repeated: {hostnames}"

    def lose_node(self, pool: sky.ComputePool, node: int) -> None:
        cluster = pool._cluster
        assert cluster is not None
        instance = cluster.instances[node]
        assert instance.spot, "spot-if-available got spot: Verda may take it back"
        self.fake.preempt(instance.id)
        self.machine_gone(instance.id)

    def cleanup(self, pool_id: str) -> None:
        self.fake.reset()  # a fresh project for the next cell
        super().cleanup(pool_id)


# -- Kubernetes --------------------------------------------------------------------------


class KubernetesTarget(Target):
    """The real control plane of ``tests/kube_cluster.py`` and its fake kubelets (pods are
    local processes); each cell gets its own namespace and a kubeconfig whose context
    names it, so ``skyward down --provider kubernetes`` (defaults: ``$KUBECONFIG``, its
    current context and namespace) sweeps exactly that namespace."""

    name = "Kubernetes"
    provider = "kubernetes"
    resources = (
        "pods labelled with the pool, in any phase (a Failed pod counts)",
        "the pool's headless Service and anchor ConfigMap",
        "agent processes of the pool",
        "processes of the pool's pods on the fake kubelets (exec'd ones included)",
    )
    injections: ClassVar[Mapping[Fault, str]] = {
        Fault.PARTIAL_LAUNCH: "another pod holds 4 of the node's 8 CPUs: the real scheduler "
        "binds the first 3-CPU pod and reports the second `Insufficient cpu`; after "
        "`schedule_timeout` (5 s) the launch raises `CapacityError`",
        Fault.API_FAULTS_LAUNCH: "a TLS proxy in front of the apiserver answers "
        "`GET /api/v1/nodes` 500, the anchor ConfigMap's `POST` 503 and the pods' `POST` "
        "429 `TooManyRequests` twice (`Retry-After: 1`)",
        Fault.API_FAULTS_TEARDOWN: "the same proxy answers the pods' `DELETE` 429 twice, "
        "the Service's `DELETE` 503 and the anchor's `DELETE` 500",
        Fault.NODE_LOSS: "every process of the node's pod is killed at once and its kubelet "
        "reports the container terminated (exit 137, `OOMKilled`), the pod Failed",
        Fault.PARTITION: "every exec and port-forward stream of the node's kubelet is cut "
        "and new ones are refused for 3 s (an apiserver restart, a load balancer's cut)",
    }
    SELECTOR: ClassVar[dict[str, str]] = {"kubernetes.io/hostname": "cpu-0"}

    kube: Any
    namespace: str
    kubeconfig: Path
    proxy: Any = None

    def setup(self, request: pytest.FixtureRequest, fault: Fault) -> None:
        import secrets

        from tests.kube_faults import FaultProxy
        from tests.kube_fixtures import session_cluster

        self.kube = session_cluster(request.config)
        plane = self.kube.plane
        self.namespace = f"fm-{secrets.token_hex(4)}"
        self.kube.api.post("/api/v1/namespaces", {"metadata": {"name": self.namespace}})
        request.addfinalizer(self._remove_namespace)
        server = plane.server
        if fault in (Fault.API_FAULTS_LAUNCH, Fault.API_FAULTS_TEARDOWN):
            self.proxy = FaultProxy(
                plane.apiserver_port, plane.certs.pair("apiserver"), plane.certs.ca
            )
            self.proxy.start()
            request.addfinalizer(self.proxy.stop)
            server = self.proxy.server
        self.kubeconfig = request.getfixturevalue("tmp_path") / "kubeconfig"
        self.kubeconfig.write_text(
            json.dumps({
                "apiVersion": "v1", "kind": "Config", "current-context": "matrix",
                "clusters": [{"name": "c", "cluster": {
                    "server": server, "certificate-authority": str(plane.certs.ca)}}],
                "users": [{"name": "u", "user": {"token": plane.token}}],
                "contexts": [{"name": "matrix", "context": {
                    "cluster": "c", "user": "u", "namespace": self.namespace}}],
            })
        )  # fmt: skip
        self.kubeconfig.chmod(0o600)

    def _remove_namespace(self) -> None:
        from tests.kube_api import KubeAPIError

        with contextlib.suppress(KubeAPIError, OSError):
            path = f"/api/v1/namespaces/{self.namespace}"
            self.kube.api.request("DELETE", f"{path}/pods", {"gracePeriodSeconds": 0})
            self.kube.api.delete(path)

    def config(self) -> ProviderConfig:
        return self.client_provider(self.client_args())

    def pool_options(self) -> dict[str, Any]:
        return {"cpu": 3}

    def client_args(self) -> dict[str, Any]:
        return {"kubeconfig": str(self.kubeconfig)}

    def client_env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    @staticmethod
    def client_provider(args: dict[str, Any]) -> ProviderConfig:
        return sky.Kubernetes(  # type: ignore[no-any-return]
            kubeconfig=args["kubeconfig"],
            node_selector=KubernetesTarget.SELECTOR,
            schedule_timeout=5,
        )

    def _names(self, kind: str, pool_id: str) -> list[str]:
        items = self.kube.api.get(
            f"/api/v1/namespaces/{self.namespace}/{kind}", labelSelector=f"skyward/pool={pool_id}"
        )["items"]
        return [f"{i['metadata']['name']} ({i.get('status', {}).get('phase', '')})" for i in items]

    def leftovers(self, pool_id: str) -> dict[str, list[str]]:
        return {
            "pods": self._names("pods", pool_id),
            "services": self._names("services", pool_id),
            "configmaps": self._names("configmaps", pool_id),
            "agents": [str(p.pid) for p in agent_processes(pool_id)],
            "pod processes": [
                f"{kubelet.name}:{run.name}:{process.pid}"
                for kubelet in self.kube.kubelets.values()
                for run in list(kubelet.pods.values())
                if run.namespace == self.namespace
                for process in kubelet.pod_processes(run)
            ],
        }

    @contextlib.contextmanager
    def partial_launch(self) -> Iterator[None]:
        from tests.kube_kubelet import default_image_check

        assert default_image_check(f"python:{sys.version_info[0]}.{sys.version_info[1]}") is None
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        filler = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "filler"},
            "spec": {
                "restartPolicy": "Never", "nodeSelector": self.SELECTOR,
                "terminationGracePeriodSeconds": 0,
                "containers": [{
                    "name": "c", "image": f"python:{sys.version_info[0]}.{sys.version_info[1]}",
                    "command": ["sleep", "600"], "resources": {"requests": {"cpu": "4"}},
                }],
            },
        }  # fmt: skip
        self.kube.api.post(path, filler)
        try:
            assert wait_until(
                lambda: self.kube.api.get(f"{path}/filler")["status"].get("phase") == "Running",
                30,
            ), "the filler pod never ran"
            yield
        finally:
            self.kube.api.request("DELETE", f"{path}/filler", {"gracePeriodSeconds": 0})
            assert wait_until(
                lambda: not self.kube.api.get(path, fieldSelector="metadata.name=filler")["items"],
                30,
            )

    @contextlib.contextmanager
    def api_faults(self, phase: str) -> Iterator[None]:
        assert self.proxy is not None
        ns = f"/api/v1/namespaces/{self.namespace}"
        armed = (
            [
                self.proxy.arm("GET", "/api/v1/nodes", 500),
                self.proxy.arm("POST", f"{ns}/configmaps", 503),
                self.proxy.arm("POST", f"{ns}/pods", 429, times=2),
            ]
            if phase == "launch"
            else [
                self.proxy.arm("DELETE", f"{ns}/pods/[^/]+", 429, times=2),
                self.proxy.arm("DELETE", f"{ns}/services/[^/]+", 503),
                self.proxy.arm("DELETE", f"{ns}/configmaps/[^/]+", 500),
            ]
        )
        yield
        self.proxy.disarm()
        for fault in armed:
            assert fault.answered == fault.times, (fault, self.proxy.seen)

    def _kubelet_of(self, pod: str) -> Any:
        node = self.kube.api.get(f"/api/v1/namespaces/{self.namespace}/pods/{pod}")["spec"][
            "nodeName"
        ]
        return self.kube.kubelets[node]

    def lose_node(self, pool: sky.ComputePool, node: int) -> None:
        cluster = pool._cluster
        assert cluster is not None
        pod = cluster.instances[node].id
        self._kubelet_of(pod).crash_pod(self.namespace, pod)

    def partition(self, seconds: float) -> None:
        import time

        (pod,) = [
            p["metadata"]["name"]
            for p in self.kube.api.get(f"/api/v1/namespaces/{self.namespace}/pods")["items"]
        ]
        kubelet = self._kubelet_of(pod)
        kubelet.refuse_streams(True)
        try:
            kubelet.drop_streams()
            time.sleep(seconds)
        finally:
            kubelet.refuse_streams(False)

    def cleanup(self, pool_id: str) -> None:
        from tests.kube_api import KubeAPIError

        ns = f"/api/v1/namespaces/{self.namespace}"
        with contextlib.suppress(KubeAPIError, OSError):
            self.kube.api.request(
                "DELETE", f"{ns}/pods", {"gracePeriodSeconds": 0},
                query={"labelSelector": f"skyward/pool={pool_id}"},
            )  # fmt: skip
        for process in agent_processes(pool_id):
            with contextlib.suppress(psutil.Error):
                process.kill()


# Every target of the matrix. A provider joins by adding its Target subclass here.
TARGETS: tuple[type[Target], ...] = (
    LocalTarget,
    SSHTarget,
    AWSTarget,
    DigitalOceanTarget,
    VerdaTarget,
    KubernetesTarget,
)


def target_named(name: str) -> type[Target]:
    (found,) = [t for t in TARGETS if t.name == name]
    return found


# -- the client program (Ctrl-C, SIGTERM, SIGKILL) ----------------------------------------


@dataclass
class Client:
    """A client program (``tests/fault_client.py``) with a pool open and a call in flight."""

    process: subprocess.Popen[str]
    pool_id: str
    env: dict[str, str]

    @classmethod
    def start(cls, target: Target, nodes: int, ledger: Ledger, heartbeat: float) -> Client:
        spec = {
            "target": target.name,
            "args": target.client_args(),
            "nodes": nodes,
            "ledger": str(ledger),
            "options": target.pool_options(),
        }
        env = {
            **os.environ,
            **target.client_env(),
            "PYTHONPATH": str(ROOT),
            "SKYWARD_HEARTBEAT_TIMEOUT": str(heartbeat),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.fault_client", json.dumps(spec)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            _, err = process.communicate(timeout=30)
            raise AssertionError(f"the client program failed to open its pool:\n{err}")
        return cls(process, json.loads(line)["pool"], env)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        _, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, err

    def down(self, provider: str, extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "skyward.cli", "down", "--yes", "--provider", provider]
        return subprocess.run(
            [*command, "--pool", self.pool_id, *extra],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )


# -- the doc ---------------------------------------------------------------------------


def expected_outcome(target: type[Target], fault: Fault) -> str:
    if fault in target.not_applicable:
        return "n/a"
    if fault in target.known_bugs:
        return "known bug"
    return "pass"


def render(outcomes: Mapping[tuple[str, Fault], str] | None = None) -> str:
    """``docs/reliability.md``; ``outcomes`` ``(target name, fault) → pass / known bug /
    n/a / FAIL`` come from a run (``None``: what the declarations expect)."""

    def outcome(target: type[Target], fault: Fault) -> str:
        if outcomes is None:
            return expected_outcome(target, fault)
        return outcomes.get((target.name, fault), "not run")

    out = [
        "# Reliability: the fault matrix",
        "",
        "<!-- Generated by `make reliability-doc` (docs/build_reliability.py) from a run of",
        "     tests/test_fault_matrix.py; do not edit. tests/test_fault_matrix.py checks it. -->",
        "",
        "Every provider x every way a pool can end or break. After each cell the suite checks",
        "that **nothing is left** (the provider's resources below) and that **no task was lost",
        "or doubled**: each call appends `start <node>` and `end <node>` to its own file on",
        "the node side, so executions are counted where they happen.",
        "",
        "A provider joins by adding one `Target` to `tests/fault_matrix.py` (its fake, how to",
        "list what is left, how to inject each fault); the protocol is documented there.",
        "",
        "## The matrix",
        "",
        "| fault | " + " | ".join(t.name for t in TARGETS) + " |",
        "|---|" + "---|" * len(TARGETS),
    ]
    for fault in Fault:
        cells = [outcome(t, fault) for t in TARGETS]
        out.append(f"| {fault.value} | " + " | ".join(cells) + " |")
    out += [
        "",
        "`pass`: ran, left nothing, no task lost or doubled. `n/a`: the fault cannot happen",
        "on that provider (reason below). `known bug`: runs as a strict `xfail` against a",
        "defect named below; it fails the suite the day it passes.",
        "",
        "## What each row does and checks",
        "",
    ]
    for fault in Fault:
        out.append(f"- **{fault.value}**: {FAULT_CHECKS[fault]}")
    for target in TARGETS:
        out += ["", f"## {target.name}", "", "Counted as left after every cell:", ""]
        out += [f"- {resource}" for resource in target.resources]
        out += ["", "| fault | result | how the fault is made |", "|---|---|---|"]
        for fault in Fault:
            result = outcome(target, fault)
            if fault in target.not_applicable:
                how = target.not_applicable[fault]
            else:
                how = target.injections.get(fault, "as described above")
            if result == "known bug":
                how += f". **Known bug:** {target.known_bugs[fault]}"
            out.append(f"| {fault.value} | {result} | {how} |")
    return "\n".join(out) + "\n"


def cell_ids() -> list[tuple[type[Target], Fault]]:
    return [(t, f) for t in TARGETS for f in Fault]
