"""``farm-worker emerge --upstream-binhost``: the stage3's own binhost (Gentoo's, here the world's stand-in)
is set aside ("off"), or used for what the farm binhost lacks ("fallback") with every package's signature
checked against the upstream keyring."""

import hashlib
import io
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gentoo_farm.config import FarmConfigError, parse_config
from gentoo_farm.master.factories.image import UPSTREAM_BINHOST_KEYRING, factory
from tests.test_emerge import build_root
from tests.test_emerge import emerge as emerge_stage
from tests.world import World, WorldServer, build_world
from tests.world.stages import StageRun
from tests.world.upstream_binhost import (
    STAGE3_BINREPO,
    UPSTREAM_BINHOST_PATH,
    UPSTREAM_ONLY_FILE,
    UPSTREAM_ONLY_MESSAGE,
    UPSTREAM_ONLY_PACKAGE,
    UPSTREAM_ONLY_VERSION,
    point_stage3_binrepo,
)

UPSTREAM_ONLY_CPV = f"{UPSTREAM_ONLY_PACKAGE}-{UPSTREAM_ONLY_VERSION}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("upstream-binhost") / "world")


@pytest.fixture
def upstream(world: World) -> Iterator[WorldServer]:
    with WorldServer(world.mirror_dir) as server:
        yield server


@pytest.fixture
def farm_store(tmp_path: Path) -> Iterator[WorldServer]:
    """An empty farm binhost: whatever the build installs from a binhost comes from upstream."""
    (tmp_path / "store/binpkgs").mkdir(parents=True)
    (tmp_path / "store/distfiles").mkdir()
    with WorldServer(tmp_path / "store") as server:
        yield server


def stage3_root(world: World, upstream: WorldServer, root: Path) -> Path:
    """An unpacked world stage3 whose gentoobinhost.conf names the served world mirror."""
    build_root(world, root)
    point_stage3_binrepo(root, upstream.url)
    return root


def emerge(
    world: World, root: Path, work: Path, farm: WorldServer, upstream: WorldServer, *options: str
) -> StageRun:
    return emerge_stage(world, root, work, farm, upstream, *options, UPSTREAM_ONLY_PACKAGE)


def upstream_binhost_requests(upstream: WorldServer) -> list[str]:
    return [path for path in upstream.requested_paths() if path.startswith(f"/{UPSTREAM_BINHOST_PATH}")]


def test_off_fetches_nothing_from_the_upstream_binhost(
    world: World, upstream: WorldServer, farm_store: WorldServer, tmp_path: Path
) -> None:
    root = stage3_root(world, upstream, tmp_path / "root")
    entry = (root / STAGE3_BINREPO).read_text()
    run = emerge(world, root, tmp_path / "work", farm_store, upstream)
    # Only the upstream binhost has the package, and "off" (the default) does not look there.
    assert run.returncode == 1
    assert f'there are no ebuilds to satisfy "{UPSTREAM_ONLY_PACKAGE}"' in run.stdout
    assert upstream_binhost_requests(upstream) == []
    assert any(path.startswith("/binpkgs/Packages") for path in farm_store.requested_paths())
    assert (root / STAGE3_BINREPO).read_text() == entry


def test_fallback_installs_a_signed_package_only_the_upstream_binhost_has(
    world: World, upstream: WorldServer, farm_store: WorldServer, tmp_path: Path
) -> None:
    root = stage3_root(world, upstream, tmp_path / "root")
    entry = (root / STAGE3_BINREPO).read_text()
    run = emerge(
        world, root, tmp_path / "work", farm_store, upstream,
        "--upstream-binhost", "fallback", "--upstream-binhost-key", str(world.keyring),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    assert (root / UPSTREAM_ONLY_FILE).read_text() == UPSTREAM_ONLY_MESSAGE + "\n"
    assert run.result["packages_binary"] == [UPSTREAM_ONLY_CPV]
    assert run.result["packages_upstream_binary"] == [UPSTREAM_ONLY_CPV]
    assert run.result["packages_compiled"] == []
    requested = upstream_binhost_requests(upstream)
    assert any(path.startswith(f"/{UPSTREAM_BINHOST_PATH}/Packages") for path in requested)
    assert f"/{UPSTREAM_BINHOST_PATH}/app-misc/upstream-only/upstream-only-1.0-1.gpkg.tar" in requested
    assert "used after the farm binhost" in run.stdout
    # The image keeps the stage3's entry as it was, and nothing of the build's own.
    assert (root / STAGE3_BINREPO).read_text() == entry
    assert sorted(path.name for path in (root / STAGE3_BINREPO).parent.iterdir()) == ["gentoobinhost.conf"]


@pytest.mark.parametrize(("policy", "from_upstream"), [("fallback", False), ("first", True)])
def test_the_policy_decides_which_binhost_a_package_both_have_comes_from(
    world: World,
    upstream: WorldServer,
    farm_store: WorldServer,
    tmp_path: Path,
    policy: str,
    from_upstream: bool,
) -> None:
    shutil.copytree(world.upstream_binhost_dir, farm_store.directory / "binpkgs", dirs_exist_ok=True)
    root = stage3_root(world, upstream, tmp_path / "root")
    run = emerge(
        world, root, tmp_path / "work", farm_store, upstream,
        "--upstream-binhost", policy, "--upstream-binhost-key", str(world.keyring),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    assert run.result["packages_binary"] == [UPSTREAM_ONLY_CPV]
    assert run.result["packages_upstream_binary"] == ([UPSTREAM_ONLY_CPV] if from_upstream else [])
    package = "app-misc/upstream-only/upstream-only-1.0-1.gpkg.tar"
    assert (f"/{UPSTREAM_BINHOST_PATH}/{package}" in upstream.requested_paths()) == from_upstream
    assert (f"/binpkgs/{package}" in farm_store.requested_paths()) != from_upstream


def test_upstream_binhost_needs_its_key(
    world: World, upstream: WorldServer, farm_store: WorldServer, tmp_path: Path
) -> None:
    root = stage3_root(world, upstream, tmp_path / "root")
    run = emerge(world, root, tmp_path / "work", farm_store, upstream, "--upstream-binhost", "first")
    assert run.returncode == 1
    assert run.error == (
        "--upstream-binhost first needs --upstream-binhost-key: "
        "the upstream binhost's packages are used only with their signatures checked"
    )
    assert upstream_binhost_requests(upstream) == []


def tamper_with_package(binhost: Path) -> None:
    """Change the package's files inside its gpkg (its signed Manifest no longer matches them) and fix
    up the binhost's index, as someone who can write the binhost but not sign would."""
    (package,) = binhost.rglob("*.gpkg.tar")
    members = []
    with tarfile.open(package) as original:
        for member in original.getmembers():
            data = original.extractfile(member).read() if member.isfile() else b""
            if member.name.endswith("/image.tar.zst"):
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
            members.append((member, data))
    with tarfile.open(package, "w", format=tarfile.USTAR_FORMAT) as tampered:
        for member, data in members:
            tampered.addfile(member, io.BytesIO(data) if member.isfile() else None)
    content = package.read_bytes()
    fixed = {
        "SIZE": str(len(content)),
        "SHA1": hashlib.sha1(content).hexdigest(),
        "MD5": hashlib.md5(content).hexdigest(),
        "BLAKE2B": hashlib.blake2b(content).hexdigest(),
        "MTIME": str(int(package.stat().st_mtime)),
    }
    index = binhost / "Packages"
    lines = [
        f"{key}: {fixed[key]}" if (key := line.partition(":")[0]) in fixed else line
        for line in index.read_text().splitlines()
    ]
    index.write_text("\n".join(lines) + "\n")
    (binhost / "Packages.gz").unlink(missing_ok=True)


def test_a_tampered_upstream_package_is_refused(
    tmp_path: Path, upstream_tampered: tuple[World, WorldServer], farm_store: WorldServer
) -> None:
    world, upstream = upstream_tampered
    root = stage3_root(world, upstream, tmp_path / "root")
    run = emerge(
        world, root, tmp_path / "work", farm_store, upstream,
        "--upstream-binhost", "fallback", "--upstream-binhost-key", str(world.keyring),
    )  # fmt: skip
    assert run.returncode == 1
    assert not (root / UPSTREAM_ONLY_FILE).exists()
    assert run.error == (
        f"emerge {UPSTREAM_ONLY_PACKAGE}: the binary package upstream-only-1.0-1.gpkg.tar was refused: "
        "its signature does not verify (GnuPG verification failed) (see the log above)"
    )
    assert "BAD signature" in run.stdout


@pytest.fixture
def upstream_tampered(tmp_path: Path) -> Iterator[tuple[World, WorldServer]]:
    world = build_world(tmp_path / "tampered-world")
    tamper_with_package(world.upstream_binhost_dir)
    with WorldServer(world.mirror_dir) as server:
        yield world, server


def image_factory_steps(tmp_path: Path, packages_table: str) -> dict[str, dict[str, object]]:
    """The image factory's steps by name (their class's when they have none), with their arguments."""
    config = parse_config(f'[farm]\nid = "test"\n{packages_table}', tmp_path)
    steps = {}
    for step in factory(config).steps:
        steps[step.kwargs.get("name") or step.step_class.__name__] = step.kwargs
    return steps


def test_the_image_factory_passes_the_policy_and_gentoos_keyring(tmp_path: Path) -> None:
    steps = image_factory_steps(tmp_path, '[packages]\nupstream_binhost = "fallback"\n')
    assert steps["upstream-binhost-keyring"]["mastersrc"] == str(tmp_path / "keys/gentoo-release.asc")
    assert steps["upstream-binhost-keyring"]["workerdest"] == UPSTREAM_BINHOST_KEYRING
    assert steps["EmergePackages"]["upstream_binhost"] == "fallback"
    assert steps["EmergePackages"]["upstream_binhost_key"] == UPSTREAM_BINHOST_KEYRING
    assert "upstream_binary" in steps["WriteImageManifest"]


def test_the_default_is_off_and_needs_no_keyring(tmp_path: Path) -> None:
    steps = image_factory_steps(tmp_path, "")
    assert "upstream-binhost-keyring" not in steps
    assert steps["EmergePackages"]["upstream_binhost"] == "off"
    assert steps["EmergePackages"]["upstream_binhost_key"] is None


def test_an_unknown_policy_is_named(tmp_path: Path) -> None:
    with pytest.raises(FarmConfigError) as raised:
        parse_config('[farm]\nid = "test"\n[packages]\nupstream_binhost = "sometimes"\n', tmp_path)
    assert str(raised.value) == (
        "farm.toml:4: packages.upstream_binhost = \"sometimes\": expected one of 'off', 'fallback', 'first'"
    )
