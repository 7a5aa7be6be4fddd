"""An S3 server on 127.0.0.1 for tests: moto's server mode, reached by boto3 over real HTTP.

Usage from a test module (pytest puts ``tests/`` on sys.path)::

    pytest_plugins = ["tests.services.s3"]    # the fixtures s3_server and s3_settings

    def test_something(s3_settings):
        store = open_store(s3_settings)      # a fresh bucket per test

``s3_server.environment`` holds the fake credentials a subprocess (a publishing process, ``farm``) needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import boto3
import pytest
from moto.server import ThreadedMotoServer

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "farm-test-key",
    "AWS_SECRET_ACCESS_KEY": "farm-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    endpoint_url: str
    environment: dict[str, str]

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"farm-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint_url).create_bucket(Bucket=name)
        return name


@dataclass
class S3StoreSettings:
    """The ``[store]`` section for an S3 store (duck-typed like gentoo_farm.config.StoreSection)."""

    bucket: str
    endpoint_url: str
    type: Literal["local", "s3"] = "s3"
    path: Path = Path("/nonexistent")
    prefix: str = "farm"
    region: str = "us-east-1"
    public_url: str = ""
    part_size_mb: int = 5
    concurrency: int = 4
    keep: int = 2
    url_expiry_seconds: int = 600
    checksums: Literal["when_supported", "when_required"] = "when_supported"
    listen: str = field(default="127.0.0.1:0")


@contextlib.contextmanager
def running_s3_server() -> Iterator[S3Server]:
    saved = {name: os.environ.get(name) for name in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}", {**os.environ, **FAKE_CREDENTIALS})
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with running_s3_server() as running:
        yield running


@pytest.fixture
def s3_settings(s3_server: S3Server) -> S3StoreSettings:
    return S3StoreSettings(bucket=s3_server.create_bucket(), endpoint_url=s3_server.endpoint_url)


def make_bucket_public(settings: S3StoreSettings) -> str:
    """Let anyone GET the bucket's objects (a bucket policy, as for a real public bucket); its public URL."""
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{settings.bucket}/*",
            }
        ],
    }
    client = boto3.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region)
    client.put_bucket_policy(Bucket=settings.bucket, Policy=json.dumps(policy))
    return f"{settings.endpoint_url}/{settings.bucket}/{settings.prefix}"
