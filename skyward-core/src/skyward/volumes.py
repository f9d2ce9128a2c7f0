"""Volumes a pool mounts on every node."""

from __future__ import annotations

import posixpath
import re
from typing import TypeAlias

from attrs import field, frozen

from skyward.errors import ConfigurationError

__all__ = ["S3Volume", "Volume", "VolumeLike"]


# The largest EBS volume (64 TiB); other clouds' block volumes are smaller.
MAX_SIZE_GB = 65_536
MAX_PATH = 4_096
# Mount paths and prefixes reach shell scripts and fstab-like lines: no control characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# S3's rules for new buckets (lowercase, digits, dots, hyphens; 3 to 63 characters).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _absolute_path(_: object, attribute: object, value: str) -> None:
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or _CONTROL.search(value)
        or len(value) > MAX_PATH
    ):
        raise ConfigurationError(
            "volume.mount_path", f"{value!r} is not an absolute path", 'Use e.g. "/data"'
        )
    if not posixpath.normpath(value).strip("/"):
        raise ConfigurationError("volume.mount_path", "cannot mount over /", 'Use e.g. "/data"')


def _positive_size(_: object, __: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SIZE_GB:
        raise ConfigurationError(
            "volume.size_gb",
            f"{value!r} is not a whole number of GB in 1..{MAX_SIZE_GB}",
            "Use e.g. 100",
        )


def _bucket_name(_: object, __: object, value: str) -> None:
    if not isinstance(value, str) or not _BUCKET.fullmatch(value) or ".." in value:
        raise ConfigurationError(
            "volume.bucket",
            f"{value!r} is not an S3 bucket name",
            "Give the bare bucket name (lowercase letters, digits, '.', '-')",
        )


def _prefix(_: object, __: object, value: str) -> None:
    if not isinstance(value, str) or _CONTROL.search(value) or len(value) > 1024:
        raise ConfigurationError(
            "volume.prefix", f"{value!r} is not a key prefix", 'Use e.g. "datasets/train/"'
        )


def _read_only(_: object, __: object, value: bool) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(
            "volume.read_only", f"{value!r} is not True or False", "Use read_only=False"
        )


@frozen
class Volume:
    """A block volume created for the pool and mounted at ``mount_path`` on every node."""

    size_gb: int = field(validator=_positive_size)
    mount_path: str = field(validator=_absolute_path)


@frozen
class S3Volume:
    """An S3 bucket (optionally a prefix of it) mounted at ``mount_path``."""

    mount_path: str = field(validator=_absolute_path)
    bucket: str = field(validator=_bucket_name)
    prefix: str = field(default="", validator=_prefix)
    read_only: bool = field(default=True, validator=_read_only)


VolumeLike: TypeAlias = Volume | S3Volume
