"""The farm's signing key: made by `farm init`, shown and exported by `farm key`, never twice."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

FARM = str(Path(sys.executable).parent / "farm")


def farm(*arguments: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FARM, *map(str, arguments)], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def farm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("signing") / "farm"
    created = farm("init", root)
    assert created.returncode == 0, created.stderr
    assert re.search(r"signing key\s+[0-9A-F]{40} ", created.stdout)
    return root


def test_init_makes_a_key_whose_public_half_is_exported(farm_dir: Path) -> None:
    fingerprint = farm("--farm", farm_dir, "key", "fingerprint")
    assert fingerprint.returncode == 0, fingerprint.stderr
    assert re.fullmatch(r"[0-9A-F]{40}\n", fingerprint.stdout)

    exported = farm("--farm", farm_dir, "key", "export")
    assert exported.stdout.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert "PRIVATE KEY" not in exported.stdout
    assert (farm_dir / "farm-signing-key.asc").read_text() == exported.stdout
    shown = subprocess.run(
        ["gpg", "--with-colons", "--show-keys"],
        input=exported.stdout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"fpr:::::::::{fingerprint.stdout.strip()}:" in shown
    assert (farm_dir / "secrets/gnupg").stat().st_mode & 0o077 == 0


def test_a_second_key_is_refused(farm_dir: Path) -> None:
    again = farm("--farm", farm_dir, "key", "create")
    assert again.returncode != 0
    assert "the farm has a key" in again.stderr


def test_only_gpkg_packages_are_signed(tmp_path: Path) -> None:
    from gentoo_farm.signing import FarmKey, SigningError

    key = FarmKey.create(tmp_path / "gnupg", "Test <t@localhost>")
    not_a_package = tmp_path / "foo-1.gpkg.tar"
    not_a_package.write_bytes(b"not a tar")
    with pytest.raises(SigningError, match=re.escape("gpkg-sign foo-1.gpkg.tar failed")):
        key.sign_gpkg(not_a_package)
    key.stop_agent()
