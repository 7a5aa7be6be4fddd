"""Signed releases (issue 15): every published set gets a DIGESTS file in Gentoo's format, clear-signed with
the farm key, and so does each stable ``*-latest`` object; anyone checks them with ``gpgv``."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from gentoo_farm.catalog import find_image
from gentoo_farm.cli import CommandError
from gentoo_farm.commands import download
from gentoo_farm.config import load_config
from gentoo_farm.signing import FarmKey, key_fingerprints, verify_clearsigned
from gentoo_farm.store import ArtifactStore, StoreError, open_store
from gentoo_farm.store.sets import (
    ARTIFACT,
    SIGNING_KEY,
    ExpectedFile,
    digests_key,
    finalize_set,
    latest_key,
    new_set_id,
    publish_signing_key,
)
from gentoo_farm.workers.toolkit.stages.emerge import trusted_keyring
from tests.farmtest import farm_command
from tests.services.store import publish_files

pytest_plugins = ["tests.services.store"]


@pytest.fixture(scope="module")
def farm_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmKey]:
    key = FarmKey.create(tmp_path_factory.mktemp("farm-key") / "gnupg", "Test farm <farm@localhost>")
    yield key
    key.stop_agent()


def gpgv(keyring_armored: bytes, signed: bytes, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    """What a downloader runs: ``gpgv --keyring KEYRING FILE`` with the farm's public key."""
    keyring = tmp_path / "farm.gpg"
    subprocess.run(["gpg", "--dearmor", "--yes", "-o", str(keyring)], input=keyring_armored, check=True)
    return subprocess.run(["gpgv", "--keyring", str(keyring), "-"], input=signed, capture_output=True)


def test_a_published_set_and_its_latest_object_carry_signed_digests(
    any_store: ArtifactStore, farm_key: FarmKey, tmp_path: Path
) -> None:
    kernel = tmp_path / "vmlinuz.tar.zst"
    kernel.write_bytes(b"kernel tarball bytes" * 1000)
    config = tmp_path / "config"
    config.write_text("CONFIG_64BIT=y\n")
    publish_signing_key(any_store, farm_key.public_key())
    published = publish_files(
        any_store, "kernel", "k" * 64, {kernel.name: kernel, config.name: config},
        metadata={ARTIFACT: kernel.name}, sign=farm_key.clearsign,
    )  # fmt: skip

    public_key = any_store.get_bytes(SIGNING_KEY)
    signed = any_store.get_bytes(digests_key("kernel", published.set_id))
    assert gpgv(public_key, signed, tmp_path).returncode == 0
    text = signed.decode()
    assert text.startswith("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n")
    body = text.split("\n\n", 1)[1].split("-----BEGIN PGP SIGNATURE-----")[0]
    assert body.splitlines() == [
        "# BLAKE2B HASH",
        f"{hashlib.blake2b(config.read_bytes()).hexdigest()}  config",
        f"{hashlib.blake2b(kernel.read_bytes()).hexdigest()}  vmlinuz.tar.zst",
        "# SHA512 HASH",
        f"{hashlib.sha512(config.read_bytes()).hexdigest()}  config",
        f"{hashlib.sha512(kernel.read_bytes()).hexdigest()}  vmlinuz.tar.zst",
    ]

    stable = latest_key("kernel", kernel.name)
    stable_signed = any_store.get_bytes(f"{stable}.DIGESTS")
    assert gpgv(public_key, stable_signed, tmp_path).returncode == 0
    stable_name = stable.rsplit("/", 1)[1]
    assert f"{hashlib.sha512(kernel.read_bytes()).hexdigest()}  {stable_name}\n" in stable_signed.decode()

    # Whoever can write the store but not sign cannot change a line unnoticed.
    forged = signed.replace(b"  config", b"  config.evil")
    assert gpgv(public_key, forged, tmp_path).returncode != 0


def test_the_public_key_is_kept_at_its_stable_name(any_store: ArtifactStore, farm_key: FarmKey) -> None:
    any_store.put_bytes(SIGNING_KEY, b"someone else's key")
    publish_signing_key(any_store, farm_key.public_key())
    assert any_store.get_bytes(SIGNING_KEY).decode() == farm_key.public_key()


@pytest.fixture
def signed_image(any_settings, farm_key: FarmKey, tmp_path: Path) -> SimpleNamespace:
    """A farm's store with one image published and signed, as the image builder's publish leaves it."""
    store = open_store(any_settings)
    (tmp_path / "disk.qcow2").write_bytes(b"a bootable image" * 4096)
    publish_signing_key(store, farm_key.public_key())
    publish_files(
        store, "images", "i" * 64, {"gentoo-20261206-amd64.qcow2": tmp_path / "disk.qcow2"},
        metadata={"name": "gentoo-20261206-amd64"}, sign=farm_key.clearsign,
    )  # fmt: skip
    return SimpleNamespace(store=any_settings)


def _download(config: SimpleNamespace, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    download.add_arguments(parser)
    return download.run(parser.parse_args(argv), config)


def test_download_checks_the_signature_against_a_key_file_or_fingerprint(
    signed_image: SimpleNamespace, farm_key: FarmKey, tmp_path: Path, capsys
) -> None:
    key_file = tmp_path / "farm.asc"
    key_file.write_text(farm_key.public_key())
    for key in (str(key_file), farm_key.fingerprint):
        target = tmp_path / f"by-{len(key)}"
        assert _download(signed_image, "latest", str(target), "--key", key) == 0
        assert "sha512 verified and signed by the farm key" in capsys.readouterr().out
        digests = (target / "gentoo-20261206-amd64.qcow2.DIGESTS").read_bytes()
        assert verify_clearsigned(key_file.read_bytes(), digests).startswith("# BLAKE2B HASH\n")
    assert _download(signed_image, "latest", str(tmp_path / "unchecked")) == 0
    assert "the signature was not checked: give --key" in capsys.readouterr().out


def test_a_download_the_signature_does_not_vouch_for_is_refused_and_removed(
    signed_image: SimpleNamespace, farm_key: FarmKey, tmp_path: Path
) -> None:
    store = open_store(signed_image.store)
    record = find_image(store, "latest")
    # Someone who can write the store replaces the DIGESTS; they cannot sign it with the farm key.
    other = FarmKey.create(tmp_path / "other-gnupg", "Intruder <x@localhost>")
    try:
        forged = other.clearsign(f"# SHA512 HASH\n{record.sha512}  gentoo-20261206-amd64.qcow2\n")
        other_public, other_fingerprint = other.public_key(), other.fingerprint
    finally:
        other.stop_agent()
    store.put_bytes(digests_key("images", record.set_id), forged.encode())
    with pytest.raises(CommandError, match=r"gentoo-20261206-amd64: DIGESTS: bad signature"):
        _download(signed_image, "latest", str(tmp_path / "dl"), "--key", farm_key.fingerprint)
    assert list((tmp_path / "dl").iterdir()) == []
    # The intruder adds their key to the store's copy beside the farm's: still not the key the user named.
    store.put_bytes(SIGNING_KEY, (farm_key.public_key() + other_public).encode())
    with pytest.raises(
        CommandError, match=rf"DIGESTS: signed by {other_fingerprint}, not by {farm_key.fingerprint}"
    ):
        _download(signed_image, "latest", str(tmp_path / "dl"), "--key", farm_key.fingerprint)
    # A store whose public key is not the one the user trusts is named.
    store.put_bytes(SIGNING_KEY, other_public.encode())
    with pytest.raises(CommandError, match=rf"{SIGNING_KEY} in .* is key {other_fingerprint}, not"):
        _download(signed_image, "latest", str(tmp_path / "dl"), "--key", farm_key.fingerprint)


def test_a_corrupt_upload_is_refused_before_anything_is_signed(any_store: ArtifactStore) -> None:
    set_id = new_set_id("corrupt")
    any_store.put_bytes(f"kernel/{set_id}/vmlinuz.tar.zst", b"what arrived")
    claimed = ExpectedFile(len(b"what arrived"), hashlib.sha512(b"what was sent").hexdigest())
    signed: list[str] = []

    with pytest.raises(StoreError, match=r"vmlinuz.tar.zst in .*: sha512 .* != expected"):
        finalize_set(any_store, "kernel", set_id, "corrupt", {"vmlinuz.tar.zst": claimed}, sign=signed.append)
    assert signed == [] and any_store.head(digests_key("kernel", set_id)) is None


def publish_image(store: ArtifactStore, key: FarmKey, name: str, tmp_path: Path) -> None:
    """An image set signed by ``key``, as the master's publish leaves it."""
    disk = tmp_path / f"{name}.qcow2"
    disk.write_bytes(name.encode() * 4096)
    # Input keys are content hashes: two images' sets must not share an id (time + the key's first digits).
    input_key = hashlib.sha256(name.encode()).hexdigest()
    publish_files(store, "images", input_key, {disk.name: disk}, metadata={"name": name}, sign=key.clearsign)


def test_a_rotated_key_signs_new_images_while_the_old_key_still_vouches_for_old_ones(tmp_path: Path) -> None:
    root = tmp_path / "farm"
    farm_command("init", str(root))
    signing_home = root / "secrets/gnupg"
    store = open_store(load_config(root).store)
    old = farm_command("--farm", str(root), "key", "fingerprint").stdout.strip()
    publish_image(store, FarmKey(signing_home), "gentoo-20261206-amd64", tmp_path)

    rotated = farm_command("--farm", str(root), "key", "rotate").stdout
    new = farm_command("--farm", str(root), "key", "fingerprint").stdout.strip()
    assert new != old and f"`farm key retire {old}`" in rotated
    # Both keys are published, where downloaders and builds read them, the signing key first.
    for published in (store.get_bytes(SIGNING_KEY), (root / "farm-signing-key.asc").read_bytes()):
        assert key_fingerprints(published) == [new, old]
    publish_image(store, FarmKey(signing_home), "gentoo-20261207-amd64", tmp_path)
    for name, fingerprint in (("gentoo-20261206-amd64", old), ("gentoo-20261207-amd64", new)):
        downloaded = farm_command(
            "--farm", str(root), "download", name, str(tmp_path / name), "--key", fingerprint
        )
        assert "signed by the farm key" in downloaded.stdout
    # Each key vouches only for what it signed.
    crossed = farm_command(
        "--farm",
        str(root),
        "download",
        "gentoo-20261206-amd64",
        str(tmp_path / "x"),
        "--key",
        new,
        check=False,
    )
    assert f"signed by {old}, not by {new}" in crossed.stderr

    # Builds trust both keys during the change: the binhost still serves packages the old key signed.
    with trusted_keyring({"--binhost-key": root / "farm-signing-key.asc"}) as keyring:
        listing = subprocess.run(
            ["gpg", "--homedir", str(keyring), "--with-colons", "--list-keys"], capture_output=True, text=True
        ).stdout
    assert [line.split(":")[1] for line in listing.splitlines() if line.startswith("pub:")] == ["u", "u"]

    refused = farm_command("--farm", str(root), "key", "retire", new, check=False)
    assert refused.returncode != 0 and "is the signing key" in refused.stderr
    farm_command("--farm", str(root), "key", "retire", old)
    for published in (store.get_bytes(SIGNING_KEY), (root / "farm-signing-key.asc").read_bytes()):
        assert key_fingerprints(published) == [new]
    assert (root / "secrets/gnupg-retired" / old).is_dir()  # kept aside, never used to sign again
    FarmKey(signing_home).stop_agent()
