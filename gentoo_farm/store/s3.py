"""The S3 backend (boto3): multipart transfers, retries with backoff, presigned URLs for workers.

Credentials come only from the standard AWS chain (environment, profile, instance role).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NoReturn

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from gentoo_farm.store.base import (
    ArtifactStore,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    ProgressCallback,
    StoreError,
    check_key,
    open_upload_source,
)

MAX_ATTEMPTS = 6
"""botocore's "standard" retry mode: backoff with jitter on throttling, 5xx and connection errors."""

DELETE_BATCH = 1000
MAX_SINGLE_PUT = 5 * 1024**3
"""S3's limit for one PUT, and so for a create-only upload (:meth:`S3Store.put_file_new`)."""


class S3Store(ArtifactStore):
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str = "",
        region: str = "",
        public_url: str = "",
        part_size_mb: int = 64,
        concurrency: int = 4,
        checksums: str = "when_supported",
        connect_timeout: float = 10,
        read_timeout: float = 60,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        if not bucket:
            raise StoreError("store type is s3 but no bucket is configured ([store] bucket)")
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        # boto3 reads these too; naming the endpoint here makes it path-style and names it in errors.
        endpoint_url = (
            endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL", "")
        )
        self.endpoint_url = endpoint_url or None
        super().__init__(
            f"s3://{bucket}/{self.prefix}" + (f" at {endpoint_url}" if endpoint_url else ""), public_url
        )
        self.max_attempts = max_attempts
        config = botocore.config.Config(
            region_name=region or None,
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            signature_version="s3v4",
            # S3-compatible servers (Ceph RGW, MinIO, ...) behind an endpoint usually lack bucket DNS names.
            s3={"addressing_style": "path"} if endpoint_url else None,
            request_checksum_calculation=checksums,
            response_checksum_validation=checksums,
        )
        self.client = boto3.client("s3", endpoint_url=self.endpoint_url, config=config)
        part_size = part_size_mb * 1024 * 1024
        self.transfer_config = TransferConfig(
            multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=concurrency
        )

    def _object_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _fail(self, error: Exception, key: str = "") -> NoReturn:
        what = f"{self.location}: {key}" if key else self.location
        if isinstance(error, botocore.exceptions.NoCredentialsError):
            raise StoreError(
                f"{what}: no AWS credentials found (environment, ~/.aws or an instance role; "
                "farm.toml never holds them)"
            ) from error
        if isinstance(error, botocore.exceptions.ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(f"{key} is not in the store {self.location}") from error
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or status in (409, 412):
                raise PreconditionFailed(f"{what} changed since it was read") from error
            if code == "NoSuchBucket":
                raise StoreError(f"{what}: the bucket {self.bucket} does not exist") from error
            message = error.response.get("Error", {}).get("Message", "") or str(error)
            raise StoreError(f"{what}: S3 said {code or status}: {message}") from error
        if isinstance(
            error, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectionError
        ):
            raise StoreError(
                f"{what}: cannot reach S3 ({error}); gave up after {self.max_attempts} attempts"
            ) from error
        raise StoreError(f"{what}: {error}") from error

    @contextlib.contextmanager
    def _translated(self, key: str = "") -> Iterator[None]:
        try:
            yield
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            self._fail(error, key)
        except boto3.exceptions.S3UploadFailedError as error:
            cause = error.__context__
            if isinstance(cause, botocore.exceptions.BotoCoreError | botocore.exceptions.ClientError):
                self._fail(cause, key)
            raise StoreError(f"{self.location}: {key}: upload failed: {error}") from error

    def head(self, key: str) -> ObjectInfo | None:
        try:
            with self._translated(key):
                response = self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ObjectNotFound:
            return None
        return ObjectInfo(key, response["ContentLength"], response["LastModified"], response["ETag"])

    def open_read(self, key: str, start: int = 0) -> BinaryIO:
        arguments = {"Bucket": self.bucket, "Key": self._object_key(key)}
        if start:
            info = self.head(key)
            if info is None:
                raise ObjectNotFound(f"{key} is not in the store {self.location}")
            if start >= info.size:
                return io.BytesIO()
            arguments["Range"] = f"bytes={start}-"
        with self._translated(key):
            return self.client.get_object(**arguments)["Body"]

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        # One GET: the ETag S3 returns with the body is the version of exactly those bytes.
        try:
            with self._translated(key):
                response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
                return response["Body"].read(), response["ETag"]
        except ObjectNotFound:
            return None

    def put_bytes(
        self, key: str, data: bytes, *, if_match: str | None = None, if_absent: bool = False
    ) -> None:
        arguments: dict[str, object] = {"Bucket": self.bucket, "Key": self._object_key(key), "Body": data}
        if if_match is not None:
            arguments["IfMatch"] = if_match
        if if_absent:
            arguments["IfNoneMatch"] = "*"
        with self._translated(key):
            self.client.put_object(**arguments)

    def put_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        if not path.exists():
            raise StoreError(f"cannot read {path}: no such file")
        with self._translated(key):
            self.client.upload_file(
                str(path), self.bucket, self._object_key(key), Config=self.transfer_config, Callback=progress
            )

    def put_file_new(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        # One PUT with If-None-Match: * (S3 takes up to 5 GiB in one PUT): boto3's managed upload_file
        # cannot send the condition.
        with open_upload_source(path) as source:
            size = os.fstat(source.fileno()).st_size
            if size > MAX_SINGLE_PUT:
                raise StoreError(
                    f"{self.location}: {key}: {size} bytes is more than one create-only PUT takes"
                )
            with self._translated(key):
                self.client.put_object(
                    Bucket=self.bucket, Key=self._object_key(key), Body=source, IfNoneMatch="*"
                )
        if progress:
            progress(size)

    def copy(self, source_key: str, dest_key: str) -> None:
        with self._translated(source_key):
            self.client.copy(
                {"Bucket": self.bucket, "Key": self._object_key(source_key)},
                self.bucket,
                self._object_key(dest_key),
                Config=self.transfer_config,
            )

    def delete(self, keys: list[str]) -> None:
        for first in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": self._object_key(key)} for key in keys[first : first + DELETE_BATCH]]
            with self._translated():
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if response.get("Errors"):
                failed = ", ".join(f"{e['Key']} ({e.get('Code')})" for e in response["Errors"])
                raise StoreError(f"{self.location}: could not delete {failed}")

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        with self._translated(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    yield ObjectInfo(key, item["Size"], item["LastModified"], item["ETag"])

    def upload_url(self, key: str, expires_in: int, size: int | None = None) -> str:
        # Both become signed headers: a PUT without "If-None-Match: *" (or of another length) does not
        # match the signature, and S3 refuses the conditional PUT once the object exists.
        params: dict[str, object] = {"Bucket": self.bucket, "Key": self._object_key(key), "IfNoneMatch": "*"}
        if size is not None:
            params["ContentLength"] = size
        with self._translated(key):
            return self.client.generate_presigned_url(
                "put_object",
                Params=params,
                ExpiresIn=expires_in,
                HttpMethod="PUT",
            )

    def download_url(self, key: str, expires_in: int) -> str:
        if self._public_url:
            return self.public_object_url(key)
        with self._translated(key):
            return self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._object_key(key)},
                ExpiresIn=expires_in,
            )
