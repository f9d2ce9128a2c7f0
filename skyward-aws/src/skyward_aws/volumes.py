"""Bootstrap steps that mount a pool's volumes on each node.

``Volume``: the EBS volume the launch template attached (NVMe device found by size), given
an ext4 file system if it has none, mounted. ``S3Volume``: the bucket (or prefix) mounted
with s3fs-fuse, a real FUSE client from the distribution's packages, using the instance
profile's credentials (``iam_role=auto``), read-only when asked.
"""

from __future__ import annotations

import shlex

from skyward.image import BootstrapStep
from skyward.spec import ComputeSpec
from skyward.volumes import S3Volume, Volume

__all__ = ["volume_steps"]

_SUDO = 'if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi\n'

_EBS = """\
dev=""
for d in /dev/nvme*n1 /dev/xvd? /dev/sd?; do
  [ -b "$d" ] || continue
  size=$($SUDO blockdev --getsize64 "$d" 2>/dev/null || echo 0)
  if [ "$size" = {bytes} ] && ! $SUDO findmnt -S "$d" >/dev/null 2>&1; then dev=$d; break; fi
done
[ -n "$dev" ] || {{ echo "skyward: no free {size_gb} GB volume found for {path}" >&2; exit 1; }}
$SUDO blkid "$dev" >/dev/null 2>&1 || $SUDO mkfs.ext4 -q "$dev"
$SUDO mkdir -p {path}
mountpoint -q {path} || $SUDO mount "$dev" {path}
$SUDO chown "$(id -u):$(id -g)" {path}
"""

_S3 = """\
if ! command -v s3fs >/dev/null 2>&1; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq s3fs
fi
$SUDO mkdir -p {path}
$SUDO chown "$(id -u):$(id -g)" {path}
mountpoint -q {path} || s3fs {source} {path} -o iam_role=auto -o allow_other{ro}
"""


def volume_steps(spec: ComputeSpec | None) -> list[BootstrapStep]:
    """One ``volumes`` step mounting every volume of the pool (none without volumes)."""
    if spec is None or not spec.volumes:
        return []
    parts = [_SUDO]
    for volume in spec.volumes:
        path = shlex.quote(volume.mount_path)
        if isinstance(volume, Volume):
            parts.append(
                _EBS.format(bytes=volume.size_gb * 2**30, size_gb=volume.size_gb, path=path)
            )
        elif isinstance(volume, S3Volume):
            prefix = volume.prefix.strip("/")
            source = shlex.quote(f"{volume.bucket}:/{prefix}" if prefix else volume.bucket)
            parts.append(
                _S3.format(source=source, path=path, ro=" -o ro" if volume.read_only else "")
            )
    return [BootstrapStep(name="volumes", script="".join(parts), after="apt")]
