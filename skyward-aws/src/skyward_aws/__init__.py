"""skyward-aws: the AWS provider (`sky.AWS`), Trainium/Inferentia catalog entries and S3 volumes
for Skyward.
"""
