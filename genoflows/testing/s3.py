"""A local S3 endpoint: moto in server mode on 127.0.0.1, so boto3 goes over real HTTP."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

# moto accepts any credentials; set dummies so boto3 never looks for real ones.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto's threaded server on a free port; yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    for key, value in TEST_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def auth_enforced(endpoint: str) -> Iterator[tuple[str, str]]:
    """Within the block moto checks IAM: yields keys of a user with no permissions (every call is AccessDenied).

    moto skips authorisation by default; its /moto-api/reset-auth endpoint switches it on for the whole server,
    so this is restored on exit.
    """
    import boto3
    import httpx

    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    user = f"genoflows-no-permissions-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        yield key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()
