"""The AWS provider's volume step (``skyward_aws.volumes.volume_steps``), run for real.

The step's script runs with ``sh -eu`` as root, the way the bootstrap runs a plugin step:

* EBS: sparse files behind loop devices, each given a ``/dev/xvd?`` node (a name the step
  searches) so the step has to find it by its size, format it once and mount it.
* S3: s3fs-fuse mounting a bucket of the shared moto server. s3fs takes the instance
  role's credentials from the instance metadata service (``iam_role``) as on EC2, so the
  step runs in a network namespace made here whose loopback holds ``169.254.169.254``,
  where a fake IMDS answers only IMDSv2 requests, as the launch template configures it.
  moto is reached from inside through TCP -> unix socket -> TCP (unix sockets ignore
  network namespaces), which also shows which credentials signed s3fs's requests. The
  step enters only that network namespace (``nsenter --net``): ``ip netns exec`` would
  also give it a mount namespace of its own and the mount would be invisible here.

Network rule: nothing listens or connects anywhere but 127.0.0.1 and the loopback of a
namespace made here. Needs root, ``/dev/loop-control``, ``/dev/fuse`` and s3fs
(``apt-get install s3fs``; ``.ci/run`` installs it); without them the tests skip, except
under ``CI=true`` where they fail.

Run as ``python -m tests.test_aws_volume_steps --moto-port ...`` this module is the
process serving inside the namespace (fake IMDS and the moto forwarder).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import glob
import json
import os
import re
import shutil
import socket
import socketserver
import stat
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest

import skyward as sky
from skyward.spec import build_spec
from skyward_aws.volumes import volume_steps
from tests.aws_fakes import AwsEnv
from tests.ssh_hosts import IP, _delete_namespace, _run

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ON_CI = os.environ.get("CI", "").lower() == "true"
REPO = Path(__file__).resolve().parents[1]
HELPER_MODULE = "tests.test_aws_volume_steps"
GIB = 2**30
# The step's device search, in its order; a test disk must be the only match of its size.
DEVICE_GLOBS = ("/dev/nvme*n1", "/dev/xvd?", "/dev/sd?")
ALIAS_NODES = tuple(f"/dev/xvd{letter}" for letter in "zyxwvutsrqponmlk")
STEP_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STEP_TIMEOUT = 120.0
HELPER_TIMEOUT = 30.0

NS_PREFIX = "skyt-imds-"
IMDS_ADDRESS = "169.254.169.254"
IMDS_SESSION_TOKEN = "imdsv2-session-token-of-the-fake"
ROLE = "skyward-node-role"
ACCESS_KEY_ID = "ASIASKYWARDFAKEIMDS1"
SECRET_ACCESS_KEY = "fake-imds-secret-access-key"
SESSION_TOKEN = "fake-imds-session-token"

_SIGNED_BY = re.compile(rb"Credential=([A-Z0-9]+)/")
_SECURITY_TOKEN = re.compile(rb"(?im)^x-amz-security-token:[ \t]*(\S+)")


# -- requirements and plumbing --------------------------------------------------------------


def _require(ok: bool, message: str) -> None:
    """Skip when ``ok`` is false, except on CI, where a missing prerequisite is a failure."""
    if ok:
        return
    if ON_CI:
        pytest.fail(message)
    pytest.skip(message)


def _require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool, path=STEP_PATH) is None]
    _require(not missing, f"needs {', '.join(missing)} (.ci/run lists the packages)")


def _run_step(
    script: str, home: Path, netns: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a step's script as the bootstrap would: ``sh -eu``, here as root."""
    prefix = [shutil.which("nsenter") or "nsenter", f"--net=/run/netns/{netns}"] if netns else []
    home.mkdir(exist_ok=True)
    # Only what a node's login gives: s3fs would also take AWS_ACCESS_KEY_ID or a proxy
    # from this process's environment, and then the test would not prove iam_role=auto.
    env = {"PATH": STEP_PATH, "HOME": str(home), "LANG": "C.UTF-8"}
    return subprocess.run(
        [*prefix, "sh", "-eu", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )


def _explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@dataclass(frozen=True)
class Mount:
    """One line of ``/proc/self/mountinfo``."""

    path: Path
    fstype: str
    devno: int
    options: frozenset[str]


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def _mounts() -> list[Mount]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount, _, filesystem = line.partition(" - ")
        fields = mount.split()
        major, minor = fields[2].split(":")
        found.append(
            Mount(
                path=Path(_unescape(fields[4])),
                fstype=filesystem.split()[0],
                devno=os.makedev(int(major), int(minor)),
                options=frozenset(fields[5].split(",")),
            )
        )
    return found


def _mounts_at(path: Path) -> list[Mount]:
    return [mount for mount in _mounts() if mount.path == path]


def _mount_at(path: Path) -> Mount | None:
    """The mount visible at ``path`` (the last one mounted there), if any."""
    found = _mounts_at(path)
    return found[-1] if found else None


def _unmount_under(root: Path) -> None:
    """Unmount everything at or below ``root``, deepest first; lazily when busy."""
    root = Path(os.path.realpath(root))
    for _ in range(5):
        found = {m.path for m in _mounts() if m.path == root or m.path.is_relative_to(root)}
        if not found:
            return
        for path in sorted(found, key=lambda p: len(p.parts), reverse=True):
            if _run(["umount", str(path)], check=False).returncode != 0:
                _run(["umount", "-l", str(path)], check=False)
    raise RuntimeError(f"still mounted under {root}: {[str(m.path) for m in _mounts()]}")


# -- EBS: loop devices posing as attached disks -------------------------------------------


@dataclass(frozen=True)
class FakeDisk:
    """A sparse file on a loop device, also reachable as ``node`` (``/dev/xvd?``)."""

    size_gb: int
    loop: str
    node: str
    devno: int


def _device_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _require_no_other_disk_of(size_gb: int, ours: set[str]) -> None:
    """The step formats any free, blank disk of the size it looks for: never let it see
    one of this machine's own."""
    others = []
    for pattern in DEVICE_GLOBS:
        for path in glob.glob(pattern):
            if path in ours or not stat.S_ISBLK(os.stat(path).st_mode):
                continue
            with contextlib.suppress(OSError):
                if _device_size(path) == size_gb * GIB:
                    others.append(path)
    _require(not others, f"{others} are {size_gb} GiB too; the volume step could take them")


def _write_partition_table(image: Path) -> None:
    """An MBR with one Linux partition from sector 2048 to the end, as sfdisk writes it."""
    sectors = image.stat().st_size // 512
    entry = struct.pack("<B3sB3sII", 0, bytes(3), 0x83, bytes(3), 2048, sectors - 2048)
    with image.open("r+b") as disk:
        disk.seek(446)
        disk.write(entry)
        disk.seek(510)
        disk.write(b"\x55\xaa")


def _blkid(node: str) -> subprocess.CompletedProcess[str]:
    # -p probes the device itself, never blkid's cache of an earlier loop device
    return _run(["blkid", "-p", "-s", "UUID", "-o", "value", node], check=False)


@pytest.fixture
def fake_disks(tmp_path: Path) -> Iterator[Callable[..., FakeDisk]]:
    """``fake_disks(size_gb, partition_table=False)``: a new blank disk (or one holding only
    a partition table). Afterwards everything mounted under ``tmp_path`` is unmounted and
    the disks are detached."""
    _require(os.geteuid() == 0, "the EBS volume step tests need root (loop devices, mount)")
    _require(Path("/dev/loop-control").exists(), "the EBS volume step tests need loop devices")
    _require_tools("losetup", "mkfs.ext4", "blkid", "blockdev", "lsblk", "mountpoint")
    made: list[FakeDisk] = []
    with contextlib.ExitStack() as undo:

        def attach(size_gb: int, partition_table: bool = False) -> FakeDisk:
            _require_no_other_disk_of(size_gb, {disk.node for disk in made})
            image = tmp_path / f"disk{len(made)}-{size_gb}g.img"
            with image.open("wb") as sparse:
                sparse.truncate(size_gb * GIB)
            if partition_table:
                _write_partition_table(image)
            loop = _run(["losetup", "-f", "--show", str(image)]).stdout.strip()
            undo.callback(_run, ["losetup", "-d", loop])
            devno = os.stat(loop).st_rdev
            node = next((name for name in ALIAS_NODES if not os.path.lexists(name)), None)
            assert node is not None, f"every one of {ALIAS_NODES} exists already"
            os.mknod(node, 0o600 | stat.S_IFBLK, devno)
            undo.callback(os.unlink, node)
            made.append(FakeDisk(size_gb, loop, node, devno))
            return made[-1]

        try:
            yield attach
        finally:
            _unmount_under(tmp_path)


def test_ebs_volumes_are_found_by_size_formatted_once_and_mounted_again(
    fake_disks: Callable[..., FakeDisk], tmp_path: Path
) -> None:
    small, large, other_small = fake_disks(1), fake_disks(2), fake_disks(1)
    paths = [tmp_path / "scratch space", tmp_path / "large", tmp_path / "more"]
    spec = build_spec(
        volumes=[
            sky.Volume(size_gb=1, mount_path=str(paths[0])),
            sky.Volume(size_gb=2, mount_path=str(paths[1])),
            sky.Volume(size_gb=1, mount_path=str(paths[2])),
        ]
    )
    (step,) = volume_steps(spec)
    home = tmp_path / "home"

    fresh = _run_step(step.script, home)
    assert fresh.returncode == 0, _explain(fresh)
    mounts = [_mount_at(path) for path in paths]
    assert [m.fstype if m else None for m in mounts] == ["ext4"] * 3
    devices = [m.devno for m in mounts if m]
    assert devices[1] == large.devno
    # same size: the later volume takes the disk the earlier one did not mount
    assert {devices[0], devices[2]} == {small.devno, other_small.devno}
    assert all(path.stat().st_uid == os.getuid() for path in paths)
    uuids = [_blkid(disk.node).stdout.strip() for disk in (small, large, other_small)]
    assert all(uuids), uuids
    for index, path in enumerate(paths):
        (path / "marker").write_text(f"volume {index}")

    # the bootstrap runs again on a warm node: the mounted volumes are kept as they are
    warm = _run_step(step.script, home)
    assert warm.returncode == 0, _explain(warm)
    assert [len(_mounts_at(path)) for path in paths] == [1, 1, 1]

    # a disk that has a file system keeps it: mounted again, never formatted again
    for path in paths:
        _run(["umount", str(path)])
    again = _run_step(step.script, home)
    assert again.returncode == 0, _explain(again)
    assert [m.devno if m else None for m in map(_mount_at, paths)] == devices
    assert [(path / "marker").read_text() for path in paths] == [
        "volume 0",
        "volume 1",
        "volume 2",
    ]
    assert [_blkid(disk.node).stdout.strip() for disk in (small, large, other_small)] == uuids


def test_ebs_step_never_formats_a_disk_of_the_size_holding_a_partition_table(
    fake_disks: Callable[..., FakeDisk], tmp_path: Path
) -> None:
    disk = fake_disks(1, partition_table=True)  # not a new volume: somebody's disk
    path = tmp_path / "data"
    (step,) = volume_steps(build_spec(volumes=[sky.Volume(size_gb=1, mount_path=str(path))]))

    result = _run_step(step.script, tmp_path / "home")

    assert result.returncode != 0, _explain(result)
    assert _mount_at(path) is None
    probe = _run(["blkid", "-p", "-s", "PTTYPE", "-o", "value", disk.node], check=False)
    assert probe.stdout.strip() == "dos", "the disk's partition table was overwritten"
    assert _blkid(disk.node).stdout.strip() == "", "the disk was given a file system"


def test_ebs_step_without_a_disk_of_the_size_fails_clearly(
    fake_disks: Callable[..., FakeDisk], tmp_path: Path
) -> None:
    wrong_size = fake_disks(1)
    _require_no_other_disk_of(3, {wrong_size.node})
    path = tmp_path / 'data $dir "quoted"'  # a path the shell must not expand
    (step,) = volume_steps(build_spec(volumes=[sky.Volume(size_gb=3, mount_path=str(path))]))

    result = _run_step(step.script, tmp_path / "home")

    assert result.returncode != 0, _explain(result)
    assert f"skyward: no free 3 GB volume found for {path}" in result.stderr
    assert _mount_at(path) is None
    assert _blkid(wrong_size.node).returncode == 2, "a disk of another size was formatted"


# -- S3: s3fs with instance credentials from a fake IMDS ----------------------------------


def _credentials_document() -> str:
    """What IMDS serves for a role, in its own layout (s3fs 1.90 parses it by hand)."""
    now = datetime.now(UTC)
    document = {
        "Code": "Success",
        "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "Type": "AWS-HMAC",
        "AccessKeyId": ACCESS_KEY_ID,
        "SecretAccessKey": SECRET_ACCESS_KEY,
        "Token": SESSION_TOKEN,
        "Expiration": (now + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return json.dumps(document, indent=2, separators=(",", " : "))


class _MetadataServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, log_path: Path, role: str) -> None:
        self.log_path = log_path
        self.role = role
        self.log_lock = threading.Lock()
        super().__init__((IMDS_ADDRESS, 80), _MetadataHandler)


class _MetadataHandler(BaseHTTPRequestHandler):
    """The IMDS paths an instance-profile client needs, as a node launched by the provider
    sees them: the launch template sets ``HttpTokens=required``, so a request without a
    token is refused (401), as IMDS does. Without a role the role list is 404."""

    server: _MetadataServer
    credentials_path = "/latest/meta-data/iam/security-credentials/"

    def do_PUT(self) -> None:
        self._record()
        if self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        ):
            self._send(200, IMDS_SESSION_TOKEN)
        else:
            self._send(400, "")

    def do_GET(self) -> None:
        self._record()
        role = self.server.role
        if self.headers.get("X-aws-ec2-metadata-token") != IMDS_SESSION_TOKEN:
            self._send(401, "")
        elif role and self.path == self.credentials_path:
            self._send(200, role)
        elif role and self.path == self.credentials_path + role:
            self._send(200, _credentials_document())
        else:
            self._send(404, "")

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        entry = {
            "method": self.command,
            "path": self.path,
            "token": "yes" if self.headers.get("X-aws-ec2-metadata-token") else "no",
            "ttl": self.headers.get("X-aws-ec2-metadata-token-ttl-seconds") or "",
        }
        with self.server.log_lock, self.server.log_path.open("a") as log:
            log.write(json.dumps(entry) + "\n")

    def _send(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _ThreadingTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True


class _ThreadingUnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def _pump(source: socket.socket, sink: socket.socket, seen: Callable[[bytes], None]) -> None:
    try:
        while chunk := source.recv(65536):
            seen(chunk)
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _splice(client: socket.socket, upstream: socket.socket, seen: Callable[[bytes], None]) -> None:
    """Copy both ways until both sides have finished; ``seen`` gets what the client sent."""
    back = threading.Thread(target=_pump, args=(upstream, client, lambda _: None), daemon=True)
    back.start()
    _pump(client, upstream, seen)
    back.join()


def _serve_namespace(argv: list[str]) -> None:
    """Inside the namespace: the fake IMDS, and 127.0.0.1:<moto port> forwarded to the
    unix socket the test serves. Runs until its stdin closes (the test ended or died)."""
    parser = argparse.ArgumentParser(prog=HELPER_MODULE)
    parser.add_argument("--moto-port", type=int, required=True)
    parser.add_argument("--moto-socket", required=True)
    parser.add_argument("--imds-log", type=Path, required=True)
    parser.add_argument("--role", default="")
    args = parser.parse_args(argv)

    class ToUnixSocket(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
                upstream.connect(args.moto_socket)
                _splice(self.request, upstream, lambda _: None)

    servers: list[socketserver.BaseServer] = [
        _MetadataServer(args.imds_log, args.role),
        _ThreadingTCPServer(("127.0.0.1", args.moto_port), ToUnixSocket),
    ]
    for server in servers:
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
    for server in servers:
        server.shutdown()
        server.server_close()


class _MotoBridge:
    """Root namespace side: a unix socket forwarded to moto, noting who signs requests."""

    def __init__(self, socket_path: Path, moto_port: int) -> None:
        self.socket_path = socket_path
        self.moto_port = moto_port
        self.signers: set[str] = set()
        self.session_tokens: set[str] = set()
        self._lock = threading.Lock()
        bridge = self

        class ToMoto(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with socket.create_connection(("127.0.0.1", bridge.moto_port)) as upstream:
                    _splice(self.request, upstream, bridge.observer())

        self._server = _ThreadingUnixServer(str(socket_path), ToMoto)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def observer(self) -> Callable[[bytes], None]:
        """Scans one connection's requests for SigV4 access keys and session tokens."""
        tail = b""

        def observe(chunk: bytes) -> None:
            nonlocal tail
            text = tail + chunk
            keys = {m.group(1).decode() for m in _SIGNED_BY.finditer(text)}
            tokens = {m.group(1).decode() for m in _SECURITY_TOKEN.finditer(text)}
            with self._lock:
                self.signers |= keys
                self.session_tokens |= tokens
            tail = text[-1024:]  # a header may arrive split across two reads

        return observe

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@dataclass
class MetadataNamespace:
    """A network namespace with a fake IMDS and moto at the same 127.0.0.1 port as here."""

    name: str
    imds_log: Path
    bridge: _MotoBridge
    home: Path
    helper: subprocess.Popen[str] = field(repr=False)

    def run_step(self, script: str) -> subprocess.CompletedProcess[str]:
        return _run_step(script, self.home, netns=self.name)

    def imds_requests(self) -> list[dict[str, str]]:
        if not self.imds_log.exists():
            return []
        return [json.loads(line) for line in self.imds_log.read_text().splitlines()]


def _remove_stale_namespaces() -> None:
    """Namespaces a killed session of this file left behind (their pid is gone)."""
    for line in _run([IP, "netns", "list"], check=False).stdout.splitlines():
        match = re.match(rf"({re.escape(NS_PREFIX)}(\d+))\b", line)
        if match and not psutil.pid_exists(int(match.group(2))):
            _delete_namespace(match.group(1))


def _stop_helper(helper: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):
        if helper.stdin:
            helper.stdin.close()
    try:
        helper.wait(timeout=5)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait(timeout=5)
    if helper.stdout:
        helper.stdout.close()


@pytest.fixture
def metadata_namespace(
    request: pytest.FixtureRequest, aws_env: AwsEnv, tmp_path: Path
) -> Iterator[MetadataNamespace]:
    """The namespace, its helper process and the bridge; afterwards everything mounted
    under ``tmp_path`` is unmounted and every process in the namespace killed. The
    instance's role is ``ROLE`` unless parametrized indirectly ("" for none)."""
    role: str = getattr(request, "param", ROLE)
    _require(os.geteuid() == 0, "the S3 volume step tests need root (namespaces, FUSE)")
    _require(Path("/dev/fuse").exists(), "the S3 volume step tests need /dev/fuse")
    _require_tools("ip", "nsenter", "s3fs", "curl", "mountpoint")
    _remove_stale_namespaces()
    name = f"{NS_PREFIX}{os.getpid()}"
    # a unix socket path must fit in 108 bytes, which tmp_path may not
    socket_dir = Path(tempfile.mkdtemp(prefix="skyt-imds-"))
    with contextlib.ExitStack() as undo:
        undo.callback(shutil.rmtree, socket_dir, True)
        _delete_namespace(name)  # what an earlier test of this session may have left
        _run([IP, "netns", "add", name])
        undo.callback(_delete_namespace, name)  # also kills s3fs daemons still inside
        _run([IP, "-n", name, "link", "set", "lo", "up"])
        _run([IP, "-n", name, "addr", "add", f"{IMDS_ADDRESS}/32", "dev", "lo"])
        bridge = _MotoBridge(socket_dir / "moto.sock", aws_env.moto.port)
        undo.callback(bridge.stop)
        imds_log = tmp_path / "imds-requests.jsonl"
        helper = subprocess.Popen(
            [
                shutil.which("nsenter") or "nsenter",
                f"--net=/run/netns/{name}",
                sys.executable,
                "-m",
                HELPER_MODULE,
                "--moto-port",
                str(aws_env.moto.port),
                "--moto-socket",
                str(bridge.socket_path),
                "--imds-log",
                str(imds_log),
                "--role",
                role,
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        undo.callback(_stop_helper, helper)
        watchdog = threading.Timer(HELPER_TIMEOUT, helper.kill)
        watchdog.start()
        assert helper.stdout is not None
        ready = helper.stdout.readline().strip()
        watchdog.cancel()
        assert ready == "ready", f"the namespace helper did not start (exit {helper.poll()})"
        try:
            yield MetadataNamespace(name, imds_log, bridge, tmp_path / "home", helper)
        finally:
            _unmount_under(tmp_path)


def _s3_client() -> S3Client:
    import boto3

    return boto3.client("s3", region_name="us-east-1")  # aws_env points boto3 at moto


def _bucket_keys(s3: S3Client, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def _assert_signed_by_the_instance_role(namespace: MetadataNamespace) -> None:
    requests = namespace.imds_requests()
    role_path = _MetadataHandler.credentials_path + ROLE
    assert ("GET", role_path, "yes") in [(r["method"], r["path"], r["token"]) for r in requests]
    assert all(r["token"] == "yes" for r in requests if r["method"] == "GET"), requests
    assert namespace.bridge.signers == {ACCESS_KEY_ID}
    assert namespace.bridge.session_tokens == {SESSION_TOKEN}


def test_s3_volume_mounts_a_prefix_read_only_with_the_instance_role(
    metadata_namespace: MetadataNamespace, aws_env: AwsEnv, tmp_path: Path
) -> None:
    s3 = _s3_client()
    s3.create_bucket(Bucket="skyward-datasets")
    shard = bytes(range(256)) * 4096
    objects = {"train/a.txt": b"alpha\n", "train/shards/0001.bin": shard, "valid/b.txt": b"b"}
    for key, body in objects.items():
        s3.put_object(Bucket="skyward-datasets", Key=key, Body=body)
    path = tmp_path / "data"
    volume = sky.S3Volume(
        mount_path=str(path), bucket="skyward-datasets", prefix="train/", read_only=True
    )
    (step,) = volume_steps(build_spec(volumes=[volume]))
    assert f"-o url={aws_env.moto.url} -o use_path_request_style" in step.script

    result = metadata_namespace.run_step(step.script)

    assert result.returncode == 0, (_explain(result), metadata_namespace.imds_requests())
    mount = _mount_at(path)
    assert mount is not None
    assert mount.fstype == "fuse.s3fs"
    assert "ro" in mount.options
    assert sorted(os.listdir(path)) == ["a.txt", "shards"]
    assert (path / "a.txt").read_bytes() == b"alpha\n"
    assert (path / "shards" / "0001.bin").read_bytes() == shard
    with pytest.raises(OSError) as refused:
        (path / "new.txt").write_bytes(b"nope")
    assert refused.value.errno == errno.EROFS
    assert _bucket_keys(s3, "skyward-datasets") == sorted(objects)
    _assert_signed_by_the_instance_role(metadata_namespace)

    warm = metadata_namespace.run_step(step.script)
    assert warm.returncode == 0, _explain(warm)
    assert len(_mounts_at(path)) == 1


def test_s3_volume_mounted_read_write_uploads_what_the_node_writes(
    metadata_namespace: MetadataNamespace, tmp_path: Path
) -> None:
    s3 = _s3_client()
    s3.create_bucket(Bucket="skyward-results")
    s3.put_object(Bucket="skyward-results", Key="runs/seed.txt", Body=b"seed")
    path = tmp_path / "results"
    volume = sky.S3Volume(
        mount_path=str(path), bucket="skyward-results", prefix="runs", read_only=False
    )
    (step,) = volume_steps(build_spec(volumes=[volume]))

    result = metadata_namespace.run_step(step.script)

    assert result.returncode == 0, (_explain(result), metadata_namespace.imds_requests())
    assert (path / "seed.txt").read_bytes() == b"seed"
    (path / "out.txt").write_bytes(b"written on the node")
    written = s3.get_object(Bucket="skyward-results", Key="runs/out.txt")["Body"].read()
    assert written == b"written on the node"
    _assert_signed_by_the_instance_role(metadata_namespace)

    warm = metadata_namespace.run_step(step.script)
    assert warm.returncode == 0, _explain(warm)


@pytest.mark.parametrize("metadata_namespace", [""], indirect=True)
def test_s3_step_fails_and_leaves_no_dead_mount_when_the_node_has_no_role(
    metadata_namespace: MetadataNamespace, tmp_path: Path
) -> None:
    _s3_client().create_bucket(Bucket="skyward-datasets")
    path = tmp_path / "data"
    volume = sky.S3Volume(mount_path=str(path), bucket="skyward-datasets")
    (step,) = volume_steps(build_spec(volumes=[volume]))

    result = metadata_namespace.run_step(step.script)

    assert result.returncode != 0, _explain(result)
    assert f"skyward: s3fs could not mount skyward-datasets at {path}" in result.stderr
    assert _mount_at(path) is None
    assert path.is_dir(), "a dead mount would fail the next bootstrap (mkdir, mountpoint)"


# -- the endpoint option, without root --------------------------------------------------------


def test_s3_step_mounts_through_the_endpoint_boto3_is_pointed_at(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = build_spec(volumes=[sky.S3Volume(mount_path="/data", bucket="my-bucket")])
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)

    def mount_lines() -> list[str]:
        (step,) = volume_steps(spec)
        subprocess.run(["sh", "-n"], input=step.script, text=True, check=True)
        lines = [line.strip() for line in step.script.splitlines()]
        return [line for line in lines if line.startswith("$SUDO s3fs ")]

    def options_end_with(suffix: str) -> bool:
        lines = mount_lines()
        return len(lines) == 2 and all(line.endswith(suffix) for line in lines)

    assert options_end_with("$owner -o ro")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    assert options_end_with("-o ro -o url=http://127.0.0.1:4566 -o use_path_request_style")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.test:9000/")
    assert options_end_with("-o url=https://s3.example.test:9000 -o use_path_request_style")
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert options_end_with("$owner -o ro")


if __name__ == "__main__":
    _serve_namespace(sys.argv[1:])
