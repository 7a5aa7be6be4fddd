"""The farm's signing key: made by `farm init`, shown and exported by `farm key`, never twice."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gentoo_farm.config import load_config, parse_config
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.master.workers import hidden_from_local_workers, workers
from gentoo_farm.signing import FarmKey, SigningError, verify_clearsigned
from gentoo_farm.store import open_store
from gentoo_farm.store.sets import digests_key, latest_set
from gentoo_farm.workers.latent.fleet import OpenStackFleet
from tests.farmtest import Farm

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


def as_admin(running: Farm, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FARM, "--farm", str(running.root), *arguments], capture_output=True, text=True, timeout=600,
        env={**os.environ, "FARM_PASSWORD": running.admin_password}, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def secret_key_lines(home: Path) -> list[str]:
    """The base64 lines of the farm's secret key as GnuPG exports it: what must never leave the master."""
    armored = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--armor", "--export-secret-keys"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [line for line in armored.splitlines() if len(line) == 64]


def test_the_signing_key_reaches_no_worker_user_data_build_property_or_log(running_farm: Farm) -> None:
    root = running_farm.root
    built = as_admin(running_farm, "build", "overlay", "--wait")
    assert built.returncode == 0, built.stdout + built.stderr
    # The master signed what the build published, so the key was in use while the build ran.
    store = open_store(load_config(root).store)
    published = latest_set(store, "overlay")
    assert published is not None
    verify_clearsigned(
        (root / "farm-signing-key.asc").read_bytes(),
        store.get_bytes(digests_key("overlay", published.set_id)),
    )
    (build,) = running_farm.builds("overlay")
    logs = as_admin(running_farm, "logs", "overlay/1")
    every_log = "".join(
        "".join(chunk["content"] for chunk in running_farm.api(f"logs/{log['logid']}/contents")["logchunks"])
        for step in running_farm.steps(build)
        for log in running_farm.api(f"steps/{step['stepid']}/logs")["logs"]
    )
    seen = {
        "logs": logs.stdout + logs.stderr + every_log,
        "properties": json.dumps(running_farm.properties(build)),
        "user-data": user_data_of_a_pool(root),
    }
    assert "PATH=" in seen["logs"]  # a step's log shows the environment its command ran in on the worker
    secret_lines = secret_key_lines(root / "secrets/gnupg")
    assert secret_lines
    for where, text in seen.items():
        assert "PRIVATE KEY" not in text and "secrets/gnupg" not in text and "GNUPGHOME" not in text, where
        assert not [line for line in secret_lines if line in text], where
    # Local workers cannot read the farm's secrets at all: the master hides them from every build.
    assert FarmDir(root).secrets in hidden_from_local_workers(load_config(root), FarmDir(root))


def user_data_of_a_pool(root: Path) -> str:
    """The user-data the master would give a VM of an OpenStack pool of this farm."""
    # a pool that installs a wheel its people host: the master's own wheels exist only after `farm up`
    pool = (
        '[[workers.openstack]]\nname = "os"\ncloud = "c"\nflavor = "f"\nimage = "farm-latest"\n'
        'install = "https://wheels.example.org/gentoo_farm-0.1.0-py3-none-any.whl"\n'
    )
    config = parse_config(f'{(root / "farm.toml").read_text()}\n{pool}network = "n"\n', root)
    (worker,) = [
        worker
        for worker in workers(config, FarmDir(root), OpenStackFleet(config.farm.id))
        if worker.name == "os-1"
    ]
    return worker.getConfigDict()["kwargs"]["settings"].bootstrap().render("os-1", "one-time-password")


@pytest.mark.skipif(Path(f"/run/user/{os.getuid()}").is_dir(), reason="GnuPG keeps its sockets in /run/user")
def test_a_farm_too_deep_for_gnupgs_agent_sockets_is_told_why(tmp_path: Path) -> None:
    home = tmp_path.joinpath(*["a-directory-name-of-some-length"] * 4) / "gnupg"
    with pytest.raises(SigningError) as refused:
        FarmKey.create(home, "farm <farm@example.org>")
    assert f"({home} is too long a path for GnuPG's agent sockets: " in str(refused.value)
    assert "move the farm to a shorter path" in str(refused.value)
