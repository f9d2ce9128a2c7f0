"""Volumes a pool mounts on every node."""

from __future__ import annotations

import posixpath
from typing import TypeAlias

from attrs import field, frozen

from skyward.errors import ConfigurationError

__all__ = ["S3Volume", "Volume", "VolumeLike"]


def _absolute_path(_: object, attribute: object, value: str) -> None:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ConfigurationError(
            "volume.mount_path", f"{value!r} is not an absolute path", 'Use e.g. "/data"'
        )
    if not posixpath.normpath(value).strip("/"):
        raise ConfigurationError("volume.mount_path", "cannot mount over /", 'Use e.g. "/data"')


def _positive_size(_: object, __: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(
            "volume.size_gb", f"{value!r} is not a positive whole number of GB", "Use e.g. 100"
        )


def _bucket_name(_: object, __: object, value: str) -> None:
    if not isinstance(value, str) or not 3 <= len(value) <= 63 or "/" in value:
        raise ConfigurationError(
            "volume.bucket", f"{value!r} is not an S3 bucket name", "Give the bare bucket name"
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
    prefix: str = ""
    read_only: bool = True


VolumeLike: TypeAlias = Volume | S3Volume
