"""The Glance publisher against a real Glance + Keystone on 127.0.0.1 (password auth via clouds.yaml)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import openstack
import openstack.connection
import pytest
import yaml
from openstack.image.v2.image import Image

from gentoo_farm.catalog import find_image, image_by_set_id
from gentoo_farm.config import GlanceTarget
from gentoo_farm.glance import (
    GlancePublishError,
    GlanceUnavailable,
    ImageUpload,
    farm_images,
    newest_farm_image,
    publish_image,
    rotate_images,
    upload_from_record,
)
from gentoo_farm.image_name import WORKER_VARIANT, ImageName
from gentoo_farm.steps.glance import PublishToGlance
from gentoo_farm.store.clouds import ACTIVE, DELETED, UNREACHABLE, read_cloud_images
from gentoo_farm.store.local import LocalStore
from gentoo_farm.store.sets import next_image_name
from gentoo_farm.units import human_size
from tests.farmtest import farm_command
from tests.services.glance import Glance, glance  # noqa: F401
from tests.services.keystone import Keystone, keystone  # noqa: F401
from tests.services.store import LocalStoreSettings, publish_files

# isort: split
# Importing buildbot.test turns every warning into an error: the farm's modules must be imported first.
from buildbot.process.results import FAILURE, SUCCESS, WARNINGS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import TestBuildStepMixin
from twisted.trial import unittest

CLOUD = "farm-test"


@pytest.fixture(scope="module")
def clouds_yaml(keystone: Keystone, glance: Glance, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    path = tmp_path_factory.mktemp("openstack") / "clouds.yaml"
    return keystone.write_clouds_yaml(path, cloud=CLOUD, username="demo")


@pytest.fixture(autouse=True)
def use_clouds_yaml(clouds_yaml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds_yaml))


@pytest.fixture(scope="module")
def store(glance: Glance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStore]:  # noqa: F811
    """A local artifact store, served over HTTP on the one port Glance may web-download from."""
    root = tmp_path_factory.mktemp("store")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", glance.download_port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LocalStore(root, f"http://127.0.0.1:{glance.download_port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def farm_id() -> str:
    """Each test is its own farm: rotation in one test never sees another test's images."""
    return f"farm-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def conn() -> openstack.connection.Connection:
    return openstack.connect(cloud=CLOUD)


def target(**changes: object) -> GlanceTarget:
    return replace(GlanceTarget(cloud=CLOUD, keep=2), **changes)


FINGERPRINT = "0123456789ABCDEF0123456789ABCDEF01234567"
PACKAGES = [{"cpv": "sys-apps/baselayout-2.15", "origin": "stage3"}, {"cpv": "net-misc/dhcpcd-10.0.6"}]


def make_qcow2(directory: Path, seed: str) -> Path:
    """A small real qcow2 whose content (and so sha512) differs per seed: Glance checks formats."""
    raw = directory / f"{seed}.raw"
    raw.write_bytes(hashlib.sha512(seed.encode()).digest() * 8192)
    qcow2 = directory / f"{seed}.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    return qcow2


def publish_to_store(
    store: LocalStore, tmp_path: Path, farm_id: str, image: ImageName, signed: bool = False
) -> ImageUpload:
    name = str(image)
    kind = "worker-images" if image.variant else "images"
    qcow2 = make_qcow2(tmp_path, f"{farm_id}-{name}")
    packages = tmp_path / f"{name}.manifest.json"
    packages.write_text(json.dumps({"packages": PACKAGES}))
    input_key = hashlib.sha256(f"{farm_id}{name}".encode()).hexdigest()
    published = publish_files(
        store,
        kind,
        input_key,
        {f"{name}.qcow2": qcow2, packages.name: packages},
        metadata={
            "name": name,
            "build_id": "image/42",
            "kernel": "6.12.1",
            "package_count": len(PACKAGES),
            "arch": "amd64",
            "profile": "default/linux/amd64/23.0/systemd",
            "user": "ec2-user",
            "disk_bytes": 3 * 2**30 // 2,
        },
        sources={"kernel": "20261125T000000Z-abc"},
        # Only that there is a signature matters here (tests/test_signed_releases.py checks real ones).
        sign=(lambda text: f"SIGNED\n{text}") if signed else None,
    )
    record = image_by_set_id(store, published.set_id, kind=kind)
    assert record is not None
    return upload_from_record(store, record, farm_id, signing_fingerprint=FINGERPRINT if signed else "")


def wait_until(condition: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def glance_sha512(conn: openstack.connection.Connection, image_id: str) -> str:
    digest = hashlib.sha512()
    for chunk in conn.image.download_image(image_id, stream=True).iter_content(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


def names(conn: openstack.connection.Connection) -> set[str]:
    return {image.name for image in conn.image.images(visibility="all")}


def test_web_download_import_with_properties(store, tmp_path, farm_id, conn):
    upload = publish_to_store(store, tmp_path, farm_id, ImageName(date(2026, 11, 25), "amd64"), signed=True)

    result = publish_image(upload, target(visibility="community", properties={"hw_rng_model": "virtio"}))

    assert result.method == "web-download"
    image = conn.image.get_image(result.image_id)
    assert (image.name, image.status, image.disk_format, image.container_format, image.visibility) == (
        "gentoo-20261125-amd64",
        "active",
        "qcow2",
        "bare",
        "community",
    )
    assert (image.hash_algo, image.hash_value) == ("sha512", upload.sha512)
    assert glance_sha512(conn, image.id) == upload.sha512
    assert (image.os_distro, image.os_type, image.hw_disk_bus, image.hw_vif_model, image.hw_rng_model) == (
        "gentoo",
        "linux",
        "virtio",
        "virtio",
        "virtio",
    )
    # The cloud's own conventions, from what the image set knows.
    assert (image.architecture, image.os_admin_user, image.os_version) == ("x86_64", "ec2-user", "23.0")
    assert (image.min_disk, image.min_ram) == (2, 512)
    properties = image.properties
    assert properties["hw_firmware_type"] == "bios"
    assert properties["farm_id"] == farm_id
    assert properties["farm_build_id"] == "image/42"
    assert properties["farm_sha512"] == upload.sha512
    assert properties["farm_input_image"] == upload.input_keys["image"]
    assert properties["farm_input_kernel"] == "20261125T000000Z-abc"
    # What the image holds, for people and tools looking at the cloud: a lasting URL, never a signed one.
    assert properties["farm_package_count"] == "2"
    manifest_url = properties["farm_manifest_url"]
    assert manifest_url.startswith(store.public_base_url()) and "?" not in manifest_url
    with urllib.request.urlopen(manifest_url, timeout=30) as response:
        assert json.load(response)["packages"] == PACKAGES
    # Who made it, and the signed DIGESTS anyone can check it with.
    assert properties["farm_signing_key"] == FINGERPRINT
    with urllib.request.urlopen(properties["farm_digests_url"], timeout=30) as response:
        assert f"{upload.sha512}  gentoo-20261125-amd64.qcow2" in response.read().decode()

    again = publish_image(upload, target())
    assert (again.method, again.image_id) == ("already published", result.image_id)


def test_second_image_of_a_day_is_dot_one_in_the_store_and_in_glance(store, tmp_path, farm_id, conn):
    day = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
    farm_id = f"{farm_id}-names"
    first = publish_to_store(store, tmp_path, farm_id, next_image_name(store, "amd64", day))
    second = publish_to_store(store, tmp_path, farm_id, next_image_name(store, "amd64", day))

    in_glance = [conn.image.get_image(publish_image(upload, target()).image_id) for upload in (first, second)]

    assert [image.name for image in in_glance] == ["gentoo-20261207-amd64", "gentoo-20261207.1-amd64"]
    assert [image.hash_value for image in in_glance] == [first.sha512, second.sha512]
    assert str(next_image_name(store, "amd64", day)) == "gentoo-20261207.2-amd64"


def test_streamed_upload_when_import_is_off(store, tmp_path, farm_id, conn):
    upload = publish_to_store(store, tmp_path, farm_id, ImageName(date(2026, 11, 26), "amd64"))

    result = publish_image(upload, target(use_import=False))

    assert result.method == "upload"
    image = conn.image.get_image(result.image_id)
    assert (image.status, image.visibility, image.hash_value) == ("active", "private", upload.sha512)
    assert glance_sha512(conn, image.id) == upload.sha512


def test_raw_target_gets_a_converted_image(store, tmp_path, farm_id, conn):
    upload = publish_to_store(store, tmp_path, farm_id, ImageName(date(2026, 11, 27), "amd64"))
    raw = tmp_path / "expected.raw"
    qcow2 = tmp_path / "source.qcow2"
    qcow2.write_bytes(store.get_bytes(upload_key(store, upload)))
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(raw)], check=True)
    raw_sha512 = hashlib.sha512(raw.read_bytes()).hexdigest()

    result = publish_image(upload, target(disk_format="raw"))

    image = conn.image.get_image(result.image_id)
    assert (image.status, image.disk_format, image.hash_value) == ("active", "raw", raw_sha512)
    assert image.properties["farm_sha512"] == upload.sha512
    assert image.properties["farm_raw_sha512"] == raw_sha512


def upload_key(store: LocalStore, upload: ImageUpload) -> str:
    return upload.url.removeprefix(f"{store._public_url}/")


def test_checksum_mismatch_fails_and_leaves_no_image(store, tmp_path, farm_id, conn):
    upload = publish_to_store(store, tmp_path, farm_id, ImageName(date(2026, 11, 28), "amd64"))
    lying = replace(upload, sha512="0" * 128)

    with pytest.raises(GlancePublishError, match="arrived corrupted: Glance's sha512") as failure:
        publish_image(lying, target(use_import=False))

    assert CLOUD in str(failure.value)
    assert not farm_images(conn, farm_id)


def test_failed_import_is_noticed(store, tmp_path, farm_id, conn):
    upload = publish_to_store(store, tmp_path, farm_id, ImageName(date(2026, 11, 29), "amd64"))
    missing = replace(upload, url=upload.url + ".gone")

    with pytest.raises(GlancePublishError, match=r"the import of gentoo-20261129-amd64 \(.*\) failed"):
        publish_image(missing, target(), poll_interval=0.2, active_timeout=60)

    assert not farm_images(conn, farm_id)


def test_refused_import_is_noticed(store, tmp_path, farm_id, conn):
    upload = publish_to_store(store, tmp_path, farm_id, ImageName(date(2026, 11, 30), "amd64"))
    # Glance only fetches from the host/port its import filter allows.
    elsewhere = replace(upload, url="http://127.0.0.1:1/image.qcow2?X-Amz-Signature=secret")

    with pytest.raises(GlancePublishError, match=r"refused the web-download import .* HTTP 4") as refused:
        publish_image(elsewhere, target())

    # Glance echoes the URL it refused; a presigned URL's signature must not reach the build's status.
    assert "secret" not in str(refused.value)

    assert not farm_images(conn, farm_id)


def test_rotation_keeps_newest_and_spares_foreign_images(store, tmp_path, farm_id, conn):
    foreign = conn.image.create_image(
        name="gentoo-20200101-amd64",
        filename=str(make_qcow2(tmp_path, f"{farm_id}-foreign")),
        disk_format="qcow2",
        container_format="bare",
        wait=True,
    )
    dead = Image.new(
        name="gentoo-20261130-amd64", disk_format="qcow2", container_format="bare", farm_id=farm_id
    ).create(conn.image)
    conn.image.import_image(dead, method="web-download", uri=f"{store.public_base_url()}/images/gone.qcow2")
    wait_until(lambda: conn.image.get_image(dead.id).properties.get("os_glance_failed_import"))
    other_farm = publish_image(
        publish_to_store(store, tmp_path, f"{farm_id}-other", ImageName(date(2020, 1, 2), "amd64")), target()
    )
    names_of_the_day = [ImageName(date(2026, 12, 1), "amd64", serial) for serial in range(4)]
    published = [
        publish_image(publish_to_store(store, tmp_path, farm_id, name), target()) for name in names_of_the_day
    ]

    # Each publish rotated to keep=2: only the two newest of ours remain.
    assert [image.id for image in farm_images(conn, farm_id)] == [
        published[3].image_id,
        published[2].image_id,
    ]
    assert published[0].rotated == {dead.id: "gentoo-20261130-amd64"}
    assert published[2].rotated == {published[0].image_id: "gentoo-20261201-amd64"}
    assert conn.image.get_image(foreign.id).status == "active"
    assert conn.image.get_image(other_farm.image_id).status == "active"

    # The image named as just published survives even when it is not among the newest.
    rotate_images(conn, farm_id, keep=1, keep_id=published[2].image_id)
    assert {image.id for image in farm_images(conn, farm_id)} == {
        published[3].image_id,
        published[2].image_id,
    }


def test_each_variant_rotates_and_is_found_apart(store, tmp_path, farm_id, conn):
    day = date(2026, 12, 3)
    plain = [
        publish_image(
            publish_to_store(store, tmp_path, farm_id, ImageName(day, "amd64", serial)), target(keep=1)
        )
        for serial in range(2)
    ]
    worker = [
        publish_image(
            publish_to_store(store, tmp_path, farm_id, ImageName(day, "amd64", serial, WORKER_VARIANT)),
            target(keep=1),
        )
        for serial in range(2)
    ]

    # keep = 1 per variant: the newer worker image rotated out the older worker image, not a cloud image.
    assert worker[1].rotated == {worker[0].image_id: "gentoo-farm-worker-20261203-amd64"}
    assert [image.id for image in farm_images(conn, farm_id)] == [worker[1].image_id, plain[1].image_id]
    marked = conn.image.get_image(worker[1].image_id).properties
    assert marked["farm_image_variant"] == WORKER_VARIANT
    assert "farm_image_variant" not in conn.image.get_image(plain[1].image_id).properties
    # farm-worker-latest and farm-latest: the newest of each variant, never the other's.
    assert newest_farm_image(conn, farm_id, WORKER_VARIANT).id == worker[1].image_id
    assert newest_farm_image(conn, farm_id, "").id == plain[1].image_id
    assert newest_farm_image(conn, f"{farm_id}-none", WORKER_VARIANT) is None


def test_a_target_may_not_override_what_the_farm_sets(store, tmp_path, farm_id):
    upload = publish_to_store(store, tmp_path, farm_id, ImageName(date(2026, 12, 4), "amd64"))
    with pytest.raises(GlancePublishError, match=r"properties may not override architecture, os_distro$"):
        publish_image(upload, target(properties={"os_distro": "debian", "architecture": "ppc"}))


def test_keep_zero_is_refused(store, tmp_path, farm_id):
    upload = publish_to_store(store, tmp_path, farm_id, ImageName(date(2026, 12, 2), "amd64"))
    with pytest.raises(GlancePublishError, match=r"cloud = 'farm-test'.*keep must be at least 1"):
        publish_image(upload, target(keep=0))


def test_unknown_cloud_is_named(store, tmp_path, farm_id):
    upload = publish_to_store(store, tmp_path, farm_id, ImageName(date(2026, 12, 3), "amd64"))
    with pytest.raises(
        GlancePublishError, match=r"cloud 'nowhere': connecting: not usable from clouds\.yaml"
    ) as failure:
        publish_image(upload, target(cloud="nowhere"))
    # a cloud clouds.yaml does not know fails the publish: waiting would not make it appear
    assert type(failure.value) is GlancePublishError


def test_glance_down_is_a_clear_error(glance, store, tmp_path, farm_id, conn):  # noqa: F811
    upload = publish_to_store(store, tmp_path, farm_id, ImageName(date(2026, 12, 4), "amd64"))

    with (
        glance.down(),
        pytest.raises(GlanceUnavailable, match=f"cloud 'farm-test': Glance at {glance.url}.* is unreachable"),
    ):
        publish_image(upload, target())

    assert publish_image(upload, target()).method == "web-download"


SECOND_REGION = "RegionTwo"
CLOSED_PORT_URL = "http://127.0.0.1:1"


def use_cloud_entries(
    keystone: Keystone,  # noqa: F811
    directory: Path,
    monkeypatch: pytest.MonkeyPatch,
    **changes: dict[str, object],
) -> None:
    """Use a clouds.yaml whose entries are the demo user's with ``changes`` (by cloud name)."""
    clouds = {cloud: {**keystone.cloud_entry("demo"), **entry} for cloud, entry in changes.items()}
    path = directory / "clouds.yaml"
    path.write_text(yaml.safe_dump({"clouds": clouds}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))


def test_a_region_the_cloud_lacks_is_named(keystone, store, tmp_path, farm_id, monkeypatch):  # noqa: F811
    upload = publish_to_store(store, tmp_path, farm_id, ImageName(date(2026, 12, 14), "amd64"))
    # openstacksdk admits only the regions clouds.yaml lists (region_name alone is a list of one)
    with pytest.raises(
        GlancePublishError, match=r"cloud 'farm-test': connecting: .*Region Atlantis is not a valid region"
    ) as refused:
        publish_image(upload, target(region="Atlantis"))
    assert type(refused.value) is GlancePublishError

    use_cloud_entries(keystone, tmp_path, monkeypatch, **{CLOUD: {"regions": ["RegionOne", "Atlantis"]}})
    with pytest.raises(
        GlancePublishError,
        match=r"cloud 'farm-test': the service catalog has no public image \(Glance\) endpoint in region "
        r"'Atlantis'",
    ) as missing:
        publish_image(upload, target(region="Atlantis"))
    # a region the catalog has not cannot appear by waiting
    assert type(missing.value) is GlancePublishError


@pytest.fixture
def second_region(keystone: Keystone, glance: Glance) -> Iterator[str]:  # noqa: F811
    """A region whose Glance answers at its internal endpoint only: its public endpoint is a closed port."""
    admin = keystone.connection()
    region = admin.identity.create_region(id=SECOND_REGION)
    (service,) = admin.identity.services(type="image")
    endpoints = [
        admin.identity.create_endpoint(
            service_id=service.id, interface=interface, url=url, region_id=SECOND_REGION
        )
        for interface, url in (("internal", glance.url), ("public", CLOSED_PORT_URL))
    ]
    try:
        yield SECOND_REGION
    finally:
        for endpoint in endpoints:
            admin.identity.delete_endpoint(endpoint)
        admin.identity.delete_region(region)


def test_a_targets_region_and_clouds_yaml_interface_are_honoured(
    keystone,  # noqa: F811
    second_region,
    store,
    tmp_path,
    farm_id,
    conn,
    monkeypatch,
):
    upload = publish_to_store(store, tmp_path, farm_id, ImageName(date(2026, 12, 15), "amd64"))
    internal_cloud = "farm-test-internal"
    regions = ["RegionOne", second_region]
    use_cloud_entries(
        keystone,
        tmp_path,
        monkeypatch,
        **{CLOUD: {"regions": regions}, internal_cloud: {"regions": regions, "interface": "internal"}},
    )

    # farm.toml's region wins over clouds.yaml's region_name: the public endpoint there is closed.
    with pytest.raises(
        GlanceUnavailable, match=f"cloud 'farm-test': Glance at {CLOSED_PORT_URL}.* is unreachable"
    ):
        publish_image(upload, target(region=second_region))

    # A cloud whose clouds.yaml entry says `interface: internal` is checked and served there.
    result = publish_image(upload, target(cloud=internal_cloud, region=second_region))
    assert (result.method, result.cloud) == ("web-download", f"{internal_cloud}/{second_region}")
    assert conn.image.get_image(result.image_id).status == "active"


class TestPublishToGlanceStep(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    """The master-side step, with the real Glance (the test reactor runs deferToThread inline)."""

    @pytest.fixture(autouse=True)
    def services(self, glance, store, tmp_path, farm_id, clouds_yaml):  # noqa: F811
        self.glance = glance
        self.store = store
        self.store_settings = LocalStoreSettings(path=store.root, public_url=store.public_base_url() or "")
        self.tmp_path = tmp_path
        self.farm_id = farm_id

    def setUp(self):
        self.setup_test_reactor()
        return self.setup_test_build_step()

    def publish(self, day: date) -> str:
        upload = publish_to_store(self.store, self.tmp_path, self.farm_id, ImageName(day, "amd64"))
        return upload_key(self.store, upload).split("/")[1]

    def step(self, set_id: str, *targets: GlanceTarget) -> PublishToGlance:
        """The step as a build has it: the set id comes from the store publish's ``images_set_id``."""
        step = self.setup_step(
            PublishToGlance(self.store_settings, list(targets) or [target()], self.farm_id)
        )
        self.build.setProperty("images_set_id", set_id, "PublishSet")
        return step

    async def test_publishes_to_every_target(self):
        set_id = self.publish(date(2026, 12, 10))
        self.step(set_id, target(), target(use_import=False, keep=1))
        self.expect_outcome(SUCCESS)
        await self.run_step()

        images = self.get_nth_step(0).getProperty("glance_images")
        assert list(images) == [CLOUD]
        recorded = read_cloud_images(self.store, set_id)
        assert {cloud: (copy.image_id, copy.status) for cloud, copy in recorded.items()} == {
            CLOUD: (images[CLOUD], ACTIVE)
        }
        summary = self.get_nth_step(0).getResultSummary()["step"]
        assert summary.startswith(f"glance: {CLOUD}: gentoo-20261210-amd64 web-download (")
        assert f"; {CLOUD}: gentoo-20261210-amd64 already published ({images[CLOUD]})" in summary

    async def test_a_worker_image_is_published_from_its_own_kind(self):
        day = date(2026, 12, 16)
        upload = publish_to_store(
            self.store, self.tmp_path, self.farm_id, ImageName(day, "amd64", variant=WORKER_VARIANT)
        )
        set_id = upload_key(self.store, upload).split("/")[1]
        step = self.setup_step(
            PublishToGlance(self.store_settings, [target()], self.farm_id, images_kind="worker-images")
        )
        self.build.setProperty("worker-images_set_id", set_id, "PublishSet")
        self.expect_outcome(SUCCESS)
        await self.run_step()

        image_id = step.getProperty("glance_images")[CLOUD]
        assert step.getResultSummary()["step"].startswith(
            f"glance: {CLOUD}: gentoo-farm-worker-20261216-amd64 "
        )
        conn = openstack.connect(cloud=CLOUD)
        assert conn.image.get_image(image_id).properties["farm_image_variant"] == WORKER_VARIANT
        # Recorded beside the worker image's set; the cloud image sets know nothing of it.
        assert read_cloud_images(self.store, set_id, "worker-images")[CLOUD].image_id == image_id
        assert read_cloud_images(self.store, set_id) == {}

    async def test_an_upload_streams_its_progress_to_the_log_and_the_status(self):
        set_id = self.publish(date(2026, 12, 13))
        step = self.setup_step(
            PublishToGlance(
                self.store_settings, [target(use_import=False)], self.farm_id, progress_interval=0
            )
        )
        self.build.setProperty("images_set_id", set_id, "PublishSet")
        statuses: list[str] = []
        show = step._show_progress
        step._show_progress = lambda *args: (show(*args), statuses.append(step.getCurrentSummary()["step"]))
        self.expect_outcome(SUCCESS)
        await self.run_step()

        size = human_size(find_image(self.store, set_id).size)
        log = step.logs["glance"].stdout
        # Each line was written while the upload ran, the status text following it.
        assert f"uploading {size} / {size} (100 %)" in log
        assert any(status.startswith(f"{CLOUD}: uploading ") for status in statuses)
        assert log.index("created gentoo-20261213-amd64") < log.index("uploading ") < log.index("is active")

    async def test_glance_down_warns_and_keeps_the_store(self):
        set_id = self.publish(date(2026, 12, 11))
        self.step(set_id)
        self.expect_outcome(WARNINGS)
        with self.glance.down():
            await self.run_step()

        summary = self.get_nth_step(0).getResultSummary()["step"]
        assert f"Glance at {self.glance.url}" in summary
        assert (
            "is unreachable: Connection refused (not published there; the image is in the store)" in summary
        )
        assert self.get_nth_step(0).getProperty("glance_images") == {}
        assert find_image(self.store, set_id) is not None
        unreachable = read_cloud_images(self.store, set_id)[CLOUD]
        assert (unreachable.image_id, unreachable.status) == ("", UNREACHABLE)
        assert "is unreachable" in unreachable.detail

    async def test_an_image_rotated_out_is_listed_as_deleted(self):
        older, newer = self.publish(date(2026, 12, 14)), self.publish(date(2026, 12, 15))
        # Two builds' Glance steps, one after the other: the second publish rotates the first image out.
        for set_id in (older, newer):
            self.setup_step(
                PublishToGlance(self.store_settings, [target(keep=1)], self.farm_id, set_id=set_id)
            )
            self.expect_outcome(SUCCESS)
        await self.run_step()

        older_copy, newer_copy = (read_cloud_images(self.store, set_id)[CLOUD] for set_id in (older, newer))
        assert (older_copy.status, newer_copy.status) == (DELETED, ACTIVE)
        assert older_copy.image_id != newer_copy.image_id

    async def test_failed_import_fails_the_step(self):
        set_id = self.publish(date(2026, 12, 12))
        manifest = f"images/{set_id}/manifest.json"
        # Glance fetches the URL the catalog gives; take the disk away from under it.
        self.store.delete(
            [
                key
                for key in (info.key for info in self.store.list(f"images/{set_id}/"))
                if key.endswith(".qcow2")
            ]
        )
        assert self.store.exists(manifest)
        self.step(set_id)
        self.expect_outcome(FAILURE)
        await self.run_step()

        summary = self.get_nth_step(0).getResultSummary()["step"]
        assert "the import of gentoo-20261212-amd64" in summary and "failed in store fs" in summary

    async def test_unknown_image_set_fails_clearly(self):
        self.step("20990101T000000Z-nothing")
        self.expect_outcome(FAILURE)
        await self.run_step()
        assert self.get_nth_step(0).getResultSummary() == {
            "step": f"glance: no published image '20990101T000000Z-nothing' in {self.store.location}"
        }


def test_protected_images_are_not_rotated(store, tmp_path, farm_id, conn):
    first = publish_image(
        publish_to_store(store, tmp_path, farm_id, ImageName(date(2026, 12, 5), "amd64")), target(keep=1)
    )
    conn.image.update_image(first.image_id, is_protected=True)

    second = publish_image(
        publish_to_store(store, tmp_path, farm_id, ImageName(date(2026, 12, 6), "amd64")), target(keep=1)
    )

    assert (second.rotated, second.rotation_error) == ({}, "")
    assert {image.id for image in farm_images(conn, farm_id)} == {first.image_id, second.image_id}
    conn.image.update_image(first.image_id, is_protected=False)


def farm_toml_for(store: LocalStore, directory: Path, farm_id: str) -> Path:
    """A farm whose store is ``store`` and whose one [[glance]] target is the test cloud."""
    directory.mkdir()
    (directory / "farm.toml").write_text(
        f'[farm]\nid = "{farm_id}"\n\n'
        f'[store]\npath = "{store.root}"\npublic_url = "{store.public_base_url()}"\n\n'
        f'[[glance]]\ncloud = "{CLOUD}"\nkeep = 2\n'
    )
    return directory


def test_images_upload_puts_a_stored_worker_image_into_glance_and_records_it(store, tmp_path, farm_id, conn):
    name = ImageName(date(2026, 12, 5), "amd64", variant=WORKER_VARIANT)
    upload = publish_to_store(store, tmp_path, farm_id, name)
    farm = farm_toml_for(store, tmp_path / "farm", farm_id)

    uploaded = farm_command("--farm", str(farm), "images", "upload", str(name), "--cloud", CLOUD)

    assert f"{CLOUD}: publishing {name}" in uploaded.stdout
    image = newest_farm_image(conn, farm_id, WORKER_VARIANT)
    assert image is not None and image.name == str(name)
    assert f"{CLOUD}: {name} " in uploaded.stdout and f"({image.id})" in uploaded.stdout
    assert glance_sha512(conn, image.id) == upload.sha512
    # Recorded in the store as a build's Glance step records it: `farm images` shows the copy.
    assert (
        read_cloud_images(store, find_image(store, str(name)).set_id, "worker-images")[CLOUD].image_id
        == image.id
    )
    listing = farm_command("--farm", str(farm), "images").stdout
    assert f"glance {CLOUD}  {image.id}  active" in listing

    # Again: the cloud has it already, nothing is uploaded twice.
    again = farm_command("--farm", str(farm), "images", "upload", str(name))
    assert f"already published ({image.id})" in again.stdout
    assert [found.id for found in farm_images(conn, farm_id)] == [image.id]


def test_images_upload_names_what_it_cannot_find(store, tmp_path, farm_id):
    farm = farm_toml_for(store, tmp_path / "farm", farm_id)

    unknown_image = farm_command(
        "--farm", str(farm), "images", "upload", "gentoo-19990101-amd64", check=False
    )
    assert unknown_image.returncode == 2
    assert "no published image named 'gentoo-19990101-amd64'" in unknown_image.stderr

    unknown_cloud = farm_command(
        "--farm", str(farm), "images", "upload", "latest", "--cloud", "other", check=False
    )
    assert unknown_cloud.returncode == 2
    assert f"no [[glance]] target named other (configured: {CLOUD})" in unknown_cloud.stderr
