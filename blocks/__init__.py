"""Prefect blocks genoflows uses: register them all with `prefect block register -m blocks`.

Credentials and storage come from prefect-aws (`AwsCredentials`, `S3Bucket`): save one per lab account and
pass its name to a flow (`aws_credentials_block="lab-aws"`). The project's own blocks live beside this file.
"""

from prefect_aws import AwsCredentials, S3Bucket

from blocks.aws_batch import AwsBatch
from blocks.tool_images import ToolImages

__all__ = ["AwsBatch", "AwsCredentials", "S3Bucket", "ToolImages"]
