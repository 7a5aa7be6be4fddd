"""``farm-worker fetch-release`` and ``unpack-root`` on the stand-in world: what verifies, what fails, why."""

import hashlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gentoo_farm.workers.toolkit import StageError
from gentoo_farm.workers.toolkit.stages.fetch_release import parse_digests, parse_md5sum, parse_pointer
from tests.world import World, WorldServer, build_world, signing, write_digests
from tests.world.stages import StageRun, run_stage


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path / "world")


@pytest.fixture
def upstream(world: World) -> Iterator[WorldServer]:
    with WorldServer(world.mirror_dir) as server:
        yield server


def keys(world: World) -> list[object]:
    return [
        "--keyring",
        world.keyring,
        "--release-key",
        world.release_fingerprint,
        "--snapshot-key",
        world.snapshot_fingerprint,
    ]


def fetch(world: World, server: WorldServer, dest: Path, *extra: str) -> StageRun:
    return run_stage(
        "fetch-release",
        "--mirror",
        server.url,
        *keys(world),
        "--dest",
        dest,
        "--timeout",
        "10",
        *extra,
    )


def test_good_world_verifies_and_reports_the_release(
    world: World, upstream: WorldServer, tmp_path: Path
) -> None:
    run = fetch(world, upstream, tmp_path / "dl")

    assert run.returncode == 0, run.stderr
    stage3 = world.file(world.stage3_path).read_bytes()
    snapshot = world.file(world.snapshot_path).read_bytes()
    assert run.result == {
        "stage3_timestamp": world.stage3_timestamp,
        "stage3_file": world.stage3_name,
        "stage3_path": str(tmp_path / "dl" / world.stage3_name),
        "stage3_sha512": hashlib.sha512(stage3).hexdigest(),
        "snapshot_date": world.snapshot_date,
        "snapshot_file": world.snapshot_name,
        "snapshot_path": str(tmp_path / "dl" / world.snapshot_name),
        "snapshot_sha512": hashlib.sha512(snapshot).hexdigest(),
        "snapshot_md5": hashlib.md5(snapshot).hexdigest(),
    }
    assert (tmp_path / "dl" / world.stage3_name).read_bytes() == stage3
    assert f"{world.stage3_name}: BLAKE2B and SHA512 match" in run.stdout
    assert (
        f"{world.stage3_name}: good signature from the release key {world.release_fingerprint}" in run.stdout
    )
    assert f"portage-latest.tar.xz: good signature from the snapshot key {world.snapshot_fingerprint}" in (
        run.stdout
    )
    # The "latest" snapshot was asked for; it is kept under its real date.
    assert "/snapshots/portage-latest.tar.xz" in upstream.requested_paths()

    root = tmp_path / "root"
    unpacked = run_stage(
        "unpack-root",
        "--stage3",
        run.result["stage3_path"],
        "--snapshot",
        run.result["snapshot_path"],
        "--root",
        root,
    )
    assert unpacked.returncode == 0, unpacked.stderr
    assert (root / "sbin/init").is_file()
    assert (root / "var/db/repos/gentoo/profiles" / world.profile / "make.defaults").is_file()
    assert (root / "var/db/repos/gentoo" / world.static_package).is_dir()
    assert unpacked.result["build_root"] == str(root)

    again = run_stage(
        "unpack-root",
        "--stage3",
        run.result["stage3_path"],
        "--snapshot",
        run.result["snapshot_path"],
        "--root",
        root,
    )
    assert again.returncode == 1
    assert again.error == f"build root {root} is not empty: a build needs a fresh root"


def test_an_interrupted_download_resumes(world: World, upstream: WorldServer, tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    dest.mkdir()
    stage3 = world.file(world.stage3_path).read_bytes()
    half = len(stage3) // 2
    (dest / f"{world.stage3_name}.partial").write_bytes(stage3[:half])

    run = fetch(world, upstream, dest)

    assert run.returncode == 0, run.stderr
    assert f"{world.stage3_name}: resuming at byte {half}" in run.stdout
    ranged = [request for request in upstream.requests if request.path == f"/{world.stage3_path}"]
    assert [(request.status, request.range) for request in ranged] == [(206, f"bytes={half}-")]
    assert (dest / world.stage3_name).read_bytes() == stage3


def test_corrupt_stage3_fails_its_checksum(world: World, upstream: WorldServer, tmp_path: Path) -> None:
    tarball = world.file(world.stage3_path)
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tarball.write_bytes(bytes(data))

    run = fetch(world, upstream, tmp_path / "dl")

    assert run.returncode == 1
    assert run.error.startswith(f"{world.stage3_name}: BLAKE2B checksum mismatch (DIGESTS lists ")
    assert run.error.endswith("the file is corrupt or was tampered with")
    assert "Traceback" not in run.stderr
    assert run.result == {}


def test_stage3_signed_by_another_key_is_refused(world: World, upstream: WorldServer, tmp_path: Path) -> None:
    # An attacker's stage3 with matching DIGESTS, all signed by a key the farm does not trust.
    intruder = tmp_path / "intruder-gnupg"
    key = signing.make_signing_key(intruder, "Intruder <intruder@farm.invalid>")
    try:
        tarball = world.file(world.stage3_path)
        tarball.write_bytes(tarball.read_bytes() + b"\0")
        write_digests(intruder, tarball, key)
        signing.sign_detached(intruder, tarball, tarball.with_name(tarball.name + ".asc"), key)
    finally:
        signing.stop_agent(intruder)

    run = fetch(world, upstream, tmp_path / "dl")

    assert run.returncode == 1
    assert run.error.startswith(f"{world.stage3_name}.DIGESTS: signed by key ")
    assert run.error.endswith(f"which is not in the configured keyring {world.keyring}")


def test_snapshot_signed_by_an_unknown_key_is_refused(
    world: World, upstream: WorldServer, tmp_path: Path
) -> None:
    intruder = tmp_path / "intruder-gnupg"
    key = signing.make_signing_key(intruder, "Intruder <intruder@farm.invalid>")
    snapshot = world.file("snapshots/portage-latest.tar.xz")
    try:
        signing.sign_detached(intruder, snapshot, snapshot.with_name(snapshot.name + ".gpgsig"), key)
    finally:
        signing.stop_agent(intruder)

    run = fetch(world, upstream, tmp_path / "dl")

    assert run.returncode == 1
    # gpgv names the intruder's signing subkey, which the farm cannot trace to any primary key.
    assert re.fullmatch(
        rf"portage-latest\.tar\.xz: signed by key [0-9A-F]{{16}}, which is not in the configured keyring "
        rf"{re.escape(str(world.keyring))}",
        run.error,
    ), run.error


def test_stage3_signed_by_the_snapshot_key_is_refused(
    world: World, upstream: WorldServer, tmp_path: Path
) -> None:
    # Both keys are in the keyring; only the release key may sign a stage3.
    tarball = world.file(world.stage3_path)
    try:
        signing.sign_detached(
            world.gnupg_home, tarball, tarball.with_name(tarball.name + ".asc"), world.snapshot_fingerprint
        )
    finally:
        signing.stop_agent(world.gnupg_home)

    run = fetch(world, upstream, tmp_path / "dl")

    assert run.returncode == 1
    assert run.error == (
        f"{world.stage3_name}: signed by key {world.snapshot_fingerprint}, not by the release key "
        f"{world.release_fingerprint} that signs it upstream"
    )


@pytest.mark.parametrize("unsigned", ["pointer", "DIGESTS"])
def test_an_unsigned_pointer_or_digests_file_is_refused(
    world: World, upstream: WorldServer, tmp_path: Path, unsigned: str
) -> None:
    # The signed text alone, as an older (or a tampered) mirror might serve it.
    path = world.file(world.pointer_path if unsigned == "pointer" else world.stage3_path + ".DIGESTS")
    signed = path.read_text()
    body = signed.split("\n\n", 1)[1].split("-----BEGIN PGP SIGNATURE-----")[0]
    path.write_text(body)

    run = fetch(world, upstream, tmp_path / "dl", "--check-only")

    assert run.returncode == 1
    assert run.error.startswith(
        f"{path.name}: not signed (no OpenPGP clear signature by the release key "
        f"{world.release_fingerprint}): refusing it"
    )
    assert run.result == {}


def test_a_keyring_without_the_snapshot_key_is_a_configuration_error(
    world: World, upstream: WorldServer, tmp_path: Path
) -> None:
    # A farm.toml of before the two keys: the keyring holds only the release key.
    only_release = tmp_path / "release-only.asc"
    only_release.write_bytes(
        subprocess.run(
            ["gpg", "--homedir", str(world.gnupg_home), "--armor", "--export", world.release_fingerprint],
            capture_output=True,
            check=True,
        ).stdout
    )
    signing.stop_agent(world.gnupg_home)
    run = run_stage(
        "fetch-release",
        "--mirror",
        upstream.url,
        "--keyring",
        only_release,
        "--release-key",
        world.release_fingerprint,
        "--snapshot-key",
        world.snapshot_fingerprint,
        "--dest",
        tmp_path / "dl",
    )
    assert run.returncode == 1
    assert run.error.startswith(
        f"keyring {only_release} does not hold the snapshot key {world.snapshot_fingerprint}"
    )


def test_altered_digests_have_a_bad_signature(world: World, upstream: WorldServer, tmp_path: Path) -> None:
    digests = world.file(world.stage3_path + ".DIGESTS")
    text = digests.read_text()
    sha512 = hashlib.sha512(world.file(world.stage3_path).read_bytes()).hexdigest()
    digests.write_text(text.replace(sha512, "0" * len(sha512)))

    run = fetch(world, upstream, tmp_path / "dl")

    assert run.returncode == 1
    assert run.error == (
        f"{world.stage3_name}.DIGESTS: BAD signature (its clear signature does not match: "
        "the file was altered or corrupted)"
    )


def test_snapshot_with_a_bad_signature_is_refused(
    world: World, upstream: WorldServer, tmp_path: Path
) -> None:
    snapshot = world.file("snapshots/portage-latest.tar.xz")
    snapshot.write_bytes(snapshot.read_bytes() + b"\0")

    run = fetch(world, upstream, tmp_path / "dl")

    assert run.returncode == 1
    assert run.error.startswith(
        "portage-latest.tar.xz: BAD signature (portage-latest.tar.xz.gpgsig does not match"
    )


def test_mirror_down_names_the_url(world: World, upstream: WorldServer, tmp_path: Path) -> None:
    upstream.go_down()

    run = fetch(world, upstream, tmp_path / "dl")

    assert run.returncode == 1
    assert run.error == f"cannot download {upstream.url}/{world.pointer_path}: [Errno 111] Connection refused"


def test_mirror_answering_errors_names_the_status(
    world: World, upstream: WorldServer, tmp_path: Path
) -> None:
    upstream.fail_status = 503

    run = fetch(world, upstream, tmp_path / "dl")

    assert run.returncode == 1
    assert run.error == f"cannot download {upstream.url}/{world.pointer_path}: HTTP 503 Service Unavailable"


def test_missing_keyring_is_a_configuration_error(
    world: World, upstream: WorldServer, tmp_path: Path
) -> None:
    run = run_stage(
        "fetch-release",
        "--mirror",
        upstream.url,
        "--keyring",
        tmp_path / "nope.asc",
        "--release-key",
        world.release_fingerprint,
        "--snapshot-key",
        world.snapshot_fingerprint,
        "--dest",
        tmp_path / "dl",
    )
    assert run.returncode == 1
    assert run.error == f"keyring {tmp_path / 'nope.asc'}: no such file"


def tarballs_requested(server: WorldServer) -> list[str]:
    return [path for path in server.requested_paths() if path.endswith(".tar.xz")]


def test_check_only_learns_the_release_without_downloading_a_tarball(
    world: World, upstream: WorldServer, tmp_path: Path
) -> None:
    check = fetch(world, upstream, tmp_path / "check", "--check-only")

    assert check.returncode == 0, check.stderr
    stage3 = world.file(world.stage3_path).read_bytes()
    snapshot = world.file("snapshots/portage-latest.tar.xz").read_bytes()
    assert check.result == {
        "stage3_timestamp": world.stage3_timestamp,
        "stage3_file": world.stage3_name,
        "stage3_sha512": hashlib.sha512(stage3).hexdigest(),
        "snapshot_md5": hashlib.md5(snapshot).hexdigest(),
    }
    assert tarballs_requested(upstream) == []
    assert sorted(upstream.requested_paths()) == sorted(
        [
            f"/{world.pointer_path}",
            f"/{world.stage3_path}.DIGESTS",
            "/snapshots/portage-latest.tar.xz.md5sum",
        ]
    )
    assert sum(path.stat().st_size for path in (tmp_path / "check").iterdir()) < 16 * 1024

    # A full fetch told to expect what the check saw gets exactly that, and says the same.
    full = fetch(
        world,
        upstream,
        tmp_path / "dl",
        "--expect-stage3-sha512",
        check.result["stage3_sha512"],
        "--expect-snapshot-md5",
        check.result["snapshot_md5"],
    )
    assert full.returncode == 0, full.stderr
    assert {name: full.result[name] for name in check.result} == check.result


def test_check_only_refuses_a_pointer_with_a_bad_signature(
    world: World, upstream: WorldServer, tmp_path: Path
) -> None:
    # Someone points "latest" at an older (still validly signed) release: the pointer's signature breaks.
    pointer = world.file(world.pointer_path)
    pointer.write_text(pointer.read_text().replace(world.stage3_timestamp, "20250101T000000Z"))

    run = fetch(world, upstream, tmp_path / "check", "--check-only")

    assert run.returncode == 1
    assert run.error == (
        "latest-stage3-amd64-openrc.txt: BAD signature (its clear signature does not match: "
        "the file was altered or corrupted)"
    )
    assert run.result == {}
    assert upstream.requested_paths() == [f"/{world.pointer_path}"]


def test_check_only_with_the_mirror_down_names_the_url(
    world: World, upstream: WorldServer, tmp_path: Path
) -> None:
    upstream.go_down()

    run = fetch(world, upstream, tmp_path / "check", "--check-only")

    assert run.returncode == 1
    assert run.error == f"cannot download {upstream.url}/{world.pointer_path}: [Errno 111] Connection refused"
    assert run.result == {}


def test_check_only_without_the_snapshot_md5sum_names_the_url(
    world: World, upstream: WorldServer, tmp_path: Path
) -> None:
    world.file("snapshots/portage-latest.tar.xz.md5sum").unlink()

    run = fetch(world, upstream, tmp_path / "check", "--check-only")

    assert run.returncode == 1
    assert run.error == (
        f"cannot download {upstream.url}/snapshots/portage-latest.tar.xz.md5sum: HTTP 404 Not Found"
    )


def test_check_only_takes_no_expectations(world: World, upstream: WorldServer, tmp_path: Path) -> None:
    run = fetch(world, upstream, tmp_path / "check", "--check-only", "--expect-snapshot-md5", "0" * 32)

    assert run.returncode == 1
    assert run.error == "--check-only reports what to expect; it takes no --expect-* option"
    assert upstream.requested_paths() == []


def test_full_fetch_fails_when_the_stage3_changed_since_the_check(
    world: World, upstream: WorldServer, tmp_path: Path
) -> None:
    checked = "ab" * 64  # what an earlier check saw: another release than the one upstream has now

    run = fetch(world, upstream, tmp_path / "dl", "--expect-stage3-sha512", checked)

    assert run.returncode == 1
    now = hashlib.sha512(world.file(world.stage3_path).read_bytes()).hexdigest()
    assert run.error == (
        f"{world.stage3_name} (SHA512) changed upstream since the check (the check saw {checked[:16]}..., "
        f"the mirror now has {now[:16]}...): check again to build from the new one"
    )
    # Refused before the big download.
    assert tarballs_requested(upstream) == []


@pytest.mark.parametrize("md5sum_updated", [True, False], ids=["md5sum-updated", "during-the-download"])
def test_full_fetch_fails_when_the_snapshot_changed_since_the_check(
    world: World, upstream: WorldServer, tmp_path: Path, md5sum_updated: bool
) -> None:
    check = fetch(world, upstream, tmp_path / "check", "--check-only")
    assert check.returncode == 0, check.stderr
    # The next day's snapshot appears upstream, validly signed, between the check and the fetch.
    latest = world.file("snapshots/portage-latest.tar.xz")
    latest.write_bytes(latest.read_bytes() + b"\0")
    try:
        signing.sign_detached(
            world.gnupg_home, latest, latest.with_name(latest.name + ".gpgsig"), world.snapshot_fingerprint
        )
    finally:
        signing.stop_agent(world.gnupg_home)
    new_md5 = hashlib.md5(latest.read_bytes()).hexdigest()
    if md5sum_updated:
        latest.with_name(latest.name + ".md5sum").write_text(f"{new_md5}  {latest.name}\n")
    # else: the mirror replaced the tarball while the fetch ran, after it read the (old) .md5sum.
    upstream.clear_log()

    run = fetch(
        world,
        upstream,
        tmp_path / "dl",
        "--expect-stage3-sha512",
        check.result["stage3_sha512"],
        "--expect-snapshot-md5",
        check.result["snapshot_md5"],
    )

    assert run.returncode == 1
    assert run.error == (
        f"portage-latest.tar.xz (MD5) changed upstream since the check (the check saw "
        f"{check.result['snapshot_md5'][:16]}..., the mirror now has {new_md5[:16]}...): "
        "check again to build from the new one"
    )
    # An up-to-date .md5sum refuses before any big download; a stale one, after the snapshot's.
    downloaded = [f"/{world.stage3_path}", "/snapshots/portage-latest.tar.xz"]
    assert tarballs_requested(upstream) == ([] if md5sum_updated else downloaded)
    assert run.result == {}


def test_pointer_and_digests_formats() -> None:
    # An older, unsigned pointer; and a DIGESTS in the pre-2023 layout with extra files and algorithms.
    pointer = "# Latest as of Mon, 01 Jan 2024 00:00:04 +0000\n# ts=1704067204\n\n" + (
        "20240101T170403Z/stage3-amd64-openrc-20240101T170403Z.tar.xz 287613692\n"
    )
    assert parse_pointer(pointer, "pointer") == (
        "20240101T170403Z",
        "20240101T170403Z/stage3-amd64-openrc-20240101T170403Z.tar.xz",
    )
    with pytest.raises(
        StageError, match=re.escape("pointer: no '<timestamp>/<stage3 tarball> <size>' line found")
    ):
        parse_pointer("# nothing here\n", "pointer")

    digests = (
        "# SHA512 HASH\nabc  stage3.tar.xz\ndef  stage3.tar.xz.CONTENTS.gz\n"
        "# WHIRLPOOL HASH\n123  stage3.tar.xz\n# BLAKE2B HASH\n0FF  stage3.tar.xz\n"
    )
    assert parse_digests(digests, "stage3.tar.xz", "x.DIGESTS") == {"SHA512": "abc", "BLAKE2B": "0ff"}
    with pytest.raises(StageError, match=re.escape("x.DIGESTS: no BLAKE2B or SHA512 line for other.tar.xz")):
        parse_digests(digests, "other.tar.xz", "x.DIGESTS")

    # Gentoo's snapshot .md5sum (text mode), and the binary-mode '*' marker md5sum(1) may write.
    md5 = "D41D8CD98F00B204E9800998ECF8427E"
    assert parse_md5sum(f"{md5}  portage-latest.tar.xz\n", "portage-latest.tar.xz", "m") == md5.lower()
    assert parse_md5sum(f"{md5} *portage-latest.tar.xz\n", "portage-latest.tar.xz", "m") == md5.lower()
    with pytest.raises(StageError, match=re.escape("m: no '<md5>  portage-latest.tar.xz' line found")):
        parse_md5sum("<html>not found</html>\n", "portage-latest.tar.xz", "m")
