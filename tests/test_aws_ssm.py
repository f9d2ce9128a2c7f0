"""Session Manager connectivity (``AWS(use_ssm=True)``): our data-channel client against
the fake service of tests/ssm_fakes.py, over real websockets, and whole pools through it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

import skyward as sky
from skyward.errors import ConfigurationError, ConnectError
from skyward.spec import build_spec
from skyward_aws.ssm import open_tunnel
from skyward_aws.ssm.channel import SessionError
from skyward_aws.ssm.messages import ClientMessage, PayloadType, ProtocolError, acknowledgement
from tests.aws_fakes import AwsEnv
from tests.cloud_checks import POWEROFF_HARMLESS, where
from tests.conftest import wait_until
from tests.ssm_fakes import SessionManagerFake
from tests.test_aws_pool import CloudInit, _leftovers, cloud

__all__ = ["cloud"]  # the fixture, shared with the SSH-reached pools of test_aws_pool

pytestmark = pytest.mark.usefixtures("fresh_plugins")


def test_message_layout_is_the_published_one() -> None:
    message_id = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    message = ClientMessage(
        "input_stream_data",
        sequence_number=7,
        payload=b"hello",
        payload_type=PayloadType.OUTPUT,
        flags=0,
        message_id=message_id,
        created_ms=1_700_000_000_123,
    )
    raw = message.encode()
    # Offsets from the session-manager-plugin's clientmessage.go, written out by hand.
    assert struct.unpack(">I", raw[0:4]) == (116,)
    assert raw[4:36] == b"input_stream_data" + b" " * 15
    assert struct.unpack(">I", raw[36:40]) == (1,)
    assert struct.unpack(">Q", raw[40:48]) == (1_700_000_000_123,)
    assert struct.unpack(">q", raw[48:56]) == (7,)
    assert struct.unpack(">Q", raw[56:64]) == (0,)
    assert raw[64:72] == bytes.fromhex("8899aabbccddeeff"), "least significant half first"
    assert raw[72:80] == bytes.fromhex("0011223344556677")
    assert raw[80:112] == hashlib.sha256(b"hello").digest()
    assert struct.unpack(">II", raw[112:120]) == (1, 5)
    assert raw[120:] == b"hello"
    assert ClientMessage.decode(raw) == message


def test_a_corrupt_payload_is_refused() -> None:
    raw = bytearray(ClientMessage("output_stream_data", payload=b"abc", payload_type=1).encode())
    raw[-1] ^= 0xFF
    with pytest.raises(ProtocolError, match="digest"):
        ClientMessage.decode(bytes(raw))
    with pytest.raises(ProtocolError, match="shorter"):
        ClientMessage.decode(bytes(raw[:50]))


def test_acknowledgement_names_the_message() -> None:
    message = ClientMessage("output_stream_data", sequence_number=3, payload=b"x", payload_type=1)
    ack = acknowledgement(message)
    assert (ack.message_type, ack.sequence_number, ack.flags) == ("acknowledge", 0, 3)
    assert ack.json() == {
        "AcknowledgedMessageType": "output_stream_data",
        "AcknowledgedMessageId": str(message.message_id),
        "AcknowledgedMessageSequenceNumber": 3,
        "IsSequentialMessage": True,
    }


def test_use_ssm_must_be_a_boolean() -> None:
    with pytest.raises(ConfigurationError, match="use_ssm"):
        sky.AWS(use_ssm="yes")  # type: ignore[attr-defined]


def test_use_ssm_with_an_ssh_cidr_is_a_contradiction_named_before_any_call() -> None:
    with pytest.raises(ConfigurationError, match="ssh_cidr") as caught:
        sky.ComputePool(provider=sky.AWS(use_ssm=True, ssh_cidr="10.0.0.1/32"), display="quiet")  # type: ignore[attr-defined]
    assert "use_ssm" in str(caught.value)


# -- the tunnel against the fake service ------------------------------------------------

SESSION_ACTIONS = {"StartSession", "TerminateSession", "ResumeSession"}


class Echo:
    """A TCP echo server on loopback: the port the SSM agent forwards to."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.server.close()


@contextlib.contextmanager
def serving(aws_env: AwsEnv, fake: SessionManagerFake) -> Iterator[SessionManagerFake]:
    """The fake answers moto's SSM session actions (moto has none) while in use."""
    fake.start()
    aws_env.moto.json_handlers["ssm"] = lambda action, body: (
        fake.handle_api(action, body) if action in SESSION_ACTIONS else None
    )
    try:
        yield fake
    finally:
        wait_until(lambda: all(s.terminated for s in fake.sessions), timeout=10)
        aws_env.moto.json_handlers.pop("ssm", None)
        fake.stop()


@pytest.fixture
def ssm_fake(aws_env: AwsEnv) -> Iterator[tuple[SessionManagerFake, Echo]]:
    echo = Echo()
    fake = SessionManagerFake(resolve_target=lambda instance, port: ("127.0.0.1", echo.port))
    try:
        with serving(aws_env, fake):
            yield fake, echo
    finally:
        echo.close()


def _ssm() -> Any:
    return boto3.client("ssm", region_name="us-east-1")


def _round_trip(sock: socket.socket, data: bytes) -> bytes:
    received = bytearray()

    def read() -> None:
        while len(received) < len(data):
            chunk = sock.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    sock.sendall(data)
    reader.join(timeout=60)
    return bytes(received)


def test_tunnel_carries_bytes_both_ways_and_ends_the_session(
    aws_env: AwsEnv, ssm_fake: tuple[SessionManagerFake, Echo]
) -> None:
    fake, _ = ssm_fake
    data = os.urandom(2 * 2**20 + 123)  # thousands of 1 KiB messages each way
    sock = open_tunnel(_ssm(), "i-0123456789abcdef0", 22, timeout=10)
    assert _round_trip(sock, data) == data
    sock.close()
    (session,) = fake.sessions
    assert wait_until(lambda: session.terminated, timeout=10)
    assert session.document_name == "AWS-StartSSHSession"
    assert session.port == 22
    assert session.opened_with is not None
    assert session.opened_with["MessageSchemaVersion"] == "1.0"
    assert session.bytes_in == session.bytes_out == len(data)
    assert session.client_acked_all
    assert session.closed_by in {"client-flag", "api"}
    assert wait_until(lambda: aws_env.moto.count("ssm", "TerminateSession") == 1, timeout=10)
    assert fake.protocol_errors == []


@pytest.mark.parametrize("fault", ["drop", "reorder", "pause"])
def test_tunnel_survives_lost_reordered_and_paused_messages(
    ssm_fake: tuple[SessionManagerFake, Echo], fault: str
) -> None:
    fake, _ = ssm_fake
    if fault == "drop":
        fake.drop_once(4)  # the client's 3rd data message: it must be resent
        fake.drop_once(9)
    elif fault == "reorder":
        fake.reorder_output(5)  # the client must put them back in order
    else:
        fake.pause_for(0.5, after=4)  # the client holds its input, then resends
    data = os.urandom(64 * 1024)
    sock = open_tunnel(_ssm(), "i-0123456789abcdef0", 22, timeout=10)
    started = time.monotonic()
    assert _round_trip(sock, data) == data
    elapsed = time.monotonic() - started
    sock.close()
    (session,) = fake.sessions
    if fault == "drop":
        assert session.dropped == [4, 9]
    if fault == "pause":
        # What was already in flight when the pause arrived is lost and resent.
        assert elapsed >= 0.5
    assert fake.protocol_errors == []


def test_agent_that_cannot_reach_the_port_ends_the_tunnel(
    ssm_fake: tuple[SessionManagerFake, Echo],
) -> None:
    fake, _ = ssm_fake
    fake.refuse_port()
    # The agent's flag may come before open_tunnel returns, or just after.
    sock: socket.socket | None = None
    failure = ""
    try:
        sock = open_tunnel(_ssm(), "i-0123456789abcdef0", 22, timeout=10)
    except SessionError as error:
        failure = str(error)
    if sock is None:
        assert "could not connect to the port" in failure
    else:
        sock.settimeout(10)
        assert sock.recv(1) == b"", "paramiko sees the connection close, and retries"
        sock.close()
    (session,) = fake.sessions
    assert wait_until(lambda: session.terminated, timeout=10)


def test_kms_encrypted_sessions_are_refused_clearly_and_not_retried(
    ssm_fake: tuple[SessionManagerFake, Echo],
) -> None:
    fake, _ = ssm_fake
    fake.kms_encryption = True
    with pytest.raises(ConnectError, match="KMS encryption") as caught:
        open_tunnel(_ssm(), "i-0123456789abcdef0", 22, timeout=10)
    assert "use_ssm=False" in str(caught.value)
    (session,) = fake.sessions
    assert wait_until(lambda: session.terminated, timeout=10)
    # Our TerminateSession may reach the service before it reads the refusal.
    if session.handshake_response is not None:
        assert session.handshake_response["Errors"]


def test_an_unregistered_node_is_a_retryable_error_naming_the_cause(
    aws_env: AwsEnv, ssm_fake: tuple[SessionManagerFake, Echo]
) -> None:
    fake, _ = ssm_fake
    fake.check_target = lambda instance: f"{instance} is not connected."
    with pytest.raises(SessionError, match="TargetNotConnected") as caught:
        open_tunnel(_ssm(), "i-0123456789abcdef0", 22, timeout=10)
    assert "AmazonSSMManagedInstanceCore" in str(caught.value)
    assert not isinstance(caught.value, ConnectError)
    assert fake.sessions == []


# -- whole pools over Session Manager ---------------------------------------------------

SSM_POLICY = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"


class Registration:
    """When the fake lets a node's agent take sessions: like SSM, only once the instance
    runs with a role carrying AmazonSSMManagedInstanceCore, and only after its agent has
    registered (here: the first two attempts per instance are refused)."""

    def __init__(self, delay_attempts: int = 2) -> None:
        self.delay_attempts = delay_attempts
        self.attempts: dict[str, int] = {}
        self.refusals: list[str] = []

    def __call__(self, instance_id: str) -> str | None:
        self.attempts[instance_id] = self.attempts.get(instance_id, 0) + 1
        reason = self._reason(instance_id)
        if reason is not None:
            self.refusals.append(reason)
            return f"{instance_id} is not connected."
        return None

    def _reason(self, instance_id: str) -> str | None:
        ec2 = boto3.client("ec2", region_name="us-east-1")
        found = [
            i
            for r in ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
            for i in r["Instances"]
        ]
        if not found or found[0]["State"]["Name"] != "running":
            return "not running"
        profile = (found[0].get("IamInstanceProfile") or {}).get("Arn", "")
        if not profile:
            return "no instance profile"
        iam = boto3.client("iam", region_name="us-east-1")
        roles = iam.get_instance_profile(InstanceProfileName=profile.rsplit("/", 1)[-1])[
            "InstanceProfile"
        ]["Roles"]
        policies = {
            p["PolicyArn"]
            for role in roles
            for p in iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"]
        }
        if SSM_POLICY not in policies:
            return "role without AmazonSSMManagedInstanceCore"
        if self.attempts[instance_id] <= self.delay_attempts:
            return "agent not registered yet"
        return None


@pytest.fixture
def ssm_cloud(
    aws_env: AwsEnv, cloud: CloudInit, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SessionManagerFake, Registration]]:
    registration = Registration()

    def target(instance_id: str, port: int) -> tuple[str, int]:
        return cloud.mapped[instance_id].address, port

    with socket.socket() as unused:  # nothing answers here: the address must not be asked
        unused.bind(("127.0.0.1", 0))
        monkeypatch.setenv(
            "SKYWARD_AWS_CHECKIP_URL", f"http://127.0.0.1:{unused.getsockname()[1]}/"
        )
    fake = SessionManagerFake(resolve_target=target, check_target=registration)
    with serving(aws_env, fake):
        yield fake, registration


def test_pool_over_session_manager_opens_no_port_and_leaves_nothing(
    aws_env: AwsEnv, cloud: CloudInit, ssm_cloud: tuple[SessionManagerFake, Registration]
) -> None:
    fake, registration = ssm_cloud
    with sky.ComputePool(
        provider=sky.AWS(use_ssm=True, instance_timeout=60),  # type: ignore[attr-defined]
        nodes=2,
        machine="m5.large",
        env=POWEROFF_HARMLESS,
        display="quiet",
    ) as pool:
        one = where() >> pool
        every = where() @ pool
        pool_id = pool.pool_id
    assert one[2] == pool_id
    assert [e[0] for e in every] == [0, 1]
    assert {e[1] for e in every} == {h.user for h in cloud.mapped.values()}
    # Every SSH connection went through Session Manager, to port 22 of the instances.
    assert {s.target for s in fake.sessions} == set(cloud.mapped)
    assert all(s.document_name == "AWS-StartSSHSession" for s in fake.sessions)
    assert registration.refusals.count("agent not registered yet") == 4, "retried until ready"
    assert [r for r in registration.refusals if r != "agent not registered yet"] == []
    assert wait_until(lambda: all(s.terminated for s in fake.sessions), timeout=10)
    assert fake.protocol_errors == []
    ec2 = boto3.client("ec2", region_name="us-east-1")
    (group,) = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["skyward-ssm-sg"]}]
    )["SecurityGroups"]
    assert [r for p in group["IpPermissions"] for r in p.get("IpRanges", [])] == []
    assert [pair["GroupId"] for p in group["IpPermissions"] for pair in p["UserIdGroupPairs"]] == [
        group["GroupId"]
    ], "only node-to-node traffic"
    assert not ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["skyward-sg"]}]
    )["SecurityGroups"], "no SSH group was made"
    iam = boto3.client("iam", region_name="us-east-1")
    attached = iam.list_attached_role_policies(RoleName="skyward-role")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [SSM_POLICY]
    assert _leftovers(pool_id) == {
        "instances": [],
        "launch_templates": [],
        "key_pairs": [],
        "volumes": [],
    }


def test_a_given_profile_without_the_ssm_policy_fails_clearly_and_tears_down(
    aws_env: AwsEnv, cloud: CloudInit, ssm_cloud: tuple[SessionManagerFake, Registration]
) -> None:
    fake, registration = ssm_cloud
    iam = boto3.client("iam", region_name="us-east-1")
    iam.create_role(RoleName="mine", AssumeRolePolicyDocument="{}")
    arn = iam.create_instance_profile(InstanceProfileName="mine")["InstanceProfile"]["Arn"]
    iam.add_role_to_instance_profile(InstanceProfileName="mine", RoleName="mine")
    pool = sky.ComputePool(
        provider=sky.AWS(use_ssm=True, instance_profile_arn=arn, instance_timeout=4),  # type: ignore[attr-defined]
        nodes=1,
        machine="m5.large",
        env=POWEROFF_HARMLESS,
        display="quiet",
    )
    with pytest.raises(ConnectError, match="TargetNotConnected") as caught, pool:
        pass
    assert "AmazonSSMManagedInstanceCore" in str(caught.value)
    assert set(registration.refusals) == {"role without AmazonSSMManagedInstanceCore"}
    assert fake.sessions == []
    assert iam.list_attached_role_policies(RoleName="mine")["AttachedPolicies"] == []
    assert _leftovers(pool.pool_id)["instances"] == []
    assert _leftovers(pool.pool_id)["key_pairs"] == []


def test_ssm_infrastructure_is_shared_listed_and_removed_by_skyward_down(
    aws_env: AwsEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKYWARD_AWS_CHECKIP_URL", "http://127.0.0.1:9/")  # must not be asked
    provider = sky.AWS(use_ssm=True).create()  # type: ignore[attr-defined]
    spec = build_spec(cpu=2)
    first = provider.prepare(spec, "sky-ssm-a")
    second = provider.prepare(spec, "sky-ssm-b")
    provider.teardown(first)
    provider.teardown(second)
    assert first.security_group_id == second.security_group_id, "one group for every pool"
    assert first.instance_profile_arn == second.instance_profile_arn
    assert aws_env.moto.count("ec2", "CreateSecurityGroup") == 1
    assert aws_env.moto.count("ec2", "AuthorizeSecurityGroupIngress") == 1, "nodes only"
    assert aws_env.moto.count("iam", "AttachRolePolicy") == 2, "idempotent, made sure twice"
    shared = dict(provider.list_shared())
    assert shared == {
        "security-group": first.security_group_id,
        "instance-profile": "skyward-instance-profile",
        "iam-role": "skyward-role",
    }
    assert provider.teardown_shared() == []
    assert provider.list_shared() == []
