"""The kernel stage from source: Debian's Linux 6.1 source tarball served by a local distfile mirror.

One long test (the first build is shared): build the default config in a fresh tree; change
CONFIG_LOCALVERSION and rebuild in the kept build tree, compiling only what the change touches; a config
that does not compile fails with the compiler's error; the rebuilt kernel boots an image whose console
shows the new release. Its ccache starts from, and then fills, the test cache's shared kernel ccache,
which the pipeline tests' workers compile with: a fresh machine compiles this kernel cold once per run,
a warm one not at all.
"""

import re
import subprocess
from pathlib import Path

import pytest

from gentoo_farm.workers.toolkit import StageError
from gentoo_farm.workers.toolkit.stages.kernel import BUILD_IN_PROGRESS, BUILD_TREES, build_tree
from tests import cache, debian
from tests.imagetest import assemble, farm_worker, make_overlay, make_root, results
from tests.world.repository import manifest_line
from tests.world.server import WorldServer

DEFAULT_CONFIG = Path(__file__).parent.parent / "gentoo_farm" / "defaults" / "kernel-config" / "config"


def with_settings(config: Path, destination: Path, **settings: str) -> Path:
    """A copy of ``config`` with CONFIG_<name> lines replaced (or added)."""
    lines = config.read_text().splitlines()
    for name, value in settings.items():
        option = f"CONFIG_{name}"
        lines = [line for line in lines if not re.match(rf"(# )?{option}[= ]", line)]
        lines.append(f"{option}={value}")
    destination.write_text("\n".join(lines) + "\n")
    return destination


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_kernel_from_source_rebuilds_from_ccache_reports_compiler_errors_and_boots(tmp_path: Path) -> None:
    mirror, empty = tmp_path / "mirror", tmp_path / "empty"
    source = debian.kernel_source_tarball(mirror / "distfiles")
    empty.mkdir()
    work, ccache = tmp_path / "work", tmp_path / "ccache"
    # The run's shared kernel ccache (empty on a fresh machine: the first build compiles cold) makes the
    # first build here a fresh tree's build through ccache: every file compiled or fetched, minutes less.
    shared_ccache = cache.directory(cache.KERNEL_CCACHE)
    cache.merge_tree(shared_ccache, ccache)

    def build(config: Path, output: Path, server: WorldServer):
        # A flat mirror (no layout.conf) after one that lacks the file, as a fresh farm mirror does.
        return farm_worker(
            "kernel",
            "--mirror",
            f"{server.url}/empty",
            "--mirror",
            f"{server.url}/mirror",
            "--source-dist",
            manifest_line(source),
            "--config",
            config,
            "--output",
            output,
            "--work-dir",
            work,
            "--ccache-dir",
            ccache,
        )

    with WorldServer(tmp_path) as server:
        first = build(DEFAULT_CONFIG, tmp_path / "first.tar.zst", server)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr
        assert f"/mirror/distfiles/{source.name}" in server.requested_paths()
        first_results = results(first)
        release = str(first_results["kernel_release"])
        assert re.fullmatch(r"6\.1\.\d+-farm", release)
        assert first_results["kernel_initramfs"] is False
        names = subprocess.run(
            ["tar", "-tf", tmp_path / "first.tar.zst"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert f"boot/vmlinuz-{release}" in names and f"boot/config-{release}" in names
        assert f"lib/modules/{release}/modules.dep" in names
        assert not any(name.startswith("boot/initramfs") for name in names)

        changed = with_settings(DEFAULT_CONFIG, tmp_path / "config-farm2", LOCALVERSION='"-farm2"')
        rebuilt = build(changed, tmp_path / "farm2.tar.zst", server)
        assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr
        rebuilt_results = results(rebuilt)
        assert rebuilt_results["kernel_release"] == release + "2"
        # The work directory kept the build tree: make compiles only what the new release string
        # touches (the first build compiled, or fetched from ccache, every file).
        assert (first_results["kernel_build_tree"], rebuilt_results["kernel_build_tree"]) == ("fresh", "kept")

        def compiles(build: dict[str, object]) -> int:
            return int(str(build["kernel_ccache_hits"])) + int(str(build["kernel_ccache_misses"]))

        assert compiles(rebuilt_results) * 5 < compiles(first_results), (rebuilt_results, first_results)
        assert (
            float(rebuilt_results["kernel_build_seconds"]) < float(first_results["kernel_build_seconds"]) / 2
        )
        # The first config again, in the kept tree: the same kernel, byte for byte, as the first build's.
        again = build(DEFAULT_CONFIG, tmp_path / "again.tar.zst", server)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr
        assert results(again)["kernel_build_tree"] == "kept"

        def vmlinuz(tarball: Path) -> bytes:
            member = f"boot/vmlinuz-{release}"
            return subprocess.run(["tar", "-xOf", tarball, member], capture_output=True, check=True).stdout

        assert vmlinuz(tmp_path / "again.tar.zst") == vmlinuz(tmp_path / "first.tar.zst")
        # Once warm, this test's ccache seeds the shared one, so the pipelines' farms
        # (tests/test_pipeline.py) need not compile this source and config cold again.
        cache.merge_tree(ccache, shared_ccache)

        # -Werror with a tiny stack frame limit: gcc rejects the first real function it compiles.
        broken = with_settings(DEFAULT_CONFIG, tmp_path / "config-broken", WERROR="y", FRAME_WARN="16")
        failed = build(broken, tmp_path / "broken.tar.zst", server)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    headline = failed.stderr.splitlines()[0]
    assert headline.startswith("farm-worker kernel: error: kernel build failed: ")
    assert "error: the frame size of" in headline and "-Werror=frame-larger-than=" in failed.stderr
    assert not (tmp_path / "broken.tar.zst").exists()

    root = make_root(tmp_path)
    assembled = assemble(root, tmp_path / "farm2.tar.zst", make_overlay(tmp_path))
    assert assembled.returncode == 0, assembled.stderr
    assert "INITRD" not in (root / "boot/extlinux.conf").read_text()
    image = tmp_path / "farm2.qcow2"
    disk = farm_worker("disk", root, "--output", image)
    assert disk.returncode == 0, disk.stderr
    booted = farm_worker("boot-test", image, "--timeout", 180)
    assert booted.returncode == 0, booted.stdout[-3000:] + booted.stderr
    console = Path(str(results(booted)["boot_test_serial_log"])).read_text()
    assert f"Linux version {release}2 " in console


def test_unreachable_mirror_fails_naming_every_url_tried(tmp_path: Path) -> None:
    with WorldServer(tmp_path) as server:
        mirrors = [server.url, f"{server.url}/other"]
        server.go_down()
        process = farm_worker(
            "kernel",
            *[part for mirror in mirrors for part in ("--mirror", mirror)],
            "--source-dist",
            "DIST linux-6.1.tar.xz 134728520 BLAKE2B 1a SHA512 2b",
            "--config",
            DEFAULT_CONFIG,
            "--output",
            tmp_path / "out.tar.zst",
            "--work-dir",
            tmp_path / "work",
            "--ccache-dir",
            tmp_path / "ccache",
        )
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert "cannot fetch the kernel source linux-6.1.tar.xz: " in process.stderr
    assert all(f"{mirror}/distfiles/layout.conf: " in process.stderr for mirror in mirrors)


def test_kernel_package_in_gentoo_dist_kernel_layout(tmp_path: Path) -> None:
    """gentoo-kernel-bin's /usr/lib/modules/KVER/{vmlinuz,config}; drivers built in: no initramfs."""
    modules = tmp_path / "image" / "usr/lib/modules/6.1.99-gentoo-dist"
    (modules / "kernel/drivers/thermal").mkdir(parents=True)
    (modules / "vmlinuz").write_bytes(b"\x4d\x5a kernel image")
    (modules / "config").write_text(
        "CONFIG_MODULES=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_BLK=y\nCONFIG_EXT4_FS=y\n"
    )
    (modules / "modules.order").write_text("")
    (modules / "modules.builtin").write_text("")

    output = tmp_path / "vmlinuz.tar.gz"
    process = farm_worker("kernel-package", tmp_path / "image", "--output", output)
    assert process.returncode == 0, process.stderr
    assert results(process)["kernel_release"] == "6.1.99-gentoo-dist"
    assert results(process)["kernel_initramfs"] is False
    names = subprocess.run(["tar", "-tf", output], capture_output=True, text=True, check=True).stdout.split()
    assert names[:2] == ["boot/vmlinuz-6.1.99-gentoo-dist", "boot/config-6.1.99-gentoo-dist"]
    assert "lib/modules/6.1.99-gentoo-dist/modules.dep" in names
    assert not any(name.endswith(("/vmlinuz", "/config")) for name in names)


def _source(work: Path, digest: str) -> Path:
    source = work / "sources" / digest / "linux-6.1"
    source.mkdir(parents=True)
    return source


def test_the_build_tree_is_kept_for_the_newest_source_unless_a_build_was_interrupted(tmp_path: Path) -> None:
    work = tmp_path / "work"
    source = _source(work, "a" * 16)
    with build_tree(work, source) as (tree, reused):
        assert not reused
        (tree / "vmlinux.o").write_text("object")
    with build_tree(work, source) as (tree, reused):
        assert reused and (tree / "vmlinux.o").read_text() == "object"

    # A failed build (make finished its jobs) leaves a sound tree; an interrupted one does not.
    with pytest.raises(StageError), build_tree(work, source) as (tree, reused):
        raise StageError("kernel build failed: ...")
    with pytest.raises(KeyboardInterrupt), build_tree(work, source) as (tree, reused):
        assert reused
        (tree / "half-written.o").write_text("obj")
        raise KeyboardInterrupt
    assert (tree / BUILD_IN_PROGRESS).exists()
    with build_tree(work, source) as (tree, reused):
        assert not reused and not (tree / "vmlinux.o").exists() and not (tree / "half-written.o").exists()

    # One tree is kept: a new source's build removes the old source's tree.
    newer = _source(work, "b" * 16)
    with build_tree(work, newer) as (_, reused):
        assert not reused
    assert sorted(path.name for path in (work / BUILD_TREES).iterdir()) == [".lock", "b" * 16]

    # A second build on the same worker while the kept tree is in use builds in a tree of its own.
    with build_tree(work, newer) as (held, _), build_tree(work, newer) as (other, reused):
        assert other != held and not other.is_relative_to(work / BUILD_TREES) and not reused
    assert not other.exists()
