"""Hostile tarballs, packages, overlays and kernel configs: every stage refuses them clearly, and nothing
outside the temporary root changes.

Each unpacker the farm runs (unpack-root's stage3 and snapshot, assemble's vmlinuz and vmoverride
tarballs, kernel-package's package) gets the same hostile members; the overlay and assemble stages
get an overlay whose links point out of the image.
"""

import argparse
import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gentoo_farm.workers.toolkit import StageError
from gentoo_farm.workers.toolkit.confined import resolve
from gentoo_farm.workers.toolkit.portage_env import select_profile
from gentoo_farm.workers.toolkit.stages.emerge import FARM_BINREPO, write_binrepo
from tests.imagetest import DEFAULT_OVERLAY, assemble, farm_worker, make_root
from tests.world.stages import StageRun, run_stage

RELEASE = "6.1.0-test"
# What a stage run left: farm_worker's process or run_stage's StageRun (both have returncode, stderr).
Outcome = subprocess.CompletedProcess[str] | StageRun


@dataclass(frozen=True)
class Member:
    name: str
    kind: bytes = tarfile.REGTYPE
    linkname: str = ""
    data: bytes = b"hostile\n"


def write_tarball(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as archive:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.kind
            info.linkname = member.linkname
            info.mode = 0o644
            if member.kind == tarfile.REGTYPE:
                info.size = len(member.data)
                archive.addfile(info, io.BytesIO(member.data))
            else:
                if member.kind == tarfile.CHRTYPE:
                    info.devmajor, info.devminor = 1, 3
                archive.addfile(info)
    return path


class Outside:
    """A directory beside the build root, holding files a hostile input aims at."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        (path / "file").write_text("the worker's own file\n")
        (path / "shadow").write_text("root:$6$worker-secret:19000:0:::::\n")
        self.before = self.state()

    def state(self) -> dict[str, str]:
        return {
            str(item.relative_to(self.path)): hashlib.sha256(item.read_bytes()).hexdigest()
            if item.is_file() and not item.is_symlink()
            else "dir"
            for item in sorted(self.path.rglob("*"))
        }

    def assert_unchanged(self) -> None:
        assert self.state() == self.before


@pytest.fixture
def outside(tmp_path: Path) -> Outside:
    return Outside(tmp_path / "outside")


# The hostile members (relative to what the tarball unpacks to) and the reason the error gives.
def hostile_cases(outside: Path) -> dict[str, tuple[list[Member], str]]:
    return {
        "absolute name": ([Member(f"{outside}/planted")], "the name is an absolute path"),
        "dot-dot": ([Member("../../../../../../outside/planted")], "the name contains '..'"),
        "symlink out": (
            [Member("escape", tarfile.SYMTYPE, "../../../../../../../../" + str(outside).lstrip("/"))],
            "leaves the root",
        ),
        "hard link out": (
            [Member("linked", tarfile.LNKTYPE, str(outside / "file"))],
            "is an absolute path",
        ),
        "device node": ([Member("dev/null", tarfile.CHRTYPE)], "a character device"),
        "fifo": ([Member("run/pipe", tarfile.FIFOTYPE)], "a FIFO"),
        "write through a symlink": (
            [Member("etc", tarfile.SYMTYPE, str(outside)), Member("etc/file")],
            "is reached through a link: /etc is a link to",
        ),
    }


CASES = list(hostile_cases(Path("/x")))


def kernel_tarball(tmp_path: Path) -> Path:
    return write_tarball(
        tmp_path / "vmlinuz.tar.gz",
        [Member(f"boot/vmlinuz-{RELEASE}", data=b"kernel"), Member(f"boot/config-{RELEASE}", data=b"X=y\n")],
    )


def overlay_tarball(tmp_path: Path) -> Path:
    output = tmp_path / "vmoverride.tar.gz"
    process = farm_worker("overlay", DEFAULT_OVERLAY, "--output", output)
    assert process.returncode == 0, process.stderr
    return output


def minimal_stage3(tmp_path: Path) -> Path:
    return write_tarball(
        tmp_path / "stage3.tar.gz", [Member("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n")]
    )


def unpack_stage3(tmp_path: Path, members: list[Member]) -> tuple[str, Outcome]:
    stage3 = write_tarball(tmp_path / "stage3-hostile.tar.gz", members)
    snapshot = write_tarball(tmp_path / "snapshot.tar.gz", [Member("portage/profiles/repo_name")])
    process = run_stage(
        "unpack-root", "--stage3", stage3, "--snapshot", snapshot, "--root", tmp_path / "root"
    )
    return str(stage3), process


def in_snapshot(name: str) -> str:
    """The member name under a snapshot's top directory (an absolute name stays absolute)."""
    return name if name.startswith("/") else f"portage/{name}"


def unpack_snapshot(tmp_path: Path, members: list[Member]) -> tuple[str, Outcome]:
    snapshot = write_tarball(
        tmp_path / "snapshot-hostile.tar.gz",
        [Member(in_snapshot(member.name), member.kind, member.linkname, member.data) for member in members],
    )
    process = run_stage(
        "unpack-root",
        "--stage3",
        minimal_stage3(tmp_path),
        "--snapshot",
        snapshot,
        "--root",
        tmp_path / "root",
    )
    return str(snapshot), process


def assemble_vmlinuz(tmp_path: Path, members: list[Member]) -> tuple[str, Outcome]:
    kernel = write_tarball(tmp_path / "vmlinuz-hostile.tar.gz", members)
    return str(kernel), assemble(make_root(tmp_path), kernel, overlay_tarball(tmp_path))


def assemble_vmoverride(tmp_path: Path, members: list[Member]) -> tuple[str, Outcome]:
    overlay = write_tarball(tmp_path / "vmoverride-hostile.tar.gz", members)
    return str(overlay), assemble(make_root(tmp_path), kernel_tarball(tmp_path), overlay)


def kernel_package(tmp_path: Path, members: list[Member]) -> tuple[str, Outcome]:
    package = write_tarball(tmp_path / "kernel-hostile.tar.gz", members)
    return str(package), run_stage("kernel-package", package, "--output", tmp_path / "vmlinuz.tar.zst")


UNPACKERS: dict[str, Callable[[Path, list[Member]], tuple[str, Outcome]]] = {
    "stage3": unpack_stage3,
    "snapshot": unpack_snapshot,
    "vmlinuz": assemble_vmlinuz,
    "vmoverride": assemble_vmoverride,
    "kernel package": kernel_package,
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("unpacker", list(UNPACKERS))
def test_every_unpacker_refuses_a_hostile_member_naming_it_and_why(
    tmp_path: Path, outside: Outside, unpacker: str, case: str
) -> None:
    members, reason = hostile_cases(outside.path)[case]
    tarball, process = UNPACKERS[unpacker](tmp_path, members)

    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    hostile = in_snapshot(members[-1].name) if unpacker == "snapshot" else members[-1].name
    assert f"{tarball}: member {hostile!r}: " in process.stderr and reason in process.stderr
    outside.assert_unchanged()
    assert not list(tmp_path.glob("**/planted"))


def test_links_inside_the_image_are_fine_and_a_stage3_link_cannot_redirect_the_repository(
    tmp_path: Path, outside: Outside
) -> None:
    stage3 = write_tarball(
        tmp_path / "stage3.tar.gz",
        [
            Member("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
            Member("usr/lib/os-release", data=b"ID=gentoo\n"),
            # Absolute and relative links within the image, as a stage3 has them.
            Member("etc/os-release", tarfile.SYMTYPE, "../usr/lib/os-release"),
            Member("etc/localtime", tarfile.SYMTYPE, "/usr/share/zoneinfo/UTC"),
            # On the worker this would put the Portage tree into the outside directory.
            Member("var/db/repos", tarfile.SYMTYPE, str(outside.path)),
        ],
    )
    snapshot = write_tarball(
        tmp_path / "snapshot.tar.gz", [Member("portage/profiles/repo_name", data=b"gentoo\n")]
    )
    root = tmp_path / "root"

    process = run_stage("unpack-root", "--stage3", stage3, "--snapshot", snapshot, "--root", root)

    assert process.returncode == 0, process.stderr
    assert (root / "etc/os-release").read_text() == "ID=gentoo\n"
    repository = root / str(outside.path).lstrip("/") / "gentoo"
    assert (repository / "profiles/repo_name").read_text() == "gentoo\n"
    assert process.result["repository"] == str(repository)
    outside.assert_unchanged()


def write_overlay(tmp_path: Path, toml: str, tree: Callable[[Path], object] | None = None) -> Path:
    overlay = tmp_path / "hostile-overlay"
    (overlay / "root/boot").mkdir(parents=True)
    (overlay / "root/boot/extlinux.conf").write_text(
        f"DEFAULT gentoo\nLABEL gentoo\n  LINUX /boot/vmlinuz-{RELEASE}\n"
    )
    (overlay / "overlay.toml").write_text(toml)
    if tree is not None:
        tree(overlay / "root")
    return overlay


def test_overlay_links_out_of_the_image_are_refused_when_the_overlay_is_built(tmp_path: Path) -> None:
    toml = '[symlinks]\n"etc/escape" = "../../../../../../../../tmp"\n'
    built = farm_worker("overlay", write_overlay(tmp_path, toml), "--output", tmp_path / "o.tar.gz")
    assert built.returncode == 1
    assert "member 'etc/escape': symlink to '../../../../../../../../tmp' leaves the root" in built.stderr

    def tree_link(tree: Path) -> None:
        (tree / "etc").mkdir()
        (tree / "etc/escape").symlink_to("../../../..")

    built = farm_worker(
        "overlay", write_overlay(tmp_path / "b", "", tree_link), "--output", tmp_path / "b.tar.gz"
    )
    assert built.returncode == 1
    assert "member 'etc/escape': symlink to '../../../..' leaves the root" in built.stderr
    assert not (tmp_path / "o.tar.gz").exists() and not (tmp_path / "b.tar.gz").exists()


def test_a_password_edit_through_an_overlay_link_never_reaches_the_worker(
    tmp_path: Path, outside: Outside
) -> None:
    # The overlay may link etc/shadow anywhere: inside the image that is a path of the image.
    toml = f'[symlinks]\n"etc/shadow" = "{outside.path / "shadow"}"\n\n[passwords]\nroot = ""\n'
    overlay = tmp_path / "vmoverride.tar.gz"
    built = farm_worker("overlay", write_overlay(tmp_path, toml), "--output", overlay)
    assert built.returncode == 0, built.stderr
    root = make_root(tmp_path)

    process = assemble(root, kernel_tarball(tmp_path), overlay)

    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert f"{overlay}: edits /etc/shadow, but the root has no {root / 'etc/shadow'}" in process.stderr
    outside.assert_unchanged()


def test_the_overlay_cannot_write_through_a_link_the_image_has(tmp_path: Path, outside: Outside) -> None:
    root = make_root(tmp_path)
    (root / "opt/data").symlink_to(outside.path)
    overlay = tmp_path / "vmoverride.tar.gz"
    source = write_overlay(tmp_path, "", lambda tree: (tree / "opt/data").mkdir(parents=True))
    (source / "root/opt/data/planted").write_text("hostile\n")
    assert farm_worker("overlay", source, "--output", overlay).returncode == 0

    process = assemble(root, kernel_tarball(tmp_path), overlay)

    assert process.returncode == 1
    assert f"{overlay}: member 'opt/data/planted': the member is reached through a link" in process.stderr
    outside.assert_unchanged()


def test_the_cloud_user_is_added_without_running_any_program_of_the_image(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    # An overlay (or a package) may replace useradd; assemble runs as root on the worker.
    useradd = root / "usr/sbin/useradd"
    useradd.write_text("#!/bin/sh\necho ran > /useradd-ran\nexit 0\n")
    (root / "etc/skel/.config").mkdir()
    (root / "etc/skel/.config/app").write_text("setting\n")
    (root / "etc/skel/.link").symlink_to("/etc/shadow")

    process = assemble(root, kernel_tarball(tmp_path), overlay_tarball(tmp_path))

    assert process.returncode == 0, process.stderr
    assert not (root / "useradd-ran").exists()
    passwd = (root / "etc/passwd").read_text().splitlines()
    # The shell is the image's /etc/default/useradd SHELL (the stand-in's says /bin/sh).
    assert "ec2-user:x:1000:1000::/home/ec2-user:/bin/sh" in passwd
    group = (root / "etc/group").read_text()
    assert "wheel:x:10:root,ec2-user\n" in group and "users:x:100:ec2-user\n" in group
    assert "ec2-user:x:1000:\n" in group
    assert any(line.startswith("ec2-user:*:") for line in (root / "etc/shadow").read_text().splitlines())
    home = root / "home/ec2-user"
    assert (home / ".profile").is_file() and (home / ".config/app").read_text() == "setting\n"
    assert (home / ".link").readlink() == Path("/etc/shadow")
    assert (home.stat().st_uid, home.stat().st_gid) == (1000, 1000)
    assert os.lstat(home / ".config/app").st_uid == 1000


def test_a_kernel_package_linking_to_a_worker_file_is_refused(tmp_path: Path, outside: Outside) -> None:
    package = tmp_path / "package"
    (package / "boot").mkdir(parents=True)
    (package / f"lib/modules/{RELEASE}").mkdir(parents=True)
    (package / f"boot/vmlinuz-{RELEASE}").symlink_to(outside.path / "file")
    (package / f"boot/config-{RELEASE}").write_text("CONFIG_X=y\n")
    output = tmp_path / "vmlinuz.tar.zst"

    process = run_stage("kernel-package", package, "--output", output)

    assert process.returncode == 1
    resolved = str(outside.path / "file")
    assert (
        f"{package}: boot/vmlinuz-{RELEASE} is not a file inside the package (it resolves to {resolved})"
        in (process.error)
    )
    assert not output.exists()


def test_a_kernel_config_with_an_initramfs_source_is_refused(tmp_path: Path, outside: Outside) -> None:
    config = tmp_path / "config"
    config.write_text(f'CONFIG_BLK_DEV_INITRD=y\nCONFIG_INITRAMFS_SOURCE="{outside.path}"\n')
    process = run_stage(
        "kernel",
        "--mirror",
        "http://127.0.0.1:9",
        "--source-dist",
        f"DIST linux-6.1.tar.xz 1 BLAKE2B {'0' * 128} SHA512 {'0' * 128}",
        "--config",
        config,
        "--output",
        tmp_path / "vmlinuz.tar.zst",
        "--work-dir",
        tmp_path / "work",
        "--ccache-dir",
        tmp_path / "ccache",
    )
    assert process.returncode == 1
    assert (
        f'{config}: CONFIG_INITRAMFS_SOURCE="{outside.path}" would build files of the worker' in process.error
    )
    assert not (tmp_path / "work").exists()


def test_resolve_follows_links_as_a_chroot_would(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib").symlink_to("/usr/lib")
    (root / "up").symlink_to("../../../../..")
    (root / "loop").symlink_to("/loop")
    assert resolve(root, "/lib/modules") == root / "usr/lib/modules"
    assert resolve(root, "../../etc/shadow") == root / "etc/shadow"
    assert resolve(root, "up/etc") == root / "etc"
    assert resolve(root, "lib", follow_last=False) == root / "lib"
    with pytest.raises(StageError, match="more than 40 symbolic links"):
        resolve(root, "loop/x")


def test_a_directory_where_the_kernel_link_goes_fails_clearly(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "boot/vmlinuz").mkdir()
    process = assemble(root, kernel_tarball(tmp_path), overlay_tarball(tmp_path))
    assert process.returncode == 1
    assert (
        f"{root}: /boot/vmlinuz is a directory; it must be free for the link to the kernel" in process.stderr
    )


def test_emerge_writes_its_portage_config_inside_the_root(tmp_path: Path, outside: Outside) -> None:
    root = tmp_path / "root"
    profiles = root / "var/db/repos/gentoo/profiles/default/linux/amd64"
    profiles.mkdir(parents=True)
    (root / "etc").mkdir()
    # A stage3 whose /etc/portage is an absolute link: on the worker that is the outside directory.
    (root / "etc/portage").symlink_to(outside.path)
    args = argparse.Namespace(binhost="http://binhost/", workdir=tmp_path / "work", binhost_key=None)

    entry = write_binrepo(root, args)

    assert entry == root / str(outside.path).lstrip("/") / "binrepos.conf" / FARM_BINREPO
    assert select_profile(root, "default/linux/amd64") == profiles
    assert (root / str(outside.path).lstrip("/") / "make.profile").is_symlink()
    outside.assert_unchanged()
