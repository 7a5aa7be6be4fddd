"""The stand-in Gentoo world is laid out, signed and served the way a Gentoo mirror does it."""

import hashlib
import http.client
import os
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import debian
from tests.world import LAYOUT_CONF, World, WorldServer, build_world, repository
from tests.world.server import CHUNK_SIZE, ServedRequest


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path / "world")


def gpgv(world: World, tmp_path: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    """gpgv against the world's keyring; its status lines (stdout) name the key that signed."""
    keyring = tmp_path / "keyring.gpg"
    if not keyring.exists():
        armored = world.keyring.read_bytes()
        dearmored = subprocess.run(["gpg", "--dearmor"], input=armored, capture_output=True)
        keyring.write_bytes(dearmored.stdout)
    return subprocess.run(
        ["gpgv", "--status-fd", "1", "--keyring", str(keyring), *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_stages_and_snapshots_are_signed_by_two_keys_like_upstream(world: World, tmp_path: Path) -> None:
    assert world.release_fingerprint != world.snapshot_fingerprint
    tarball = world.file(world.stage3_path)
    stage3 = gpgv(world, tmp_path, tarball.with_name(tarball.name + ".asc"), tarball)
    # VALIDSIG <signing subkey> ... <primary key>: a subkey signs, as Gentoo's do.
    (made_by,) = [line.split() for line in stage3.stdout.splitlines() if " VALIDSIG " in line]
    assert made_by[-1] == world.release_fingerprint != made_by[2]
    snapshot = world.file(world.snapshot_path)
    signed = gpgv(world, tmp_path, snapshot.with_name(snapshot.name + ".gpgsig"), snapshot)
    (made_by,) = [line.split() for line in signed.stdout.splitlines() if " VALIDSIG " in line]
    assert made_by[-1] == world.snapshot_fingerprint != made_by[2]


def test_stage3_release_is_published_like_gentoo(world: World, tmp_path: Path) -> None:
    pointer = world.file(world.pointer_path).read_text()
    assert pointer.startswith("-----BEGIN PGP SIGNED MESSAGE-----")
    tarball = world.file(world.stage3_path)
    assert f"\n{world.stage3_timestamp}/{world.stage3_name} {tarball.stat().st_size}\n" in pointer
    assert gpgv(world, tmp_path, world.file(world.pointer_path)).returncode == 0

    digests = tarball.with_name(tarball.name + ".DIGESTS").read_text()
    data = tarball.read_bytes()
    assert f"# BLAKE2B HASH\n{hashlib.blake2b(data).hexdigest()}  {world.stage3_name}\n" in digests
    assert f"# SHA512 HASH\n{hashlib.sha512(data).hexdigest()}  {world.stage3_name}\n" in digests
    assert gpgv(world, tmp_path, tarball.with_name(tarball.name + ".asc"), tarball).returncode == 0

    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    assert {"./etc/inittab", "./sbin/init", "./etc/local.d", "./etc/runlevels/default"} <= names


@pytest.fixture
def stage3_root(world: World, tmp_path: Path) -> Path:
    root = tmp_path / "stage3"
    root.mkdir()
    subprocess.run(["tar", "-xpf", world.file(world.stage3_path), "-C", root], check=True)
    return root


def is_elf(path: Path) -> bool:
    return path.read_bytes()[:4] == b"\x7fELF"


def in_chroot(root: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with the stage3's own /bin/sh and programs (/dev bound in for /dev/null)."""
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", 'mount --bind /dev "$0/dev" && exec chroot "$0" /bin/sh -c "$1"',
         str(root), script],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_stage3_boots_with_the_real_parts(stage3_root: Path) -> None:
    root = stage3_root
    for program in ("sbin/init", "sbin/openrc", "sbin/openrc-run", "sbin/agetty", "usr/sbin/sshd",
                    "usr/bin/ssh-keygen", "usr/sbin/useradd", "lib/x86_64-linux-gnu/libc.so.6"):  # fmt: skip
        assert is_elf(root / program), program
    inittab = (root / "etc/inittab").read_text()
    assert "\n#s0:12345:respawn:/sbin/agetty -L 9600 ttyS0 vt100\n" in inittab
    assert "\nsi::sysinit:/sbin/openrc sysinit\n" in inittab
    # Upstream OpenRC's local: scripts' output goes to /dev/null unless rc_verbose says otherwise.
    local = (root / "etc/init.d/local").read_text()
    assert local.startswith("#!/sbin/openrc-run\n")
    assert "yesno $rc_verbose || redirect='> /dev/null 2>&1'" in local
    assert 'eval "${file}" $redirect' in local
    for level, service in (("sysinit", "devfs"), ("boot", "localmount"), ("boot", "hostname"),
                           ("boot", "net.lo"), ("default", "local"), ("shutdown", "mount-ro")):  # fmt: skip
        assert (root / "etc/runlevels" / level / service).readlink() == Path(f"/etc/init.d/{service}")
    assert not (root / "etc/runlevels/default/sshd").exists()
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert (root / "etc/ssh/sshd_config").read_text().count(
        '\nInclude "/etc/ssh/sshd_config.d/*.conf"\n'
    ) == 1
    assert "\tneed net\n" in (root / "etc/init.d/sshd").read_text()
    # Like Gentoo's stage3: no DHCP client until net-misc/dhcpcd is emerged.
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin"):
        assert not {"dhcpcd", "udhcpc", "dhclient"} & {path.name for path in (root / directory).iterdir()}


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_stage3_sshd_accepts_its_config_once_it_has_host_keys(stage3_root: Path) -> None:
    checked = in_chroot(stage3_root, "mkdir -p /run/sshd && ssh-keygen -A && /usr/sbin/sshd -t && echo ok")
    assert checked.returncode == 0 and checked.stdout.endswith("ok\n"), checked.stderr
    assert (stage3_root / "etc/ssh/ssh_host_ed25519_key").is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_stage3_net_script_refuses_dhcp_without_dhcpcd(stage3_root: Path) -> None:
    started = in_chroot(
        stage3_root,
        ". /lib/rc/sh/functions.sh; RC_SVCNAME=net.eth0; . /etc/conf.d/net; . /etc/init.d/net.lo; start",
    )
    assert started.returncode == 1
    assert (
        'config_eth0="dhcp" needs a DHCP client, and /sbin/dhcpcd is not installed'
        in started.stdout + started.stderr
    )


def test_dhcpcd_package_ships_debians_real_client(world: World, tmp_path: Path) -> None:
    name = "dhcpcd-9.4.1.tar.gz"
    assert name in world.distfiles and "net-misc/dhcpcd" in world.package_set
    with tarfile.open(world.file(world.distfile_path(name))) as archive:
        archive.extractall(tmp_path / "dhcpcd", filter="tar")
    image = tmp_path / "dhcpcd/dhcpcd-9.4.1/image"
    assert is_elf(image / "sbin/dhcpcd")
    assert (image / "usr/lib/x86_64-linux-gnu/libudev.so.1").exists()
    version = subprocess.run([image / "sbin/dhcpcd", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("dhcpcd 9.4.1")


def test_a_tampered_stage3_fails_its_signature(world: World, tmp_path: Path) -> None:
    tarball = world.file(world.stage3_path)
    tarball.write_bytes(tarball.read_bytes() + b"\0")
    check = gpgv(world, tmp_path, tarball.with_name(tarball.name + ".asc"), tarball)
    assert check.returncode != 0 and "BAD signature" in check.stderr


def test_snapshot_is_a_signed_ebuild_repository(world: World, tmp_path: Path) -> None:
    snapshot = world.file(world.snapshot_path)
    assert gpgv(world, tmp_path, snapshot.with_name(snapshot.name + ".gpgsig"), snapshot).returncode == 0
    with tarfile.open(snapshot) as archive:
        archive.extractall(tmp_path / "snapshot", filter="tar")
    repo = tmp_path / "snapshot" / "portage"
    assert (repo / "profiles/repo_name").read_text() == "gentoo\n"
    assert (repo / "profiles" / world.profile / "make.defaults").is_file()
    ebuilds = sorted(repo.glob("*/*/*.ebuild"))
    assert len(ebuilds) >= 6
    assert all("EAPI=8" in ebuild.read_text() for ebuild in ebuilds)
    dependants = [ebuild for ebuild in ebuilds if 'DEPEND="dev-libs/farm-core' in ebuild.read_text()]
    assert len(dependants) >= 4

    # Every distfile a Manifest names is served, with the sizes and hashes the Manifest records.
    # (The Linux source is served only when a test adds it: build_world's extra_distfiles.)
    kernel_manifest = repo / repository.KERNEL_SOURCES_PACKAGE / "Manifest"
    source = debian.kernel_source_tarball(tmp_path / "debs")
    assert kernel_manifest.read_text() == repository.manifest_line(source)
    manifests = [path for path in sorted(repo.glob("*/*/Manifest")) if path != kernel_manifest]
    assert manifests
    for manifest in manifests:
        for line in manifest.read_text().splitlines():
            _, name, size, _, blake2b, _, sha512 = line.split()
            data = world.file(world.distfile_path(name)).read_bytes()
            assert (len(data), hashlib.blake2b(data).hexdigest(), hashlib.sha512(data).hexdigest()) == (
                int(size),
                blake2b,
                sha512,
            )
    # GLEP 75, as distfiles.gentoo.org: distfiles/<first 2 hex digits of BLAKE2B(name)>/<name>.
    assert world.file("distfiles/layout.conf").read_text() == LAYOUT_CONF
    name = world.distfiles[0]
    assert world.distfile_path(name) == f"distfiles/{hashlib.blake2b(name.encode()).hexdigest()[:2]}/{name}"
    assert not world.file(f"distfiles/{name}").exists()
    assert (repo / world.static_package).is_dir() and (repo / world.service_package).is_dir()


def test_server_serves_ranges_logs_and_fails_on_demand(world: World) -> None:
    tarball = world.file(world.stage3_path)
    with WorldServer(world.mirror_dir) as server:
        url = f"{server.url}/{world.stage3_path}"
        request = urllib.request.Request(url, headers={"Range": "bytes=100-"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 206
            assert response.read() == tarball.read_bytes()[100:]
        assert server.requests[-1].range == "bytes=100-"
        assert server.requested_paths() == [f"/{world.stage3_path}"]

        server.delay_per_chunk = 0.05
        started = time.monotonic()
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == tarball.read_bytes()
        chunks = tarball.stat().st_size // CHUNK_SIZE
        assert time.monotonic() - started >= 0.05 * chunks > 0.2
        server.delay_per_chunk = 0

        server.fail_status = 503
        with pytest.raises(urllib.error.HTTPError) as failure:
            urllib.request.urlopen(url, timeout=10)
        assert failure.value.code == 503
        server.fail_status = None

        with pytest.raises(urllib.error.HTTPError) as outside:
            urllib.request.urlopen(f"{server.url}/../gentoo-keyring.asc", timeout=10)
        assert outside.value.code == 404

        server.go_down()
        with pytest.raises(urllib.error.URLError, match="Connection refused"):
            urllib.request.urlopen(url, timeout=10)
        server.come_up()
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200


def test_a_request_is_in_the_log_once_its_answer_begins(world: World) -> None:
    with WorldServer(world.mirror_dir) as server:
        server.delay_per_chunk = 5  # the body would take minutes: the log must not wait for it
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            connection.request("GET", f"/{world.stage3_path}", headers={"Range": "bytes=10-"})
            assert connection.getresponse().status == 206
            assert server.requests == [ServedRequest("GET", f"/{world.stage3_path}", 206, "bytes=10-")]
        finally:
            connection.close()


def test_world_is_built_once_then_copied(tmp_path: Path) -> None:
    first = build_world(tmp_path / "one")
    second = build_world(tmp_path / "two", extra_distfiles=[first.keyring])
    assert first.file(first.stage3_path).read_bytes() == second.file(second.stage3_path).read_bytes()
    assert "gentoo-keyring.asc" in second.distfiles
    assert second.file(second.distfile_path("gentoo-keyring.asc")).is_file()
