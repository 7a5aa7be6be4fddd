"""The whole farm in its production shape: S3 (moto's server), a real Glance behind a real Keystone, and
the master's database on a real PostgreSQL.

The same pipeline as test_pipeline.py (which runs on the default SQLite) with the production store: the
binhost and distfile mirror live in the bucket, workers upload through presigned URLs, the image goes to
Glance by web-download import from the bucket. The kernel comes from the workers' warm ccache (the test
cache's shared kernel ccache). Last, the operator's way to a first worker image for a new cloud: the farm
is restarted with ``[image.worker] enabled = true`` and its ``worker-image`` builder runs on a local worker.
"""

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import openstack
import pytest
from moto.server import ThreadedMotoServer
from openstack.image.v2.image import Image

from gentoo_farm.artifacts import IMAGE_VARIANTS, WORKER_IMAGE, force_scheduler
from gentoo_farm.config import LATEST_FARM_WORKER_IMAGE, load_config
from gentoo_farm.glance import FARM_ID_PROPERTY, VARIANT_PROPERTY, newest_farm_image
from gentoo_farm.image_name import WORKER_VARIANT
from gentoo_farm.workers.latent.openstack import LATEST_FARM_IMAGE, LATEST_IMAGE_VARIANTS
from tests.debian import kernel_source_tarball
from tests.farmtest import Farm, configure_for_world, farm_command, init_farm, set_option
from tests.services.glance import Glance, glance  # noqa: F401
from tests.services.keystone import Keystone, keystone  # noqa: F401
from tests.services.s3 import FAKE_CREDENTIALS
from tests.test_pipeline import IMAGE_BUILD_TIMEOUT, KERNEL_BUILD_TIMEOUT, use_the_test_cache_for_workers
from tests.test_postgresql import PostgreSQL, postgresql  # noqa: F401  (module fixture)
from tests.world import WorldServer, build_world

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

SUCCESS, WARNINGS = 0, 1
CLOUD = "farm-test"
BUCKET = "gentoo-farm"
PUBLIC_READ = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{BUCKET}/*",
        }
    ],
}


@dataclass
class S3Farm:
    farm: Farm
    glance: Glance
    root: Path
    database: PostgreSQL
    database_name: str

    def latest_image(self, kind: str = "images") -> dict:
        """The ``latest.json`` pointer of the image sets of ``kind`` (``worker-images``: the worker image)."""
        body = boto3.client("s3", endpoint_url=self.endpoint).get_object(
            Bucket=BUCKET, Key=f"{kind}/latest.json"
        )
        return json.loads(body["Body"].read())

    def image_name(self, set_id: str) -> str:
        body = boto3.client("s3", endpoint_url=self.endpoint).get_object(
            Bucket=BUCKET, Key=f"images/{set_id}/manifest.json"
        )
        return json.loads(body["Body"].read())["metadata"]["name"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.glance.download_port}"

    def glance_images(self) -> list:
        """This farm's images (the Glance is shared with other test modules)."""
        return [
            image
            for image in self.glance_connection().image.images()
            if image.properties.get(FARM_ID_PROPERTY) == self.farm_id
        ]

    def glance_connection(self) -> openstack.connection.Connection:
        return self.glance.keystone.connection("demo", "demo")

    @property
    def farm_id(self) -> str:
        return load_config(self.farm.root).farm.id

    def booted_by(self, image: str) -> Image | None:
        """The Glance image a pool's ``image = "farm-latest"`` (or ``"farm-worker-latest"``) boots."""
        return newest_farm_image(self.glance_connection(), self.farm_id, LATEST_IMAGE_VARIANTS[image])

    def build(
        self, builder: str, scheduler: str, timeout: float = IMAGE_BUILD_TIMEOUT, **params: object
    ) -> dict:
        before = len(self.farm.builds(builder))
        status, answer = self.farm.force(scheduler, builderNames=[builder], **params)
        assert status == 200, answer
        return self.farm.wait_for_build(builder, before + 1, timeout=timeout)


@pytest.fixture(scope="module")
def s3_farm(
    tmp_path_factory: pytest.TempPathFactory,
    keystone: Keystone,  # noqa: F811
    glance: Glance,  # noqa: F811
    postgresql: PostgreSQL,  # noqa: F811
) -> Iterator[S3Farm]:
    root = tmp_path_factory.mktemp("pipeline-s3")
    source = kernel_source_tarball(root / "debs")
    world = build_world(root / "world", extra_distfiles=[source])
    clouds = keystone.write_clouds_yaml(root / "clouds.yaml", cloud=CLOUD, username="demo")
    # Glance may web-download only from 127.0.0.1 on its download port: the bucket is served there.
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=glance.download_port, verbose=False)
    with pytest.MonkeyPatch.context() as environment, WorldServer(world.mirror_dir) as upstream:
        for name, value in {**FAKE_CREDENTIALS, "OS_CLIENT_CONFIG_FILE": str(clouds)}.items():
            environment.setenv(name, value)
        s3.start()
        endpoint = f"http://127.0.0.1:{glance.download_port}"
        s3_client = boto3.client("s3", endpoint_url=endpoint)
        s3_client.create_bucket(Bucket=BUCKET)
        # Portage reads the binhost and the distfile mirror anonymously: the bucket is public-read
        # (writes still need the master's credentials or a URL it signed).
        s3_client.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(PUBLIC_READ))
        farm = init_farm(root / "farm")
        configure_for_world(farm, world, upstream.url, source.name)
        use_the_test_cache_for_workers(farm)
        database = postgresql.create_database("pipeline_s3")
        set_option(farm.root, "master", "db_url", json.dumps(postgresql.url(database)))
        for key, value in {
            "type": '"s3"',
            "bucket": json.dumps(BUCKET),
            "endpoint_url": json.dumps(endpoint),
            "region": '"us-east-1"',
            "public_url": json.dumps(f"{endpoint}/{BUCKET}"),
        }.items():
            set_option(farm.root, "store", key, value)
        with (farm.root / "farm.toml").open("a") as toml:
            toml.write(f'\n[[glance]]\ncloud = "{CLOUD}"\nkeep = 2\n')
        farm_command("--farm", str(farm.root), "up")
        try:
            farm.login()
            yield S3Farm(farm, glance, root, postgresql, database)
        finally:
            farm_command("--farm", str(farm.root), "down", check=False)
            s3.stop()


def test_an_image_build_publishes_to_s3_and_glance(s3_farm: S3Farm) -> None:
    farm = s3_farm.farm
    # The kernel's source is vouched for by the snapshot the mirror build publishes: mirror first.
    for builder, timeout in (("mirror", 300), ("overlay", 300), ("kernel", KERNEL_BUILD_TIMEOUT)):
        build = s3_farm.build(builder, f"force-{builder}", timeout=timeout)
        assert build["results"] == SUCCESS, f"{builder}: {build['state_string']}"
    image = farm.wait_for_build("image", 1, timeout=IMAGE_BUILD_TIMEOUT)

    assert image["results"] == SUCCESS, image["state_string"]
    latest = s3_farm.latest_image()
    (disk,) = [file for file in latest["files"] if file["name"].endswith(".qcow2")]
    assert disk["name"] == f"{latest['metadata']['name']}.qcow2"
    s3 = boto3.client("s3", endpoint_url=s3_farm.endpoint)
    stable = s3.get_object(Bucket=BUCKET, Key="images/gentoo-latest-amd64.qcow2")["Body"].read()
    assert hashlib.sha512(stable).hexdigest() == disk["sha512"]
    (published,) = s3_farm.glance_images()
    assert published.name == latest["metadata"]["name"]
    assert published.status == "active"
    assert (published.hash_algo, published.hash_value) == ("sha512", disk["sha512"])
    assert (published.disk_format, published.container_format) == ("qcow2", "bare")
    assert published.os_distro == "gentoo"
    assert published.hw_disk_bus == "virtio"
    assert farm.properties(image)["glance_images"] == {CLOUD: published.id}
    # The master ran on PostgreSQL: the image build the REST API shows is a row of its builds table.
    with s3_farm.database.connect(s3_farm.database_name) as connection:
        stored = connection.execute(
            "SELECT builders.name, builds.results FROM builds JOIN builders ON builders.id = builds.builderid"
            " WHERE builds.id = %s",
            (image["buildid"],),
        ).fetchall()
    assert stored == [("image", SUCCESS)]

    downloads = s3_farm.root / "downloads"
    farm_command("--farm", str(farm.root), "download", "latest", str(downloads))
    (downloaded,) = downloads.glob("*.qcow2")
    assert hashlib.sha512(downloaded.read_bytes()).hexdigest() == disk["sha512"]


def test_glance_down_warns_and_keeps_the_s3_publish(s3_farm: S3Farm) -> None:
    before = s3_farm.latest_image()["set_id"]
    with s3_farm.glance.down():
        image = s3_farm.build("image", "build-image", extra_packages="app-misc/farm-hello")

    assert image["results"] == WARNINGS, image["state_string"]
    (glance_step,) = [step for step in s3_farm.farm.steps(image) if step["name"] == "glance"]
    assert "unreachable" in glance_step["state_string"]
    assert s3_farm.latest_image()["set_id"] != before
    # The day's second image (unless the UTC day turned between the two builds).
    first, second = (s3_farm.image_name(set_id) for set_id in (before, s3_farm.latest_image()["set_id"]))
    if second.startswith(first.removesuffix("-amd64")):
        assert second == f"{first.removesuffix('-amd64')}.1-amd64"
    assert len(s3_farm.glance_images()) == 1


def test_the_worker_image_builder_publishes_the_first_worker_image(s3_farm: S3Farm) -> None:
    """What docs/workers.md tells an operator to do for a new cloud's first worker image: enable it, restart
    the farm, build it on a local worker; OpenStack pools then boot it as "farm-worker-latest"."""
    farm = s3_farm.farm
    cloud_image = s3_farm.latest_image()
    farm_latest = s3_farm.booted_by(LATEST_FARM_IMAGE)
    assert farm_latest is not None
    set_option(farm.root, "image.worker", "enabled", "true")
    farm_command("--farm", str(farm.root), "down")
    farm_command("--farm", str(farm.root), "up")
    farm.login()

    build = s3_farm.build(WORKER_IMAGE, force_scheduler(WORKER_IMAGE))

    assert build["results"] == SUCCESS, build["state_string"]
    kind = IMAGE_VARIANTS[WORKER_IMAGE].images_kind
    latest = s3_farm.latest_image(kind)
    name = latest["metadata"]["name"]
    assert re.fullmatch(r"gentoo-farm-worker-\d{8}(\.\d+)?-amd64", name), name
    (disk,) = [file for file in latest["files"] if file["name"].endswith(".qcow2")]
    assert disk["name"] == f"{name}.qcow2"
    s3 = boto3.client("s3", endpoint_url=s3_farm.endpoint)
    stable = s3.get_object(Bucket=BUCKET, Key=f"{kind}/gentoo-farm-worker-latest-amd64.qcow2")["Body"].read()
    assert hashlib.sha512(stable).hexdigest() == disk["sha512"]
    # Its own kind: the cloud image's pointer stays where the cloud image builds left it.
    assert s3_farm.latest_image() == cloud_image

    # The image an OpenStack pool's image = "farm-worker-latest" boots, found as the latent worker finds it.
    published = s3_farm.booted_by(LATEST_FARM_WORKER_IMAGE)
    assert published is not None
    assert published.name == name
    assert published.properties[VARIANT_PROPERTY] == WORKER_VARIANT
    assert published.status == "active"
    assert (published.hash_algo, published.hash_value) == ("sha512", disk["sha512"])
    assert (published.disk_format, published.container_format) == ("qcow2", "bare")
    assert farm.properties(build)["glance_images"] == {CLOUD: published.id}
    # "farm-latest" still boots the cloud image it booted before.
    newest_cloud_image = s3_farm.booted_by(LATEST_FARM_IMAGE)
    assert newest_cloud_image is not None
    assert newest_cloud_image.id == farm_latest.id
