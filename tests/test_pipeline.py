"""The whole farm against the stand-in Gentoo world: real master, local workers, Portage, kernel, qemu.

One farm for the module, the tests in order: the first image (kernel compiled from source, packages
compiled), a rebuild that comes from the binhost and the distfile mirror, downloads and the Images
page, a kernel config push that reaches a booted image, and the failures that must leave the
published sets as they were.
"""

import contextlib
import hashlib
import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from buildbot.process.results import RETRY
from playwright.sync_api import expect
from portage.versions import cpv_getkey

from gentoo_farm.config import load_config
from gentoo_farm.signing import verify_clearsigned
from gentoo_farm.stageprotocol import SERIAL_LOG_MARKER
from gentoo_farm.store.sets import SIGNING_KEY
from gentoo_farm.workers.latent.local import hand_over
from master.workers import local_build_ids, local_worker_names
from tests import cache
from tests.browser import artifacts_dir, chromium
from tests.debian import kernel_source_tarball
from tests.farmtest import FARM, Farm, configure_for_world, farm_command, init_farm, set_option
from tests.world import World, WorldServer, build_world

# A kernel compiled from source (minutes), several image builds, qemu boots under TCG.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

SUCCESS, FAILURE, SKIPPED = 0, 2, 3
KERNEL_BUILD_TIMEOUT = 1500
IMAGE_BUILD_TIMEOUT = 900
STABLE_NAMES = {
    "stage3": "stage3-latest.tar.xz",
    "portage": "portage-latest.tar.xz",
    "kernel": "vmlinuz-latest.tar.zst",
    "overlay": "vmoverride-latest.tar.gz",
    "stage4": "stage4-latest.tar.zst",
    "images": "gentoo-latest-amd64.qcow2",
}
"""What a person curls without reading a pointer (issue 10 §4)."""


@dataclass
class Pipeline:
    farm: Farm
    world: World
    upstream: WorldServer
    root: Path

    def store_json(self, key: str) -> dict:
        return json.loads((self.farm.root / "store" / key).read_text())

    def latest(self, kind: str) -> str:
        return self.store_json(f"{kind}/latest.json")["set_id"]

    def image_manifest(self, set_id: str, name: str) -> tuple[dict[str, str], dict, list[str]]:
        """A published image's package manifest: {cpv: origin}, the whole JSON and the text file's lines."""
        image_set = self.farm.root / "store" / "images" / set_id
        manifest = json.loads((image_set / f"{name}.manifest.json").read_text())
        origins = {package["cpv"]: package["origin"] for package in manifest["packages"]}
        return origins, manifest, (image_set / f"{name}.manifest").read_text().splitlines()

    def force(self, scheduler: str, builder: str, **params: object) -> dict:
        before = len(self.farm.builds(builder))
        status, answer = self.farm.force(scheduler, builderNames=[builder], **params)
        assert status == 200, answer
        return self.farm.wait_for_build(builder, before + 1, timeout=IMAGE_BUILD_TIMEOUT)

    def push(self, repository: str, message: str, change: Callable[[Path], None]) -> str:
        (revision,) = self.push_in_a_row(repository, [(message, change)])
        return revision

    def push_in_a_row(self, repository: str, commits: list[tuple[str, Callable[[Path], None]]]) -> list[str]:
        """Commit each change in one clone, then push the commits one after the other, as fast as git can."""
        clone = self.root / f"clone-{repository}-{time.monotonic_ns()}"
        git("clone", "--quiet", str(self.farm.root / f"{repository}.git"), str(clone), cwd=self.root)
        revisions = []
        for message, change in commits:
            change(clone)
            git("add", "-A", cwd=clone)
            git(
                "-c", "user.name=Dev", "-c", "user.email=dev@example.org", "commit", "-qm", message, cwd=clone
            )
            revisions.append(git("rev-parse", "HEAD", cwd=clone))
        for revision in revisions:
            git("push", "--quiet", "origin", f"{revision}:refs/heads/main", cwd=clone)
        return revisions


def use_the_test_cache_for_workers(farm: Farm) -> None:
    """Keep the local workers' caches in the test cache, the first worker's ccache the shared kernel ccache.

    ccache survives the farm, as it would on a long-lived build host: a rerun compiles in seconds. The
    shared kernel ccache is also where test_kernel_build.py leaves its cold compile of the same source and
    config, so a fresh machine compiles that kernel once per run, not once per test module. Builds run as
    the worker's own ids, which must own what they write: the shared ccache is handed to them.
    """
    workers = cache.directory("pipeline-workers")
    set_option(farm.root, "workers.local", "cache_dir", json.dumps(str(workers)))
    shared = cache.directory(cache.KERNEL_CCACHE)
    config = load_config(farm.root)
    first = local_worker_names(config)[0]
    ccache = workers / first / "ccache"
    ccache.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # an earlier run's link
        ccache.symlink_to(shared, target_is_directory=True)
    build_ids = local_build_ids(config, 0)
    if build_ids is not None:
        hand_over(shared, build_ids)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def step_summary(farm: Farm, build: dict, name: str) -> str:
    (step,) = [step for step in farm.steps(build) if step["name"] == name]
    return step["state_string"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    root = tmp_path_factory.mktemp("pipeline")
    source = kernel_source_tarball(root / "debs")
    world = build_world(root / "world", extra_distfiles=[source])
    with running_pipeline(root, world, source.name) as running:
        yield running


@contextlib.contextmanager
def running_pipeline(root: Path, world: World, kernel_source: str) -> Iterator[Pipeline]:
    """A farm in ``root/farm`` built from ``world`` (served on 127.0.0.1), up and logged in; down after."""
    with WorldServer(world.mirror_dir) as upstream:
        farm = init_farm(root / "farm")
        configure_for_world(farm, world, upstream.url, kernel_source)
        use_the_test_cache_for_workers(farm)
        farm_command("--farm", str(farm.root), "up")
        try:
            farm.login()
            yield Pipeline(farm, world, upstream, root)
        finally:
            farm_command("--farm", str(farm.root), "down", check=False)


def test_first_image_is_built_from_source_boot_tested_and_published(pipeline: Pipeline) -> None:
    farm = pipeline.farm
    images_before = len(farm.builds("image"))
    # The kernel's source is vouched for by the snapshot the mirror build publishes: mirror first.
    mirror = pipeline.force("force-mirror", "mirror")
    assert mirror["results"] == SUCCESS, mirror["state_string"]
    overlay = pipeline.force("force-overlay", "overlay")
    assert overlay["results"] == SUCCESS, overlay["state_string"]
    # The last input to be published starts the image build.
    kernel = pipeline.force("force-kernel", "kernel")
    assert kernel["results"] == SUCCESS, kernel["state_string"]
    # The snapshot vouched for the kernel source: its Manifest line keyed the build.
    assert farm.properties(kernel)["kernel_source_dist"].startswith("DIST linux-source-6.1.tar.xz ")

    # While Portage works, the emerge step's status on the build's page follows it, live.
    running = farm.wait_for_build_to_start("image", images_before + 1, timeout=IMAGE_BUILD_TIMEOUT)
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{farm.url}#/builders/{running['builderid']}/builds/{running['number']}")
        progress = page.get_by_text(re.compile(r"emerging \d+/\d+ \S+ \(compiling\)")).first
        expect(progress).to_be_visible(timeout=IMAGE_BUILD_TIMEOUT * 1000)
        page.screenshot(path=str(artifacts_dir() / "build-live-progress.png"), full_page=True)
    image = farm.wait_for_build("image", images_before + 1, timeout=IMAGE_BUILD_TIMEOUT)

    assert image["results"] == SUCCESS, image["state_string"]
    properties = farm.properties(image)
    assert properties["packages_compiled"], "a first build with an empty binhost compiles"
    console = farm.log(image, "boot-test", "serial_console")
    assert "SYSLINUX" in console
    assert "root=/dev/vda1" in console
    # Over SSH as the cloud user: the emerged package's command ran and printed its line.
    boot_test = farm.log(image, "boot-test")
    assert f"checking the command {pipeline.world.static_binary!r}" in boot_test
    assert pipeline.world.hello_message in boot_test.split(SERIAL_LOG_MARKER)[0]
    assert f"checking the kernel release {properties['kernel_release']}" in boot_test
    assert "boot test passed" in boot_test
    assert pipeline.latest("images") == properties["images_set_id"]
    # The emerged root was published as a stage4, and the image names it among its sources.
    stage4 = pipeline.store_json("stage4/latest.json")
    assert stage4["set_id"] == properties["stage4_set_id"]
    assert stage4["input_key"] == properties["stage4_key"]
    assert stage4["metadata"]["packages_compiled"] == properties["packages_compiled"]
    assert pipeline.store_json("images/latest.json")["sources"]["stage4"] == stage4["set_id"]
    name = properties["image_name"]
    assert re.fullmatch(r"gentoo-\d{8}-amd64", name), name
    assert set(properties["images_files"]) == {f"{name}.qcow2", f"{name}.manifest.json", f"{name}.manifest"}
    # The published manifest lists every package the build compiled, at the version it built, as compiled;
    # the text file lists the same packages, one category/package-version a line.
    origins, manifest, text = pipeline.image_manifest(properties["images_set_id"], name)
    compiled = {cpv for cpv, origin in origins.items() if origin == "compiled"}
    assert compiled == set(properties["packages_compiled"])
    assert set(pipeline.world.package_set) <= {cpv_getkey(cpv) for cpv in compiled}
    # Nothing came from a binhost; whatever the build did not merge came with the stage3.
    assert set(origins.values()) <= {"compiled", "stage3"}
    assert sorted(text) == sorted(origins)
    assert manifest["kernel"]["release"] == properties["kernel_release"]
    assert pipeline.store_json("images/latest.json")["metadata"]["package_count"] == len(origins)
    # Every input and the image under a stable name, the same bytes as the dated set's artifact.
    for kind, stable in STABLE_NAMES.items():
        latest = pipeline.store_json(f"{kind}/latest.json")
        artifact = next(file for file in latest["files"] if file["name"] == latest["metadata"]["artifact"])
        stable_path = farm.root / "store" / kind / stable
        assert hashlib.sha512(stable_path.read_bytes()).hexdigest() == artifact["sha512"], stable
        assert stable_path.with_name(stable + ".sha512").read_text() == f"{artifact['sha512']}  {stable}\n"
    # The binhost and the distfile mirror were filled by the push back: the distfile of every package the
    # image compiled. The kernel source is in no Manifest of the world's: the kernel build pushed nothing.
    store = farm.root / "store"
    assert "CPV:" in (store / "binpkgs" / pipeline.world.profile / "Packages").read_text()
    kernel_source = load_config(farm.root).kernel.source
    vouched = set(pipeline.world.distfiles_of(compiled))
    assert vouched and {path.name for path in (store / "distfiles").iterdir()} >= vouched
    assert not (store / "distfiles" / kernel_source).exists()
    # Every set and stable object is signed by the farm key (issue 15).
    farm_key = (store / SIGNING_KEY).read_bytes()
    for kind, stable in STABLE_NAMES.items():
        signed = verify_clearsigned(farm_key, (store / kind / f"{stable}.DIGESTS").read_bytes())
        assert f"  {stable}\n" in signed.split("# SHA512 HASH")[1]
        latest = pipeline.store_json(f"{kind}/latest.json")["set_id"]
        assert verify_clearsigned(farm_key, (store / kind / latest / "DIGESTS").read_bytes())
    # The boot test grew the root to its bigger disk; the image itself holds no host identity (issue 16).
    assert "checking the root filesystem grown beyond the image's" in boot_test
    raw = pipeline.root / "published.raw"
    qcow2 = store / "images" / properties["images_set_id"] / f"{name}.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)], check=True)
    listing = subprocess.run(
        ["debugfs", "-R", "ls -l /etc/ssh", f"{raw}?offset=1048576"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "sshd_config" in listing and "ssh_host_" not in listing
    raw.unlink()


def test_forced_rebuild_compiles_nothing_and_fetches_nothing_from_upstream(pipeline: Pipeline) -> None:
    """`farm build image --force --wait` on an unchanged farm, as an operator runs it."""
    pipeline.upstream.clear_log()
    first = pipeline.store_json("images/latest.json")
    first_name = first["metadata"]["name"]
    before = len(pipeline.farm.builds("image"))
    rebuilt = subprocess.run(
        [FARM, "--farm", str(pipeline.farm.root), "build", "image", "--force", "--wait"],
        env={**os.environ, "FARM_PASSWORD": pipeline.farm.admin_password},
        capture_output=True, text=True, timeout=IMAGE_BUILD_TIMEOUT, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip

    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "rebuild forced: images " in rebuilt.stdout
    assert rebuilt.stdout.splitlines()[-1].startswith(f"image build #{before + 1}: success")
    image = pipeline.farm.wait_for_build("image", before + 1)
    assert image["results"] == SUCCESS, image["state_string"]
    properties = pipeline.farm.properties(image)
    # The day's second image is .1 (unless the UTC day turned between the two builds).
    day = first_name.split("-")[1]
    if properties["image_name"].startswith(f"gentoo-{day}"):
        assert properties["image_name"] == f"gentoo-{day}.1-amd64"
    assert properties["packages_compiled"] == []
    assert properties["packages_binary"]
    assert [path for path in pipeline.upstream.requested_paths() if "distfiles" in path] == []
    # Its published manifest lists the same packages, those the first build compiled now from the farm
    # binhost; `farm diff` of the two images finds nothing changed.
    first_origins, _, first_text = pipeline.image_manifest(first["set_id"], first_name)
    origins, _, text = pipeline.image_manifest(properties["images_set_id"], properties["image_name"])
    assert text == first_text
    first_compiled = {cpv for cpv, origin in first_origins.items() if origin == "compiled"}
    assert {cpv for cpv, origin in origins.items() if origin == "farm-binhost"} == first_compiled
    assert first_compiled == set(properties["packages_binary"])
    assert "compiled" not in origins.values()
    diff = farm_command("--farm", str(pipeline.farm.root), "diff", first_name, properties["image_name"])
    assert diff.stdout.splitlines() == [
        f"--- {first_name}",
        f"+++ {properties['image_name']}",
        "no package or kernel changed",
    ]


def test_an_unchanged_input_is_up_to_date_in_seconds(pipeline: Pipeline) -> None:
    before = pipeline.latest("overlay")
    overlay = pipeline.force("force-overlay", "overlay")
    assert overlay["results"] == SUCCESS
    assert "up to date" in step_summary(pipeline.farm, overlay, "up-to-date")
    assert overlay["complete_at"] - overlay["started_at"] < 30
    assert pipeline.latest("overlay") == before


def test_download_latest_and_the_images_page(pipeline: Pipeline) -> None:
    farm = pipeline.farm
    listing = json.loads(farm_command("--farm", str(farm.root), "images", "--json").stdout)
    latest = next(image for image in listing if image["latest"])
    downloads = pipeline.root / "downloads"

    result = farm_command("--farm", str(farm.root), "download", "latest", str(downloads))

    (downloaded,) = downloads.glob("*.qcow2")
    assert str(downloaded) in result.stdout
    assert hashlib.sha512(downloaded.read_bytes()).hexdigest() == latest["sha512"]

    with chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{farm.url}#/images")
        row = page.locator(".farm-images tr", has_text=latest["name"]).first
        link = row.locator("a.farm-download")
        expect(link).to_be_visible()
        page.screenshot(path=str(artifacts_dir() / "images-page.png"), full_page=True)
        href = link.get_attribute("href")
    with urllib.request.urlopen(href, timeout=60) as response:
        assert hashlib.sha512(response.read()).hexdigest() == latest["sha512"]


def test_three_kernel_config_pushes_in_a_row_make_one_kernel_and_one_image_of_the_newest(
    pipeline: Pipeline,
) -> None:
    farm = pipeline.farm
    kernels_before, images_before = len(farm.builds("kernel")), len(farm.builds("image"))

    def new_local_version(suffix: str) -> Callable[[Path], None]:
        def change(clone: Path) -> None:
            with (clone / "config").open("a") as config:
                config.write(f'CONFIG_LOCALVERSION="-pushed{suffix}"\n')

        return change

    revisions = pipeline.push_in_a_row(
        "kernel-config", [(f"kernel: local version {n}", new_local_version(str(n))) for n in (1, 2, 3)]
    )

    kernel = farm.wait_for_build("kernel", kernels_before + 1, timeout=KERNEL_BUILD_TIMEOUT)
    assert kernel["results"] == SUCCESS, kernel["state_string"]
    assert farm.properties(kernel)["got_revision"] == revisions[-1]
    release = farm.properties(kernel)["kernel_release"]
    assert release.endswith("-pushed3")
    # The worker kept the kernel's build tree: make rebuilt what the new option touches.
    assert farm.properties(kernel)["kernel_build_tree"] == "kept"
    image = farm.wait_for_build("image", images_before + 1, timeout=IMAGE_BUILD_TIMEOUT)
    assert image["results"] == SUCCESS, image["state_string"]
    assert release in farm.log(image, "boot-test", "serial_console")
    # A kernel-only change: the image unpacked the published stage4 and never started Portage.
    image_properties = farm.properties(image)
    assert image_properties["stage4_reused"] is True
    assert image_properties["stage4_set_id"] == pipeline.latest("stage4")
    assert "reusing stage4" in step_summary(farm, image, "find-stage4")
    assert not [step for step in farm.steps(image) if step["name"] == "emerge" and step["results"] != SKIPPED]
    # The earlier pushes made no builds of their own, and none is waiting to start.
    for builder, before in (("kernel", kernels_before), ("image", images_before)):
        made = [build for build in farm.builds(builder)[before:] if build["results"] != RETRY]
        assert len(made) == 1, made
    assert farm.pending_requests("kernel") == farm.pending_requests("image") == []


def test_a_config_that_does_not_compile_fails_clearly_and_publishes_nothing(pipeline: Pipeline) -> None:
    farm = pipeline.farm
    kernel_before, image_before = pipeline.latest("kernel"), pipeline.latest("images")
    kernels_before = len(farm.builds("kernel"))

    def break_the_build(clone: Path) -> None:
        # -Werror with a tiny stack frame limit: gcc rejects the first real function it compiles.
        with (clone / "config").open("a") as config:
            config.write("CONFIG_WERROR=y\nCONFIG_FRAME_WARN=16\n")

    pipeline.push("kernel-config", "kernel: broken", break_the_build)
    kernel = farm.wait_for_build("kernel", kernels_before + 1, timeout=KERNEL_BUILD_TIMEOUT)

    assert kernel["results"] == FAILURE
    assert "the frame size of" in step_summary(farm, kernel, "build-kernel")
    assert pipeline.latest("kernel") == kernel_before
    assert pipeline.latest("images") == image_before


def test_an_overlay_without_extlinux_conf_fails_the_image_and_keeps_the_last_one(pipeline: Pipeline) -> None:
    farm = pipeline.farm
    image_before = pipeline.latest("images")
    images_before, overlays_before = len(farm.builds("image")), len(farm.builds("overlay"))

    def remove_extlinux_conf(clone: Path) -> None:
        (clone / "root" / "boot" / "extlinux.conf").unlink()

    pipeline.push("overlay", "overlay: no extlinux.conf", remove_extlinux_conf)
    overlay = farm.wait_for_build("overlay", overlays_before + 1, timeout=300)
    assert overlay["results"] == SUCCESS
    image = farm.wait_for_build("image", images_before + 1, timeout=IMAGE_BUILD_TIMEOUT)

    assert image["results"] == FAILURE
    assert "extlinux.conf" in step_summary(farm, image, "assemble-image")
    assert pipeline.latest("images") == image_before


def test_upstream_down_fails_the_mirror_build_and_keeps_the_published_stage3(pipeline: Pipeline) -> None:
    stage3_before = pipeline.latest("stage3")
    pipeline.upstream.go_down()
    try:
        mirror = pipeline.force("force-mirror", "mirror")
    finally:
        pipeline.upstream.come_up()

    assert mirror["results"] == FAILURE
    assert "cannot" in step_summary(pipeline.farm, mirror, "upstream-state")
    assert pipeline.latest("stage3") == stage3_before
