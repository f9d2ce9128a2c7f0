"""Machine images: AWS's public SSM parameters, or the user's own AMI."""

from __future__ import annotations

from typing import Any

__all__ = ["default_ami_parameter", "resolve_ami", "username_for"]

_UBUNTU = "/aws/service/canonical/ubuntu/server/22.04/stable/current/{arch}/hvm/ebs-gp2/ami-id"
_DLAMI = (
    "/aws/service/deeplearning/ami/{arch}/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)


def default_ami_parameter(architecture: str, gpu: bool) -> str:
    """The public parameter naming the default AMI for a type."""
    if gpu:
        return _DLAMI.format(arch="arm64" if architecture == "arm64" else "x86_64")
    return _UBUNTU.format(arch="arm64" if architecture == "arm64" else "amd64")


def username_for(image_name: str) -> str:
    """The login user of an AMI, from its name (Ubuntu, Amazon Linux, Debian, ...)."""
    name = image_name.lower()
    if any(key in name for key in ("amzn", "al2023", "amazon linux")):
        return "ec2-user"
    if "debian" in name:
        return "admin"
    if "rocky" in name:
        return "rocky"
    if "centos" in name:
        return "centos"
    return "ubuntu"


def resolve_ami(
    ssm: Any, ec2: Any, custom: str | None, architecture: str, gpu: bool
) -> tuple[str, str]:
    """(AMI id, login user) for a type's architecture."""
    if custom is not None:
        images = ec2.describe_images(ImageIds=[custom]).get("Images", [])
        name = str(images[0].get("Name", "")) if images else ""
        return custom, username_for(name)
    parameter = default_ami_parameter(architecture, gpu)
    value = ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
    return str(value), "ubuntu"
