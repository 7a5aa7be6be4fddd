"""Publish a farm image to Glance (one or more clouds from clouds.yaml) and rotate old farm images.

Everything here blocks (openstacksdk): the master calls it from a thread, never on the reactor.

Per target the image is created with the farm's properties, filled either by a web-download import
from the store URL (Glance fetches it itself) or by a streamed upload, waited on until ``active``, and
its ``os_hash_value`` is checked against our sha512. Only then are older farm images rotated out: the
``keep`` newest images carrying this farm's ``farm_id`` stay, the one just published always stays, and
images without our ``farm_id`` are never touched.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol, cast

import openstack.connection
from keystoneauth1 import exceptions as ks_exceptions
from openstack import exceptions as sdk_exceptions
from openstack.image.v2._proxy import Proxy as ImageService
from openstack.image.v2.image import Image

from gentoo_farm.artifacts import variant_of_kind
from gentoo_farm.catalog import ImageRecord, package_manifest_file
from gentoo_farm.checksums import file_sha512
from gentoo_farm.cloud import (
    CLOUD_ERRORS,
    CloudCallFailed,
    Trouble,
    cloud_errors,
    connect_to_cloud,
    connection_problem,
)
from gentoo_farm.store import ArtifactStore, without_signature
from gentoo_farm.store.clouds import (
    ACTIVE,
    FAILED,
    UNREACHABLE,
    CloudImage,
    now,
    record_cloud_images,
    record_rotated,
)
from gentoo_farm.store.sets import PublishedSet, digests_key
from gentoo_farm.transfer import REPORT_SECONDS, ReportingReader, TransferMeter

VISIBILITIES = ("private", "shared", "community", "public")
DISK_FORMATS = ("qcow2", "raw")

STANDARD_PROPERTIES: Mapping[str, str] = {
    "os_distro": "gentoo",
    "os_type": "linux",
    "hw_disk_bus": "virtio",
    "hw_vif_model": "virtio",
    # Our disks boot with extlinux from an MBR; Gentoo's own qcow2s are UEFI-only, ours are not.
    "hw_firmware_type": "bios",
}
# Gentoo's architecture names as Glance (and Nova's scheduler) spell them.
GLANCE_ARCHITECTURES: Mapping[str, str] = {
    "amd64": "x86_64", "x86": "i686", "arm64": "aarch64", "arm": "armv7l", "ppc64": "ppc64",
    "ppc64le": "ppc64le", "riscv": "riscv64", "s390": "s390x",
}  # fmt: skip
# What the image's boot test runs with: a flavor with less memory is not known to boot it.
MIN_RAM_MIB = 512
# Set per image from what the farm knows of it (:func:`cloud_conventions`); a target may not override them.
CONVENTION_NAMES = ("architecture", "os_admin_user", "os_version", "min_disk", "min_ram")
FARM_ID_PROPERTY = "farm_id"
"""The property that makes an image ours (rotation, and ``farm-latest`` for OpenStack workers)."""
VARIANT_PROPERTY = "farm_image_variant"
"""Which of the farm's images it is (``worker`` for the worker image); the cloud image has none. Rotation
and ``farm-latest`` / ``farm-worker-latest`` each see one variant's images."""

ACTIVE_TIMEOUT = 1800.0
POLL_INTERVAL = 2.0
FIRST_POLL_INTERVAL = 0.25
"""A small image is active within a second of its import: polls start at this and double up to the
poll interval, so it is not kept waiting a whole interval, and a large one is not polled more often."""
COPY_CHUNK = 1024 * 1024


class GlanceTargetSettings(Protocol):
    """One ``[[glance]]`` table of farm.toml (gentoo_farm.config.GlanceTarget)."""

    @property
    def cloud(self) -> str: ...

    @property
    def region(self) -> str: ...

    @property
    def visibility(self) -> str: ...

    @property
    def disk_format(self) -> str: ...

    @property
    def keep(self) -> int: ...

    @property
    def use_import(self) -> bool: ...

    @property
    def properties(self) -> dict[str, str]: ...


class GlancePublishError(Exception):
    """Publishing to one target failed; the message names the cloud and what went wrong."""


class GlanceUnavailable(GlancePublishError):
    """The cloud's Keystone or Glance could not be reached (or answered 5xx): try again later."""


@dataclass(frozen=True)
class ImageUpload:
    """What is published: a qcow2 the store holds, and what the farm knows about it."""

    name: str
    """``gentoo-YYYYMMDD[.N]-amd64``."""
    sha512: str
    """sha512 of the qcow2, as published in the store."""
    size: int
    url: str
    """Where Glance can fetch the qcow2 from (web-download import)."""
    open_data: Callable[[], BinaryIO]
    """A fresh stream of the qcow2's bytes, for a streamed upload or a raw conversion."""
    farm_id: str
    build_id: str = ""
    package_count: int | None = None
    """How many packages the image holds (its package manifest), None for older images."""
    package_manifest_url: str = ""
    """A lasting URL of the image's package manifest (empty when the store has no public URL: a
    presigned one would expire while the image lives on)."""
    digests_url: str = ""
    """A lasting URL of the image set's clear-signed DIGESTS (empty when the store has no public URL)."""
    signing_fingerprint: str = ""
    """The farm key's fingerprint, which signed the DIGESTS."""
    conventions: Mapping[str, object] = field(default_factory=dict)
    """The cloud's own image attributes the image set knows: ``architecture``, ``os_admin_user``,
    ``os_version``, ``min_disk`` (GiB), ``min_ram`` (MiB)."""
    input_keys: Mapping[str, str] = field(default_factory=dict)
    """``{"image": <input key>, "kernel": <kernel set id>, ...}``, recorded as ``farm_input_<name>``."""
    variant: str = ""
    """The image's :data:`~gentoo_farm.image_name.VARIANTS` entry, recorded as ``farm_image_variant``."""


@dataclass
class PublishResult:
    cloud: str
    """The target's :func:`target_place`."""
    image_id: str
    name: str
    method: str
    """``web-download``, ``upload`` or ``already published``."""
    rotated: dict[str, str] = field(default_factory=dict)
    """Older farm images deleted by rotation: name by image id."""
    messages: list[str] = field(default_factory=list)
    """What happened, step by step, for the build log."""
    rotation_error: str = ""
    """Why rotation failed after a good publish (the image is up; old ones may linger)."""

    def summary(self) -> str:
        text = f"{self.cloud}: {self.name} {self.method} ({self.image_id})"
        if self.rotated:
            text += f", rotated out {len(self.rotated)}"
        if self.rotation_error:
            text += f", but {self.rotation_error}"
        return text


def upload_from_record(
    store: ArtifactStore,
    record: ImageRecord,
    farm_id: str,
    url_expiry: int = 3600,
    signing_fingerprint: str = "",
) -> ImageUpload:
    """The :class:`ImageUpload` for an image set of the catalog (:mod:`gentoo_farm.catalog`)."""
    manifest = record.manifest
    metadata = dict(manifest.get("metadata") or {})
    sources = dict(manifest.get("sources") or {})
    input_keys = {"image": str(manifest.get("input_key", ""))}
    input_keys.update({str(kind): str(set_id) for kind, set_id in sources.items()})
    published = PublishedSet.from_json(manifest, record.key)
    package_manifest = package_manifest_file(published)
    lasting = store.public_base_url() is not None
    return ImageUpload(
        name=record.name,
        sha512=record.sha512,
        size=record.size,
        url=store.download_url(record.key, url_expiry),
        open_data=lambda: store.open_read(record.key),
        farm_id=farm_id,
        build_id=str(metadata.get("build_id", "")),
        input_keys=input_keys,
        package_count=record.package_count,
        package_manifest_url=store.public_object_url(package_manifest.key)
        if package_manifest and lasting
        else "",
        digests_url=store.public_object_url(digests_key(published.kind, record.set_id))
        if lasting and published.signed
        else "",
        signing_fingerprint=signing_fingerprint,
        conventions=cloud_conventions(metadata),
        variant=variant_of_kind(published.kind).name_variant,
    )


def cloud_conventions(metadata: Mapping[str, object]) -> dict[str, object]:
    """Glance's standard image attributes from an image set's metadata (what older sets lack is left out)."""
    conventions: dict[str, object] = {"min_ram": MIN_RAM_MIB}
    if arch := str(metadata.get("arch") or ""):
        conventions["architecture"] = GLANCE_ARCHITECTURES.get(arch, arch)
    if user := str(metadata.get("user") or ""):
        conventions["os_admin_user"] = user
    # default/linux/amd64/23.0[/systemd]: the profile's version is what a Gentoo release is.
    if version := re.search(r"/(\d+(?:\.\d+)*)(?:/|$)", str(metadata.get("profile") or "")):
        conventions["os_version"] = version[1]
    disk_bytes = metadata.get("disk_bytes")
    if isinstance(disk_bytes, int) and disk_bytes > 0:
        conventions["min_disk"] = -(-disk_bytes // 2**30)
    return conventions


def target_place(target: GlanceTargetSettings) -> str:
    """How logs and results name a target: its cloud, with the region when farm.toml sets one (two targets
    may share a cloud and differ in region)."""
    return f"{target.cloud}/{target.region}" if target.region else target.cloud


def check_target(target: GlanceTargetSettings) -> None:
    """Refuse a target setting Glance would refuse later, naming the key."""
    where = f"[[glance]] cloud = {target.cloud!r}"
    if target.visibility not in VISIBILITIES:
        raise GlancePublishError(f"{where}: visibility must be one of {', '.join(VISIBILITIES)}")
    if target.disk_format not in DISK_FORMATS:
        raise GlancePublishError(f"{where}: disk_format must be one of {', '.join(DISK_FORMATS)}")
    if target.keep < 1:
        raise GlancePublishError(f"{where}: keep must be at least 1 (the newest image is never deleted)")
    clashes = sorted(
        key
        for key in target.properties
        if key.startswith("farm_") or key in STANDARD_PROPERTIES or key in CONVENTION_NAMES
    )
    if clashes:
        raise GlancePublishError(f"{where}: properties may not override {', '.join(clashes)}")


@contextlib.contextmanager
def _api_errors(cloud: str, doing: str) -> Iterator[None]:
    """The cloud layer's failures as Glance publishing errors: a transient one (the cloud unreachable,
    5xx, rate limits, quota) is :class:`GlanceUnavailable`, the others fail the publish."""
    try:
        with cloud_errors(cloud, doing):
            yield
    except CloudCallFailed as failure:
        kind = GlanceUnavailable if failure.trouble is Trouble.TRANSIENT else GlancePublishError
        raise kind(str(failure)) from failure.__cause__


def publish_image(
    upload: ImageUpload,
    target: GlanceTargetSettings,
    *,
    active_timeout: float = ACTIVE_TIMEOUT,
    poll_interval: float = POLL_INTERVAL,
    progress: Callable[[str], None] = lambda message: None,
    progress_interval: float = REPORT_SECONDS,
) -> PublishResult:
    """Publish ``upload`` to ``target`` and rotate older farm images there.

    Each message of the result is also handed to ``progress`` as it happens, with a line on how far
    an upload is every ``progress_interval`` seconds (publishing a large image can take half an hour).
    Raises :class:`GlanceUnavailable` when the cloud cannot be reached, :class:`GlancePublishError`
    for anything else (import failed, checksum mismatch, timeout, bad settings). A failed attempt
    deletes the half-made image it created.
    """
    check_target(target)
    cloud = target.cloud
    with _api_errors(cloud, "connecting"):
        conn = connect_to_cloud(cloud, target.region)
    with contextlib.closing(conn):
        with _api_errors(cloud, "connecting"):
            conn.authorize()
            check_reachable(conn, cloud)
        publisher = _TargetPublisher(
            conn, upload, target, active_timeout, poll_interval, progress, progress_interval
        )
        with _api_errors(cloud, f"publishing {upload.name}"):
            result = publisher.publish()
        # The image is up: a rotation that fails is worth a warning, not a failed publish.
        try:
            with _api_errors(cloud, "rotating old farm images"):
                result.rotated = rotate_images(
                    conn, upload.farm_id, target.keep, keep_id=result.image_id, variant=upload.variant
                )
        except GlancePublishError as error:
            result.rotation_error = str(error)
            publisher.say(result.rotation_error)
        for image_id, name in result.rotated.items():
            publisher.say(f"rotated out {name} ({image_id})")
        return result


@dataclass(frozen=True)
class TargetOutcome:
    """What one target did with an image: the store's record of it, and the publish's result if it worked."""

    place: str
    """The target's :func:`target_place`."""
    record: CloudImage
    result: PublishResult | None = None


def publish_to_target(
    upload: ImageUpload,
    target: GlanceTargetSettings,
    *,
    progress: Callable[[str], None] = lambda message: None,
    progress_interval: float = REPORT_SECONDS,
) -> TargetOutcome:
    """:func:`publish_image`, with its failure as the outcome (``unreachable`` or ``failed``) instead of
    an exception: one target's trouble never stops the next target's publish."""
    place = target_place(target)
    try:
        result = publish_image(upload, target, progress=progress, progress_interval=progress_interval)
    except GlanceUnavailable as error:
        return TargetOutcome(place, CloudImage("", UNREACHABLE, now(), str(error)))
    except GlancePublishError as error:
        return TargetOutcome(place, CloudImage("", FAILED, now(), str(error)))
    return TargetOutcome(place, CloudImage(result.image_id, ACTIVE, now(), result.method), result)


def record_outcomes(store: ArtifactStore, set_id: str, kind: str, outcomes: Sequence[TargetOutcome]) -> None:
    """Write where the set's image went (``glance.json``, read by ``farm images`` and the Images page) and
    mark the images rotation deleted. Raises :class:`~gentoo_farm.store.StoreError`."""
    record_cloud_images(store, set_id, {outcome.place: outcome.record for outcome in outcomes}, kind)
    for outcome in outcomes:
        if outcome.result is not None:
            record_rotated(store, outcome.place, outcome.result.rotated, kind)


def check_reachable(conn: openstack.connection.Connection, cloud: str) -> None:
    """Knock on the catalog's image endpoint, so that a Glance that is down is called that.

    Without this the SDK's version discovery swallows the connection error and reports that the
    image service "does not have any supported versions". The endpoint is the one the SDK will use: the
    connection's region and the interface clouds.yaml sets for images (``interface``, ``image_interface``).
    """
    region = conn.config.get_region_name("image")
    interface = conn.config.get_interface("image") or "public"
    try:
        endpoint = conn.session.get_endpoint(service_type="image", interface=interface, region_name=region)
    except ks_exceptions.EndpointNotFound:
        endpoint = None
    if not endpoint:
        raise GlancePublishError(
            f"cloud {cloud!r}: the service catalog has no {interface} image (Glance) endpoint"
            + (f" in region {region!r}" if region else "")
        )
    try:
        response = conn.session.get(endpoint, authenticated=False, raise_exc=False, timeout=30)
    except ks_exceptions.ConnectionError as error:
        raise GlanceUnavailable(
            f"cloud {cloud!r}: Glance at {endpoint} is unreachable: {connection_problem(error)}"
        ) from error
    if response.status_code >= 500:
        raise GlanceUnavailable(f"cloud {cloud!r}: Glance at {endpoint} answered HTTP {response.status_code}")


def image_service(conn: openstack.connection.Connection) -> ImageService:
    """The connection's Glance service: v2, the API the farm speaks (the SDK's type says v1 or v2)."""
    return cast(ImageService, conn.image)


def farm_images(
    conn: openstack.connection.Connection, farm_id: str, variant: str | None = None
) -> list[Image]:
    """This farm's images in the connection's project, newest first; of one ``variant`` ("" for the cloud
    image, ``worker`` ...) unless None."""
    project_id = conn.current_project_id
    ours = [
        image
        for image in image_service(conn).images(owner=project_id, visibility="all")
        if (image.properties or {}).get(FARM_ID_PROPERTY) == farm_id
        and (variant is None or (image.properties or {}).get(VARIANT_PROPERTY, "") == variant)
    ]
    return sorted(ours, key=lambda image: (image.created_at or "", image.name or ""), reverse=True)


def newest_farm_image(conn: openstack.connection.Connection, farm_id: str, variant: str) -> Image | None:
    """The newest active image of this farm's ``variant`` ("" for the cloud image, ``worker``...), or None."""
    return next((image for image in farm_images(conn, farm_id, variant) if image.status == "active"), None)


def rotate_images(
    conn: openstack.connection.Connection,
    farm_id: str,
    keep: int,
    keep_id: str | None = None,
    variant: str = "",
) -> dict[str, str]:
    """Delete this farm's active images beyond the ``keep`` newest, and its dead ones (killed, or an
    import that failed and left the image queued: e.g. the master died mid-publish); returns what went,
    name by id. Only images of ``variant`` count and go: a worker image never rotates out a cloud image.

    ``keep_id`` (the image just published) is never deleted, whatever its age, nor is an image
    someone marked protected.
    """
    if keep < 1:
        raise GlancePublishError(f"keep must be at least 1, got {keep}")
    ours = farm_images(conn, farm_id, variant)
    active = [image for image in ours if image.status == "active"]
    dead = [image for image in ours if _is_dead(image)]
    doomed = [image for image in [*active[keep:], *dead] if image.id != keep_id and not image.is_protected]
    for image in doomed:
        image_service(conn).delete_image(image, ignore_missing=True)
    return {image.id: image.name for image in doomed}


def _is_dead(image: Image) -> bool:
    return image.status == "killed" or bool((image.properties or {}).get("os_glance_failed_import"))


class _TargetPublisher:
    def __init__(
        self,
        conn: openstack.connection.Connection,
        upload: ImageUpload,
        target: GlanceTargetSettings,
        active_timeout: float,
        poll_interval: float,
        progress: Callable[[str], None],
        progress_interval: float,
    ) -> None:
        self.conn = conn
        self.upload = upload
        self.target = target
        self.cloud = target.cloud
        self.place = target_place(target)
        self.active_timeout = active_timeout
        self.poll_interval = poll_interval
        self.progress = progress
        self.progress_interval = progress_interval
        self.messages: list[str] = []

    def say(self, message: str) -> None:
        self.messages.append(message)
        self.progress(message)

    def publish(self) -> PublishResult:
        existing = self._existing_copy()
        if existing is not None:
            self.say(f"{existing.name} ({existing.id}) is already active with the same sha512")
            return PublishResult(
                self.place, existing.id, existing.name, "already published", messages=self.messages
            )
        if self.target.disk_format == "raw":
            with tempfile.TemporaryDirectory(prefix="farm-glance-") as scratch:
                raw, raw_sha512 = self._convert_to_raw(Path(scratch))
                image = self._create({"farm_raw_sha512": raw_sha512})
                self._finish(image, "upload", raw_sha512, lambda: self._put(image, raw.open("rb"), raw))
                return PublishResult(self.place, image.id, image.name, "upload", messages=self.messages)
        method = "web-download" if self._import_allowed() else "upload"
        image = self._create({})
        if method == "web-download":
            self._finish(image, method, self.upload.sha512, lambda: self._import(image))
        else:
            self._finish(image, method, self.upload.sha512, lambda: self._stream(image))
        return PublishResult(self.place, image.id, image.name, method, messages=self.messages)

    def _existing_copy(self) -> Image | None:
        """A previous run's complete copy of this very image (a re-run of the step is then a no-op)."""
        for image in farm_images(self.conn, self.upload.farm_id):
            properties = image.properties or {}
            if (
                image.name == self.upload.name
                and image.status == "active"
                and properties.get("farm_sha512") == self.upload.sha512
                and image.disk_format == self.target.disk_format
            ):
                return image
        return None

    def _import_allowed(self) -> bool:
        if not self.target.use_import:
            return False
        try:
            methods = image_service(self.conn).get_import_info().import_methods or {}
        except sdk_exceptions.NotFoundException:
            methods = {}  # a Glance from before the import API
        if "web-download" in (methods.get("value") or []):
            return True
        self.say("this Glance does not offer web-download imports: streaming the image instead")
        return False

    def _properties(self, extra: Mapping[str, str]) -> dict[str, object]:
        upload = self.upload
        farm: dict[str, object] = {
            FARM_ID_PROPERTY: upload.farm_id,
            "farm_build_id": upload.build_id,
            "farm_sha512": upload.sha512,
            **{f"farm_input_{name}": value for name, value in upload.input_keys.items()},
            **extra,
        }
        if upload.package_count is not None:
            farm["farm_package_count"] = str(upload.package_count)
        if upload.package_manifest_url:
            farm["farm_manifest_url"] = upload.package_manifest_url
        if upload.digests_url:
            farm["farm_digests_url"] = upload.digests_url
        if upload.signing_fingerprint:
            farm["farm_signing_key"] = upload.signing_fingerprint
        if upload.variant:
            farm[VARIANT_PROPERTY] = upload.variant
        return {**STANDARD_PROPERTIES, **self.target.properties, **self.upload.conventions, **farm}

    def _create(self, extra: Mapping[str, str]) -> Image:
        image = Image.new(
            name=self.upload.name,
            disk_format=self.target.disk_format,
            container_format="bare",
            visibility=self.target.visibility,
            **self._properties(extra),
        ).create(self.conn.image)
        self.say(f"created {image.name} ({image.id}), {self.target.disk_format}, {self.target.visibility}")
        return image

    def _finish(self, image: Image, method: str, expected_sha512: str, transfer: Callable[[], None]) -> None:
        """Transfer the data, wait for ``active``, verify; on any failure delete the half-made image."""
        try:
            transfer()
            active = self._wait_active(image)
            self._verify(active, expected_sha512)
        except BaseException:
            with contextlib.suppress(Exception):
                image_service(self.conn).delete_image(image, ignore_missing=True)
                self.say(f"deleted the failed image {image.id}")
            raise
        self.say(f"{image.name} is active ({method}), sha512 verified")

    def _import(self, image: Image) -> None:
        response = image_service(self.conn).import_image(image, method="web-download", uri=self.upload.url)
        # openstacksdk hands back failed import requests without raising.
        if response.status_code >= 400:
            error = GlanceUnavailable if response.status_code >= 500 else GlancePublishError
            raise error(
                f"cloud {self.cloud!r}: Glance refused the web-download import of {self.upload.name}: "
                f"HTTP {response.status_code} {_response_text(response.text)}"
            )
        self.say(f"web-download import requested from {without_signature(self.upload.url)}")

    def _stream(self, image: Image) -> None:
        with self.upload.open_data() as data:
            self._send(image, data, self.upload.size)

    def _put(self, image: Image, data: BinaryIO, path: Path) -> None:
        with data:
            self._send(image, data, path.stat().st_size)

    def _send(self, image: Image, data: BinaryIO, size: int) -> None:
        reader = ReportingReader(
            data, TransferMeter("uploading", size), self.progress, self.progress_interval
        )
        response = image.upload(self.conn.image, data=reader, size=size)
        sdk_exceptions.raise_from_response(response)
        self.say(f"uploaded {size} bytes")

    def _convert_to_raw(self, scratch: Path) -> tuple[Path, str]:
        qcow2 = scratch / "image.qcow2"
        raw = scratch / "image.raw"
        with self.upload.open_data() as source, qcow2.open("wb") as copy:
            shutil.copyfileobj(source, copy, COPY_CHUNK)
        converted = subprocess.run(
            ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(raw)],
            capture_output=True,
            text=True,
            check=False,
        )
        if converted.returncode != 0:
            raise GlancePublishError(
                f"cloud {self.cloud!r} wants raw images: qemu-img convert of {self.upload.name} failed: "
                f"{converted.stderr.strip()}"
            )
        qcow2.unlink()
        self.say(f"converted to raw ({raw.stat().st_size} bytes) for this cloud")
        return raw, file_sha512(raw)

    def _wait_active(self, image: Image) -> Image:
        started = last_report = time.monotonic()
        deadline = started + self.active_timeout
        interval = min(FIRST_POLL_INTERVAL, self.poll_interval)
        while True:
            current = image_service(self.conn).get_image(image.id)
            properties = current.properties or {}
            if current.status == "active":
                return current
            if time.monotonic() - last_report >= self.progress_interval:
                last_report = time.monotonic()
                self.progress(
                    f"waiting for {current.name}: {current.status} after {last_report - started:.0f} s"
                )
            if current.status in ("killed", "deleted", "pending_delete", "deactivated"):
                raise GlancePublishError(
                    f"cloud {self.cloud!r}: image {current.name} ({current.id}) went {current.status}"
                    f"{self._task_reason(current)}"
                )
            # A failed import sends the image back to "queued" and names the store it failed for.
            if properties.get("os_glance_failed_import"):
                raise GlancePublishError(
                    f"cloud {self.cloud!r}: the import of {current.name} ({current.id}) failed in store "
                    f"{properties['os_glance_failed_import']}{self._task_reason(current)}"
                )
            if time.monotonic() >= deadline:
                raise GlancePublishError(
                    f"cloud {self.cloud!r}: image {current.name} ({current.id}) still {current.status} after "
                    f"{self.active_timeout:.0f} s"
                )
            time.sleep(interval)
            interval = min(interval * 2, self.poll_interval)

    def _task_reason(self, image: Image) -> str:
        """Glance's own words about the failed import task, when it says any."""
        with contextlib.suppress(*CLOUD_ERRORS):
            messages = [
                task.message for task in image_service(self.conn).image_tasks(image.id) if task.message
            ]
            if messages:
                return f": {_response_text(messages[-1])}"
        return ""

    def _verify(self, image: Image, expected_sha512: str) -> None:
        if image.hash_algo != "sha512":
            raise GlancePublishError(
                f"cloud {self.cloud!r}: Glance hashed {image.name} with {image.hash_algo!r}, not sha512: "
                "cannot verify the upload"
            )
        if image.hash_value != expected_sha512:
            raise GlancePublishError(
                f"cloud {self.cloud!r}: {image.name} ({image.id}) arrived corrupted: Glance's sha512 "
                f"{(image.hash_value or '')[:16]}... != ours {expected_sha512[:16]}..."
            )


def _response_text(text: str) -> str:
    """The gist of an HTML or JSON error page, on one line, without URL signatures Glance may echo."""
    plain = re.sub(r"<[^>]+>", " ", text)
    plain = re.sub(r"(https?://[^\s?\"']+)\?[^\s\"']*", r"\1?...", plain)
    return " ".join(plain.split())[:300]
