"""``farm-worker emerge`` with real Portage: cold from source, then warm from the farm binhost and mirror."""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.world import World, WorldServer, build_world, repository
from tests.world.stages import StageRun, push_back, run_stage

ALL_PACKAGES = {
    "dev-libs/farm-core-1.0",
    *(f"dev-libs/farm-synth{index}-1.0" for index in range(1, 5)),
    "app-misc/farm-hello-1.0",
    "app-misc/farm-motd-1.0",
    "app-misc/farm-tools-1.0",
    "net-misc/dhcpcd-9.4.1",
    f"{repository.SUDO_PACKAGE}-{repository.SUDO_VERSION}",
}


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path / "world")


@pytest.fixture
def upstream(world: World) -> Iterator[WorldServer]:
    with WorldServer(world.mirror_dir) as server:
        yield server


@pytest.fixture
def farm_store(tmp_path: Path) -> Iterator[WorldServer]:
    """The farm's binhost and distfile mirror as the store serves them (empty until a build pushes back)."""
    store = tmp_path / "store"
    (store / "binpkgs").mkdir(parents=True)
    (store / "distfiles").mkdir()
    with WorldServer(store) as server:
        yield server


def build_root(world: World, root: Path, snapshot: Path | None = None) -> Path:
    """A fresh build root from the world's stage3 and its snapshot (or another ``snapshot``)."""
    unpacked = run_stage(
        "unpack-root",
        "--stage3",
        world.file(world.stage3_path),
        "--snapshot",
        snapshot or world.file(world.snapshot_path),
        "--root",
        root,
    )
    assert unpacked.returncode == 0, unpacked.stderr
    return root


def emerge(
    world: World, root: Path, work: Path, farm: WorldServer, upstream: WorldServer, *arguments: str
) -> StageRun:
    """The emerge stage through ``farm`` and ``upstream``: ``arguments`` are further options and the atoms
    (default: the world's package set)."""
    return run_stage(
        "emerge",
        "--root", root, "--pkgdir", work / "pkgs", "--distdir", work / "distfiles",
        "--workdir", work / "scratch",
        "--profile", world.profile, "--binhost", f"{farm.url}/binpkgs", "--distfile-mirror", farm.url,
        "--upstream-mirror", upstream.url, "--jobs", "2",
        *(arguments or world.package_set),
        log=work.parent / f"{work.name}.log",
    )  # fmt: skip


def assert_image_content(world: World, root: Path, selected: tuple[str, ...]) -> None:
    hello = root / world.static_binary.lstrip("/")
    assert (
        subprocess.run([hello], capture_output=True, text=True, check=True).stdout
        == world.hello_message + "\n"
    )
    # Static: no program interpreter (ld.so) to load, so it runs on the busybox image as it is.
    headers = subprocess.run(
        ["readelf", "--program-headers", hello], capture_output=True, text=True, check=True
    )
    assert "LOAD" in headers.stdout and "INTERP" not in headers.stdout
    assert (root / "etc/local.d/50-farm-hello.start").read_text().endswith("/usr/bin/farm-hello\n")
    assert (root / "etc/init.d" / world.service_name).read_text().startswith("#!/sbin/openrc-run\n")
    # Portage recorded the set as the image's selected packages, and the farm binhost entry is gone again.
    assert set((root / "var/lib/portage/world").read_text().split()) == set(selected)
    assert not (root / "etc/portage/binrepos.conf/farm-binhost.conf").exists()


@pytest.mark.slow
def test_cold_build_fills_binhost_then_warm_build_compiles_nothing(
    world: World, upstream: WorldServer, farm_store: WorldServer, tmp_path: Path
) -> None:
    cold_root = build_root(world, tmp_path / "cold-root")
    # What an image build emerges: [image] packages, and sudo for [image] admin = "sudo".
    farm_set = (*world.package_set, repository.SUDO_PACKAGE)
    cold = emerge(world, cold_root, tmp_path / "cold", farm_store, upstream, *farm_set)

    assert cold.returncode == 0, cold.stdout[-3000:] + cold.stderr
    assert set(cold.result["packages_compiled"]) == ALL_PACKAGES
    assert cold.result["packages_binary"] == []
    assert cold.result["distfiles_fetched"] == world.distfiles_of(ALL_PACKAGES)
    upstream_distfiles = {path for path in upstream.requested_paths() if path.startswith("/distfiles/")}
    # Portage read the mirror's layout.conf: every distfile came from its GLEP 75 path.
    fetched = world.distfiles_of(ALL_PACKAGES)
    assert {f"/{world.distfile_path(name)}" for name in fetched} <= upstream_distfiles
    built = sorted(path.name for path in (tmp_path / "cold/pkgs").rglob("*.gpkg.tar"))
    assert len(built) == len(ALL_PACKAGES)
    assert (tmp_path / "cold/pkgs/Packages").is_file()
    assert_image_content(world, cold_root, farm_set)

    store = farm_store.directory
    push_back(tmp_path / "cold/pkgs", tmp_path / "cold/distfiles", store / "binpkgs", store / "distfiles")
    upstream.clear_log()
    farm_store.clear_log()

    warm_root = build_root(world, tmp_path / "warm-root")
    warm = emerge(world, warm_root, tmp_path / "warm", farm_store, upstream, *farm_set)

    assert warm.returncode == 0, warm.stdout[-3000:] + warm.stderr
    assert warm.result["packages_compiled"] == []
    assert set(warm.result["packages_binary"]) == ALL_PACKAGES
    assert ">>> Compiling source" not in warm.stdout
    assert warm.result["distfiles_fetched"] == []
    assert [path for path in upstream.requested_paths() if path.startswith("/distfiles/")] == []
    assert any(path.startswith("/binpkgs/Packages") for path in farm_store.requested_paths())
    assert not any((tmp_path / "warm/pkgs").rglob("*.gpkg.tar")), "nothing new was built, so nothing to push"
    assert_image_content(world, warm_root, farm_set)


def test_dhcpcd_gives_the_image_a_real_dhcp_client(
    world: World, upstream: WorldServer, farm_store: WorldServer, tmp_path: Path
) -> None:
    root = build_root(world, tmp_path / "root")
    assert not (root / "sbin/dhcpcd").exists()
    run = emerge(world, root, tmp_path / "work", farm_store, upstream, "net-misc/dhcpcd")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    assert (root / "sbin/dhcpcd").read_bytes()[:4] == b"\x7fELF"
    assert "dhcpcd:x:997:997:" in (root / "etc/passwd").read_text()
    version = subprocess.run(["chroot", root, "/sbin/dhcpcd", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("dhcpcd 9.4.1"), version.stderr


def test_sudo_is_emerged_setuid_and_its_pam_service_works_in_the_stage3(
    world: World, upstream: WorldServer, farm_store: WorldServer, tmp_path: Path
) -> None:
    # What [image] admin = "sudo" adds to every image: Debian's sudo, which needs the stage3's PAM.
    root = build_root(world, tmp_path / "root")
    run = emerge(world, root, tmp_path / "work", farm_store, upstream, "app-admin/sudo")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    assert (root / "usr/bin/sudo").stat().st_mode & 0o7777 == 0o4111
    # The inner sudo, setuid root, runs as the user: for root it goes through PAM's stacks and runs id;
    # nobody, whom sudoers grants nothing, is refused without a password.
    for user, expected in (("root", "0"), ("nobody", "")):
        ran = subprocess.run(
            ["chroot", root, "/usr/bin/sudo", "-n", "-u", user, "/usr/bin/sudo", "-n", "id", "-u"],
            capture_output=True,
            text=True,
        )
        assert ran.stdout.strip() == expected, ran.stderr
    assert "a password is required" in ran.stderr


def test_the_stage3s_own_binhost_is_not_used_and_stays_in_the_image(
    world: World, upstream: WorldServer, farm_store: WorldServer, tmp_path: Path
) -> None:
    root = build_root(world, tmp_path / "root")
    (tmp_path / "gentoo-binhost").mkdir()
    with WorldServer(tmp_path / "gentoo-binhost") as gentoo_binhost:
        # What a real stage3 ships: Gentoo's official binhost, here one that logs every request.
        entry = root / "etc/portage/binrepos.conf/gentoobinhost.conf"
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text(f"[gentoobinhost]\npriority = 1\nsync-uri = {gentoo_binhost.url}/x86-64\n")
        run = emerge(world, root, tmp_path / "work", farm_store, upstream, "net-misc/dhcpcd")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr
        assert gentoo_binhost.requested_paths() == []
    assert any(path.startswith("/binpkgs/Packages") for path in farm_store.requested_paths())
    assert "the build uses the farm binhost only; set aside until it ends: gentoobinhost.conf" in run.stdout
    assert entry.read_text().startswith("[gentoobinhost]")
    assert sorted(path.name for path in entry.parent.iterdir()) == ["gentoobinhost.conf"]


def test_unknown_package_fails_with_portage_reason(
    world: World, upstream: WorldServer, tmp_path: Path
) -> None:
    root = build_root(world, tmp_path / "root")
    run = run_stage(
        "emerge", "--root", root, "--pkgdir", tmp_path / "pkgs", "--distdir", tmp_path / "distfiles",
        "--workdir", tmp_path / "scratch", "--profile", world.profile, "--upstream-mirror", upstream.url,
        "app-misc/no-such-package",
    )  # fmt: skip
    assert run.returncode == 1
    assert run.error == "emerge app-misc/no-such-package: emerge exited with status 1 (see the log above)"
    assert 'emerge: there are no ebuilds to satisfy "app-misc/no-such-package"' in run.stdout


def test_unknown_profile_is_named(world: World, tmp_path: Path) -> None:
    root = build_root(world, tmp_path / "root")
    run = run_stage(
        "emerge", "--root", root, "--pkgdir", tmp_path / "pkgs", "--distdir", tmp_path / "distfiles",
        "--workdir", tmp_path / "scratch", "--profile", "default/linux/riscv", "app-misc/farm-hello",
    )  # fmt: skip
    assert run.returncode == 1
    profiles = root / "var/db/repos/gentoo/profiles"
    assert run.error == f"profile default/linux/riscv: no such directory {profiles}/default/linux/riscv"
