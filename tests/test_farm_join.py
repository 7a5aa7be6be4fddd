"""`farm init --join`: what it refuses, before it creates anything or connects to a database. A join that
succeeds needs the shared PostgreSQL: tests/test_two_masters.py makes its master B that way."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from gentoo_farm.cli import main
from tests.farmtest import farm_command, set_option


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A farm as `farm init` makes it: one master (SQLite, local store, simple queue)."""
    root = tmp_path_factory.mktemp("join") / "single"
    farm_command("init", str(root))
    return root


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _multi(single: Path, tmp_path: Path) -> Path:
    """A copy of ``single`` made multi-master, its database on a port nothing listens on."""
    root = tmp_path / "multi"
    shutil.copytree(single, root, symlinks=True)
    set_option(root, "master", "multi_master", "true")
    db_url = f"postgresql+psycopg://farm:pw@127.0.0.1:{_closed_port()}/farm?connect_timeout=5"
    set_option(root, "master", "db_url", json.dumps(db_url))
    set_option(root, "store", "type", '"s3"')
    set_option(root, "store", "bucket", '"farm"')
    with (root / "farm.toml").open("a") as farm_toml:
        farm_toml.write('\n[master.mq]\ntype = "wamp"\nrouter_url = "ws://127.0.0.1:1/ws"\n')
    return root


def _join(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["init", *args]) == 2
    return capsys.readouterr().err


def test_joining_a_single_master_farm_is_refused_naming_multi_master(
    single: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = _join(capsys, "--join", str(single), str(tmp_path / "b"))
    assert f"{single / 'farm.toml'}: master.multi_master is not true" in error
    assert not (tmp_path / "b").exists()


def test_joining_a_farm_with_a_local_store_or_sqlite_is_refused_by_the_configuration_check(
    single: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "a"
    shutil.copytree(single, source, symlinks=True)
    set_option(source, "master", "multi_master", "true")
    error = _join(capsys, "--join", str(source), str(tmp_path / "b"))
    # the messages of the configuration's multi-master check, each at its line of the source's farm.toml
    assert f"{source / 'farm.toml'}: 3 mistakes" in error
    assert 'store.type = "local" with master.multi_master = true' in error
    assert 'master.db_url = "sqlite:///state.sqlite" with master.multi_master = true' in error
    assert not (tmp_path / "b").exists()


def test_a_missing_source_or_one_that_is_no_farm_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = _join(capsys, "--join", str(tmp_path / "nowhere"), str(tmp_path / "b"))
    assert f"--join {tmp_path / 'nowhere'}: no such directory" in error
    (tmp_path / "empty").mkdir()
    error = _join(capsys, "--join", str(tmp_path / "empty"), str(tmp_path / "b"))
    assert f"--join {tmp_path / 'empty'}: not a farm directory (it has no farm.toml)" in error
    assert not (tmp_path / "b").exists()


def test_a_source_without_the_farms_secrets_is_refused(
    single: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _multi(single, tmp_path)
    shutil.rmtree(source / "secrets" / "gnupg")
    error = _join(capsys, "--join", str(source), str(tmp_path / "b"))
    assert f"{source / 'secrets' / 'gnupg'} is missing" in error
    assert not (tmp_path / "b").exists()


def test_a_target_that_already_is_a_farm_or_is_not_empty_is_refused(
    single: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _multi(single, tmp_path)
    error = _join(capsys, "--join", str(source), str(single))
    assert f"{single} already is a farm (it has farm.toml)" in error
    error = _join(capsys, "--join", str(source), str(source))
    assert f"{source} already is a farm" in error
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes").write_text("mine\n")
    error = _join(capsys, "--join", str(source), str(tmp_path / "full"))
    assert "exists and is not empty" in error
    assert [path.name for path in (tmp_path / "full").iterdir()] == ["notes"]


def test_this_masters_settings_are_checked_before_anything_is_made(
    single: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _multi(single, tmp_path)
    error = _join(capsys, "--join", str(source), "--web-address", "nowhere", str(tmp_path / "b"))
    assert "master.toml (from the options)" in error and "master.web_address" in error
    assert not (tmp_path / "b").exists()


def test_the_master_options_need_join_and_join_makes_no_admin_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = _join(capsys, "--role", "ui", str(tmp_path / "b"))
    assert "go with --join" in error
    with pytest.raises(SystemExit):
        main(["init", "--join", str(tmp_path), "--save-password", str(tmp_path / "b")])
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_join_whose_database_is_unreachable_fails_naming_it_and_leaves_nothing(
    single: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _multi(single, tmp_path)
    (tmp_path / "b").mkdir()  # an empty directory is a fine target, and stays
    error = _join(capsys, "--join", str(source), "--role", "ui", str(tmp_path / "b"))
    assert (
        "create-master could not make Buildbot's tables in the database postgresql+psycopg://farm:***@127.0.0.1"
        in error
    )
    assert "Connection refused" in error
    assert ":pw@" not in error
    assert list((tmp_path / "b").iterdir()) == []
