"""Bootstrap steps that mount a pool's volumes on each node.

``Volume``: the EBS volume the launch template attached (found by size among the disks no
one has mounted), given an ext4 file system when blank, mounted. ``S3Volume``: the bucket
(or prefix) mounted with s3fs-fuse, a real FUSE client from the distribution's packages,
using the instance profile's credentials (``iam_role``; the step asks IMDS for the role's
name with an IMDSv2 token), read-only when asked; a mount that does not hold fails the
step. When the client points boto3 at its own S3 endpoint (``AWS_ENDPOINT_URL_S3``, else
``AWS_ENDPOINT_URL``, read when the step is built) the nodes mount through it too
(``-o url=... -o use_path_request_style``): LocalStack, moto and S3-compatible stores hold
the client's buckets and address them by path.
"""

from __future__ import annotations

import os
import shlex

from skyward.image import BootstrapStep
from skyward.spec import ComputeSpec
from skyward.volumes import S3Volume, Volume

__all__ = ["volume_steps"]

_SUDO = 'if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi\n'

# A warm node (the bootstrap runs again) has the volume mounted already: its device is then
# in use, so the search must not run. A disk is in use when it or one of its partitions is
# mounted: the root disk (nvme0n1) is, and it may have the volume's size. Only a device
# without any signature (blkid -p: 2) is new and formatted; a partition table, another
# file system or a doubtful probe is somebody's data. The path is its own word in the
# message: inside double quotes its shell quoting would not apply.
_EBS = """\
if ! mountpoint -q {path}; then
  dev=""
  for d in /dev/nvme*n1 /dev/xvd? /dev/sd?; do
    [ -b "$d" ] || continue
    [ "$($SUDO blockdev --getsize64 "$d" 2>/dev/null || echo 0)" = {bytes} ] || continue
    [ -z "$($SUDO lsblk -nro MOUNTPOINT "$d" 2>/dev/null | tr -d '[:space:]')" ] || continue
    dev=$d
    break
  done
  [ -n "$dev" ] || {{ echo "skyward: no free {size_gb} GB volume found for" {path} >&2; exit 1; }}
  probe=0
  $SUDO blkid -p "$dev" >/dev/null 2>&1 || probe=$?
  [ "$probe" != 2 ] || $SUDO mkfs.ext4 -q "$dev"
  $SUDO mkdir -p {path}
  $SUDO mount "$dev" {path}
fi
$SUDO chown "$(id -u):$(id -g)" {path}
"""

# s3fs 1.90 (Ubuntu 22.04's) asks IMDS for iam_role=auto's role name without an IMDSv2
# token, which the launch template's HttpTokens=required refuses, and the mount dies
# (s3fs-fuse#1762, fixed in 1.91). So the step asks with a token and names the role; when
# it cannot (no curl, no role), s3fs is left to look itself.
_S3_ROLE = """\
_sky_instance_role() {
  command -v curl >/dev/null 2>&1 || return 0
  imds=http://169.254.169.254/latest
  token=$(curl -fs -m 5 --noproxy "*" -X PUT \\
    -H "X-aws-ec2-metadata-token-ttl-seconds: 60" "$imds/api/token") || return 0
  role=$(curl -fs -m 5 --noproxy "*" -H "X-aws-ec2-metadata-token: $token" \\
    "$imds/meta-data/iam/security-credentials/" | head -n 1) || return 0
  case $role in *[!A-Za-z0-9+=.@_-]*) ;; *) printf '%s' "$role" ;; esac
}
"""

# s3fs gives the mount's root the owner of the directory it mounts over; on a warm node a
# chown would reach the mounted bucket (refused when read-only), so it happens only before.
# s3fs returns before it has credentials or has seen the bucket: it checks both when the
# kernel first talks to it and, failing, exits and unmounts. The first look inside waits for
# that check but may still be answered by the exiting s3fs, so a second look a moment later
# tells whether the mount holds.
_S3 = """\
if ! command -v s3fs >/dev/null 2>&1; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq s3fs
fi
if ! mountpoint -q {path}; then
  $SUDO mkdir -p {path}
  $SUDO chown "$(id -u):$(id -g)" {path}
  role=$(_sky_instance_role)
  # Mounted by root (FUSE refuses allow_other to users unless fuse.conf says so), the
  # files shown as the login user's.
  owner="-o allow_other -o uid=$(id -u) -o gid=$(id -g)"
  if [ -n "$role" ]; then
    $SUDO s3fs {source} {path} -o "iam_role=$role" $owner{ro}{endpoint}
  else
    $SUDO s3fs {source} {path} -o iam_role=auto $owner{ro}{endpoint}
  fi
  ls -d {path}/. >/dev/null 2>&1 && sleep 1 && mountpoint -q {path} || {{
    echo "skyward: s3fs could not mount" {source} "at" {path} "(its log: syslog)" >&2
    exit 1
  }}
fi
"""


def _s3_endpoint_options() -> str:
    """s3fs options naming the S3 endpoint boto3 uses in this process ("" for AWS's own)."""
    # boto3's own switch for ignoring the endpoint variables: follow it so both agree.
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        return ""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return ""
    return f" -o {shlex.quote('url=' + endpoint.rstrip('/'))} -o use_path_request_style"


def volume_steps(spec: ComputeSpec | None) -> list[BootstrapStep]:
    """One ``volumes`` step mounting every volume of the pool (none without volumes)."""
    if spec is None or not spec.volumes:
        return []
    parts = [_SUDO]
    endpoint = _s3_endpoint_options()
    for volume in spec.volumes:
        path = shlex.quote(volume.mount_path)
        if isinstance(volume, Volume):
            parts.append(
                _EBS.format(bytes=volume.size_gb * 2**30, size_gb=volume.size_gb, path=path)
            )
        elif isinstance(volume, S3Volume):
            if _S3_ROLE not in parts:
                parts.append(_S3_ROLE)
            prefix = volume.prefix.strip("/")
            source = shlex.quote(f"{volume.bucket}:/{prefix}" if prefix else volume.bucket)
            parts.append(
                _S3.format(
                    source=source,
                    path=path,
                    endpoint=endpoint,
                    ro=" -o ro" if volume.read_only else "",
                )
            )
    return [BootstrapStep(name="volumes", script="".join(parts), after="apt")]
