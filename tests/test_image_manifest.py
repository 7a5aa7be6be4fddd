"""The image manifest: every package an image holds and where it came from, and `farm diff` of two images."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from gentoo_farm.cli import CommandError
from gentoo_farm.commands import diff, images
from gentoo_farm.store import ArtifactStore, open_store
from tests.farmtest import farm_command, init_farm, set_option
from tests.services.store import publish_files
from tests.test_emerge import build_root, emerge, farm_store, upstream, world  # noqa: F401  (fixtures)
from tests.world import World, WorldServer, repository
from tests.world.stages import push_back, run_stage

pytest_plugins = ["tests.services.store"]

RELEASE = "6.1.0-farm"


def installed(
    root: Path, cpv: str, slot: str = "0", use: str = "amd64 elibc_glibc", repository: str = "gentoo"
):
    entry = root / "var/db/pkg" / cpv
    entry.mkdir(parents=True)
    (entry / "SLOT").write_text(f"{slot}\n")
    (entry / "USE").write_text(f"{use}\n")
    (entry / "repository").write_text(f"{repository}\n")


def install_kernel(root: Path) -> None:
    """What the assemble stage leaves in /boot and the manifest reads: the kernel, its link and config."""
    (root / "boot").mkdir(parents=True, exist_ok=True)
    (root / "boot" / f"vmlinuz-{RELEASE}").write_bytes(b"kernel")
    (root / "boot" / f"config-{RELEASE}").write_text("CONFIG_64BIT=y\n")
    (root / "boot/vmlinuz").symlink_to(f"vmlinuz-{RELEASE}")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An assembled root: three packages in the vdb, a kernel and its config in /boot."""
    root = tmp_path / "root"
    install_kernel(root)
    installed(root, "sys-apps/baselayout-2.15")
    installed(root, "net-misc/openssh-9.8_p1-r3", use="pam ssl")
    installed(root, "app-misc/farm-hello-1.0", repository="farm")
    return root


def manifest_of(root: Path, tmp_path: Path, *arguments: str) -> tuple[dict, list[str]]:
    written = run_stage(
        "image-manifest", root, "--json", tmp_path / "m.json", "--text", tmp_path / "m.txt", *arguments
    )
    assert written.returncode == 0, written.stderr
    return json.loads((tmp_path / "m.json").read_text()), (tmp_path / "m.txt").read_text().splitlines()


def test_every_package_is_listed_with_where_it_came_from(root: Path, tmp_path: Path) -> None:
    inputs = {"sources": {"kernels": "20261201T000000Z-k"}, "input_keys": {"kernels": "k"}}
    manifest, text = manifest_of(
        root, tmp_path, "--compiled", "app-misc/farm-hello-1.0", "--binary", "net-misc/openssh-9.8_p1-r3",
        "--inputs", json.dumps(inputs),
    )  # fmt: skip

    assert text == ["app-misc/farm-hello-1.0", "net-misc/openssh-9.8_p1-r3", "sys-apps/baselayout-2.15"]
    by_cpv = {package["cpv"]: package for package in manifest["packages"]}
    assert by_cpv["app-misc/farm-hello-1.0"] == {
        "cpv": "app-misc/farm-hello-1.0", "slot": "0", "use": "amd64 elibc_glibc", "repository": "farm",
        "origin": "compiled",
    }  # fmt: skip
    assert by_cpv["net-misc/openssh-9.8_p1-r3"]["origin"] == "farm-binhost"
    assert by_cpv["net-misc/openssh-9.8_p1-r3"]["use"] == "pam ssl"
    assert by_cpv["sys-apps/baselayout-2.15"]["origin"] == "stage3"
    assert manifest["kernel"] == {
        "release": RELEASE,
        "config_sha256": hashlib.sha256(b"CONFIG_64BIT=y\n").hexdigest(),
    }
    assert manifest["sources"] == inputs["sources"] and manifest["input_keys"] == inputs["input_keys"]


def test_a_package_from_the_upstream_binhost_is_marked_so(root: Path, tmp_path: Path) -> None:
    # What emerge reports with [packages] upstream_binhost: packages_binary, of them packages_upstream_binary.
    manifest, _ = manifest_of(
        root, tmp_path, "--binary", "net-misc/openssh-9.8_p1-r3", "app-misc/farm-hello-1.0",
        "--upstream-binary", "net-misc/openssh-9.8_p1-r3",
    )  # fmt: skip
    origins = {package["cpv"]: package["origin"] for package in manifest["packages"]}
    assert origins == {
        "app-misc/farm-hello-1.0": "farm-binhost",
        "net-misc/openssh-9.8_p1-r3": "upstream-binhost",
        "sys-apps/baselayout-2.15": "stage3",
    }


def test_a_root_without_the_kernel_config_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "boot" / f"config-{RELEASE}").unlink()
    written = run_stage("image-manifest", root, "--json", tmp_path / "m.json", "--text", tmp_path / "m.txt")
    assert written.returncode == 1
    assert f"config-{RELEASE}: missing" in written.error


def _parse(module, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def publish_two_images(settings, root: Path, tmp_path: Path, *, new_kernel: bool) -> None:
    """Two published images: the second from a newer snapshot (openssh upgraded, a package added and
    one removed, with ``new_kernel`` a new kernel)."""
    store = open_store(settings)
    old_manifest, _ = manifest_of(root, tmp_path / "old")
    newer = {
        **old_manifest,
        "packages": [
            {**package, "cpv": "net-misc/openssh-9.9_p1"}
            if package["cpv"].startswith("net-misc/")
            else package
            for package in old_manifest["packages"]
            if not package["cpv"].startswith("app-misc/")
        ]
        + [
            {
                "cpv": "net-misc/dhcpcd-10.0.6",
                "slot": "0",
                "use": "",
                "repository": "gentoo",
                "origin": "compiled",
            }
        ],
    }
    if new_kernel:
        newer["kernel"] = {"release": "6.1.1-farm", "config_sha256": "0" * 64}
    for name, manifest, day in (("old", old_manifest, "20261124"), ("new", newer, "20261125")):
        (tmp_path / f"{name}.manifest.json").write_text(json.dumps(manifest))
        publish_image(store, tmp_path, name, day, tmp_path / f"{name}.manifest.json")


def publish_image(store: ArtifactStore, work: Path, input_key: str, day: str, manifest: Path) -> None:
    """Publish an image set named for ``day`` as the image builder does, with ``manifest`` as its JSON."""
    qcow2 = work / f"{input_key}.qcow2"
    qcow2.write_bytes(input_key.encode())
    package_count = len(json.loads(manifest.read_text())["packages"])
    publish_files(
        store,
        "images",
        input_key,
        {f"gentoo-{day}-amd64.qcow2": qcow2, f"gentoo-{day}-amd64.manifest.json": manifest},
        metadata={"name": f"gentoo-{day}-amd64", "package_count": package_count},
        set_id=f"{day}T000000Z-{input_key}",
    )


@pytest.fixture
def two_images(any_settings, root: Path, tmp_path: Path) -> SimpleNamespace:
    publish_two_images(any_settings, root, tmp_path, new_kernel=True)
    return SimpleNamespace(store=any_settings)


def test_farm_diff_shows_upgraded_added_removed_and_the_kernel(two_images, capsys) -> None:
    assert diff.run(_parse(diff, "gentoo-20261124-amd64", "latest"), two_images) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "--- gentoo-20261124-amd64",
        "+++ gentoo-20261125-amd64",
        "kernel: 6.1.0-farm -> 6.1.1-farm",
        "upgraded: net-misc/openssh 9.8_p1-r3 -> 9.9_p1",
        "added: net-misc/dhcpcd-10.0.6",
        "removed: app-misc/farm-hello-1.0",
    ]


def test_images_json_carries_the_package_count_and_manifest_link(two_images, capsys) -> None:
    assert images.run(_parse(images, "--json"), two_images) == 0
    newest = json.loads(capsys.readouterr().out)[0]
    assert newest["package_count"] == 3
    assert newest["package_manifest_url"].split("?")[0].endswith("gentoo-20261125-amd64.manifest.json")


def test_farm_diff_of_an_unknown_image_names_it(two_images) -> None:
    with pytest.raises(CommandError, match="no published image called 'gentoo-1999'"):
        diff.run(_parse(diff, "gentoo-1999"), two_images)


def farm_on(settings, farm_dir: Path) -> Path:
    """A farm directory whose store is ``settings``' local store, for the `farm` CLI."""
    farm = init_farm(farm_dir)
    set_option(farm.root, "store", "path", json.dumps(str(settings.path)))
    set_option(farm.root, "store", "public_url", json.dumps(settings.public_url))
    return farm.root


def test_farm_diff_of_images_with_the_same_kernel_and_of_one_name(
    local_settings, root: Path, tmp_path: Path
) -> None:
    """The common case, a package or overlay change, through the real CLI."""
    publish_two_images(local_settings, root, tmp_path, new_kernel=False)
    farm = SimpleNamespace(root=farm_on(local_settings, tmp_path / "farm"))

    for names in (["gentoo-20261124-amd64", "gentoo-20261125-amd64"], ["gentoo-20261124-amd64"]):
        shown = farm_command("--farm", str(farm.root), "diff", *names)
        assert shown.stdout.splitlines() == [
            "--- gentoo-20261124-amd64",
            "+++ gentoo-20261125-amd64",
            "upgraded: net-misc/openssh 9.8_p1-r3 -> 9.9_p1",
            "added: net-misc/dhcpcd-10.0.6",
            "removed: app-misc/farm-hello-1.0",
        ], shown.stderr
    same = farm_command("--farm", str(farm.root), "diff", "latest")
    assert same.stdout.splitlines()[-1] == "no package or kernel changed"


def snapshot_with_revision(snapshot: Path, atom: str, work: Path) -> Path:
    """``snapshot`` with ``atom`` bumped to its -r1, repacked in ``work`` as the next day's snapshot.

    A revision bump keeps the distfile and its Manifest line (they name ${P}, without the revision).
    """
    subprocess.run(["tar", "-xJf", snapshot, "-C", work], check=True, timeout=120)
    package_dir = work / "portage" / atom
    (ebuild,) = package_dir.glob("*.ebuild")
    shutil.copyfile(ebuild, ebuild.with_name(ebuild.name.replace(".ebuild", "-r1.ebuild")))
    ebuild.unlink()
    newer = work / "portage-20261125.tar.xz"
    subprocess.run(["tar", "-cJf", newer, "-C", work, "portage"], check=True, timeout=120)
    return newer


@pytest.mark.slow
def test_farm_diff_of_images_built_from_two_snapshots_shows_the_upgrade(
    world: World,  # noqa: F811
    upstream: WorldServer,  # noqa: F811
    farm_store: WorldServer,  # noqa: F811
    local_settings,
    tmp_path: Path,
) -> None:
    """Real emerges from the world's snapshot, then from a newer one with farm-hello at -r1: the second
    build takes farm-core from the binhost the first filled and compiles only the upgraded package."""
    upgraded = repository.STATIC_PACKAGE
    (tmp_path / "newer").mkdir()
    snapshots = {
        "20261124": world.file(world.snapshot_path),
        "20261125": snapshot_with_revision(world.file(world.snapshot_path), upgraded, tmp_path / "newer"),
    }
    manifests = {}
    for day, snapshot in snapshots.items():
        root = build_root(world, tmp_path / f"root-{day}", snapshot)
        emerged = emerge(world, root, tmp_path / f"emerge-{day}", farm_store, upstream, upgraded)
        assert emerged.returncode == 0, emerged.stdout[-3000:] + emerged.stderr
        # What the image build's push-back does: the next build finds these on the farm binhost.
        work, store = tmp_path / f"emerge-{day}", farm_store.directory
        push_back(work / "pkgs", work / "distfiles", store / "binpkgs", store / "distfiles")
        install_kernel(root)
        manifests[day] = tmp_path / f"{day}.manifest.json"
        # As the image builder runs the stage: the emerge's report says what it compiled and what it took.
        written = run_stage(
            "image-manifest", root, "--json", manifests[day], "--text", tmp_path / f"{day}.manifest",
            "--compiled", *emerged.result["packages_compiled"],
            "--binary", *emerged.result["packages_binary"],
        )  # fmt: skip
        assert written.returncode == 0, written.stderr
        publish_image(open_store(local_settings), tmp_path, day, day, manifests[day])

    origins = {
        day: {package["cpv"]: package["origin"] for package in json.loads(path.read_text())["packages"]}
        for day, path in manifests.items()
    }
    assert origins["20261124"]["app-misc/farm-hello-1.0"] == "compiled"
    assert origins["20261124"]["dev-libs/farm-core-1.0"] == "compiled"
    assert origins["20261125"]["app-misc/farm-hello-1.0-r1"] == "compiled"
    assert origins["20261125"]["dev-libs/farm-core-1.0"] == "farm-binhost"
    shown = farm_command(
        "--farm", str(farm_on(local_settings, tmp_path / "farm")), "diff", "gentoo-20261124-amd64", "latest"
    )
    assert shown.stdout.splitlines() == [
        "--- gentoo-20261124-amd64",
        "+++ gentoo-20261125-amd64",
        "upgraded: app-misc/farm-hello 1.0 -> 1.0-r1",
    ], shown.stderr
