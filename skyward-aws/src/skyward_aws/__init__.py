"""skyward-aws: the AWS provider for Skyward (``sky.AWS``), Trainium/Inferentia catalog
entries and EBS/S3 volumes. Install with ``pip install "skyward[aws]"``."""

from skyward_aws.config import AWS

__all__ = ["AWS"]
