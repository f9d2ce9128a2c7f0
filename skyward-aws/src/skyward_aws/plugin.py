"""Entry point of skyward-aws (group ``skyward``, name ``aws``).

This package will register the AWS provider (`sky.AWS`), Trainium/Inferentia catalog entries and
S3 volumes through Skyward's hooks. Until it does, it registers nothing, and Skyward reports the
name as provided by no installed plugin.
"""
