"""The artifact store: local directory or S3, one key layout (DESIGN.md), opened with :func:`open_store`."""

from __future__ import annotations

from gentoo_farm.store.base import (
    KINDS,
    ArtifactStore,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    StoreError,
    StoreSettings,
    without_signature,
)


def local_public_url(settings: StoreSettings) -> str:
    """Where the master's store server is reached when ``public_url`` is not set."""
    return settings.public_url or f"http://{getattr(settings, 'listen', '127.0.0.1:8011')}"


def open_store(settings: StoreSettings) -> ArtifactStore:
    """The store ``[store]`` in farm.toml describes."""
    if settings.type == "local":
        from gentoo_farm.store.local import LocalStore

        return LocalStore(settings.path, local_public_url(settings))
    if settings.type == "s3":
        from gentoo_farm.store.s3 import S3Store

        return S3Store(
            settings.bucket,
            prefix=settings.prefix,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            public_url=settings.public_url,
            part_size_mb=settings.part_size_mb,
            concurrency=settings.concurrency,
        )
    raise StoreError(f"[store] type: expected 'local' or 's3', got {settings.type!r}")


__all__ = [
    "KINDS",
    "ArtifactStore",
    "ObjectInfo",
    "ObjectNotFound",
    "PreconditionFailed",
    "StoreError",
    "StoreSettings",
    "local_public_url",
    "open_store",
    "without_signature",
]
