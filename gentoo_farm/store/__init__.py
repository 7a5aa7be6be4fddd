"""The artifact store: local directory or S3, one key layout (docs/store.md), opened by :func:`open_store`."""

from __future__ import annotations

from gentoo_farm.store.base import (
    ArtifactStore,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    StoreError,
    StoreSettings,
    without_signature,
)


def _unknown_type(settings: StoreSettings) -> StoreError:
    return StoreError(f"[store] type: expected 'local' or 's3', got {settings.type!r}")


def public_base_url(settings: StoreSettings) -> str | None:
    """The URL prefix the store is readable at without signing, from the settings alone: no backend is
    opened (for S3 that would build a boto3 client).

    A local store is read from its ``public_url``, else from the master's store server at ``listen``; an
    S3 store from its ``public_url``, and without one it has none (a private bucket: presigned downloads).
    """
    if settings.type == "local":
        return (settings.public_url or f"http://{getattr(settings, 'listen', '127.0.0.1:8011')}").rstrip("/")
    if settings.type == "s3":
        return settings.public_url.rstrip("/") or None
    raise _unknown_type(settings)


def workers_base_url(settings: StoreSettings) -> str:
    """:func:`public_base_url`, which workers cannot do without: their Portage reads the binhost and the
    distfile mirror there, unsigned."""
    url = public_base_url(settings)
    if not url:
        raise StoreError(
            "store.public_url: an S3 store needs a public (or proxied) URL: workers read the binhost and "
            "distfile mirror from it"
        )
    return url


def open_store(settings: StoreSettings) -> ArtifactStore:
    """The store ``[store]`` in farm.toml describes."""
    if settings.type == "local":
        from gentoo_farm.store.local import LocalStore

        return LocalStore(settings.path, public_base_url(settings) or "")
    if settings.type == "s3":
        from gentoo_farm.store.s3 import S3Store

        return S3Store(
            settings.bucket,
            prefix=settings.prefix,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            public_url=public_base_url(settings) or "",
            part_size_mb=settings.part_size_mb,
            concurrency=settings.concurrency,
            checksums=settings.checksums,
        )
    raise _unknown_type(settings)


__all__ = [
    "ArtifactStore",
    "ObjectInfo",
    "ObjectNotFound",
    "PreconditionFailed",
    "StoreError",
    "StoreSettings",
    "open_store",
    "public_base_url",
    "without_signature",
    "workers_base_url",
]
