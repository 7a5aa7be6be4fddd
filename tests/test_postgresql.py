"""The master on PostgreSQL: a real Debian server (initdb into a temporary directory, its own port), `farm
check` naming what is wrong with the database, and `farm up` making and upgrading Buildbot's schema."""

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.farmtest import Farm, farm_command, free_port, init_farm, set_option

USER = "farm"
PASSWORD = "pg-secret-4711"
SERVER_TIMEOUT = 60


@dataclass(frozen=True)
class PostgreSQL:
    port: int

    def url(self, database: str, password: str = PASSWORD) -> str:
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname=database, autocommit=True
        )

    def create_database(self, name: str) -> str:
        with self.connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return name


def _server_bin() -> Path:
    """Debian's server binaries live in a versioned directory, off PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail(
            "PostgreSQL's server is not installed (Debian package postgresql; scripts/setup installs it)"
        )
    return found[-1].parent


@contextlib.contextmanager
def running_postgresql() -> Iterator[PostgreSQL]:
    """A PostgreSQL server of its own on 127.0.0.1 (password login), stopped and removed at the end."""
    bin_dir = _server_bin()
    # initdb and the server refuse to run as root: a root test runs them as Debian's postgres user, in a
    # directory of its own that user can enter (pytest's tmp_path is root's alone).
    as_server: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    top = Path(tempfile.mkdtemp(prefix="farm-postgresql-"))
    password_file = top / "password"
    password_file.write_text(PASSWORD + "\n")
    if as_server:
        shutil.chown(top, "postgres")
        shutil.chown(password_file, "postgres")
    data = top / "data"
    port = free_port()
    login = ["-U", USER, "--auth=scram-sha-256", "--pwfile", str(password_file)]
    subprocess.run(
        [*as_server, str(bin_dir / "initdb"), "-D", str(data), "-E", "UTF8", "--no-sync", *login],
        check=True,
        capture_output=True,
        timeout=SERVER_TIMEOUT,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {top} -c fsync=off"
    pg_ctl = [*as_server, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", str(SERVER_TIMEOUT)]
    subprocess.run(
        [*pg_ctl, "-l", str(top / "server.log"), "-o", options, "start"],
        check=True,
        capture_output=True,
        timeout=SERVER_TIMEOUT + 10,
    )
    try:
        yield PostgreSQL(port=port)
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True, timeout=SERVER_TIMEOUT + 10)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def postgresql() -> Iterator[PostgreSQL]:
    with running_postgresql() as running:
        yield running


def _tables(server: PostgreSQL, database: str) -> set[str]:
    with server.connect(database) as connection:
        rows = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {row[0] for row in rows}


def _up(farm: Farm) -> str:
    started = farm_command("--farm", str(farm.root), "up")
    return started.stdout + started.stderr


def test_farm_up_makes_buildbots_schema_in_postgresql_once_and_the_master_runs_on_it(
    tmp_path: Path, postgresql: PostgreSQL
) -> None:
    farm = init_farm(tmp_path / "farm")
    database = postgresql.create_database("farm_up")
    set_option(farm.root, "master", "db_url", f'"{postgresql.url(database)}"')
    assert _tables(postgresql, database) == set()

    first = _up(farm)
    try:
        assert "farm up: upgrading the database schema (Buildbot 4.3.0)" in first
        assert PASSWORD not in first
        assert {"builders", "builds", "buildrequests", "alembic_version"} <= _tables(postgresql, database)
        builders = {builder["name"] for builder in farm.api("builders")["builders"]}
        assert builders == {"mirror", "kernel", "overlay", "image"}
        with postgresql.connect(database) as connection:
            stored = {row[0] for row in connection.execute("SELECT name FROM builders").fetchall()}
        assert stored == builders
        assert PASSWORD not in (farm.root / "master" / "schema-stamp").read_text()
    finally:
        farm_command("--farm", str(farm.root), "down")

    # Nothing changed: the schema is current, so the second start does not run upgrade-master.
    second = _up(farm)
    farm_command("--farm", str(farm.root), "down")
    assert "upgrading the database schema" not in second
    assert "Web UI:" in second

    # Another Buildbot made the schema (as after an upgrade): upgrade-master runs again.
    stamp = farm.root / "master" / "schema-stamp"
    stamp.write_text(stamp.read_text().replace("buildbot 4.3.0", "buildbot 4.2.0"))
    third = _up(farm)
    farm_command("--farm", str(farm.root), "down")
    assert "farm up: upgrading the database schema (Buildbot 4.3.0)" in third


def _check(farm: Farm, *python_first: str) -> str:
    """`farm check`'s output; ``python_first`` runs before the command, in its process."""
    code = "; ".join(["import sys", *python_first, "from gentoo_farm.cli import main", "sys.exit(main())"])
    checked = subprocess.run(
        [sys.executable, "-c", code, "--farm", str(farm.root), "check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return checked.stdout + checked.stderr


def _database_line(output: str) -> str:
    (line,) = [line for line in output.splitlines() if " database " in line]
    return line


def test_farm_check_names_what_is_wrong_with_the_database_and_never_its_password(
    tmp_path: Path, postgresql: PostgreSQL
) -> None:
    farm = init_farm(tmp_path / "farm")
    database = postgresql.create_database("farm_check")

    set_option(farm.root, "master", "db_url", f'"{postgresql.url(database)}"')
    assert re.fullmatch(
        rf"  ok   database  PostgreSQL \d+\.\d+ at 127\.0\.0\.1:{postgresql.port}/{database} answers "
        r"and has no tables yet \(`farm up` makes them\)",
        _database_line(_check(farm)),
    )

    nobody = free_port()
    set_option(
        farm.root,
        "master",
        "db_url",
        f'"{postgresql.url(database).replace(str(postgresql.port), str(nobody))}"',
    )
    output = _check(farm)
    line = _database_line(output)
    assert line.startswith(
        f"  FAIL database  master.db_url: PostgreSQL at 127.0.0.1:{nobody}/{database} does not"
    )
    assert "Connection refused" in line
    assert PASSWORD not in output

    set_option(farm.root, "master", "db_url", f'"{postgresql.url(database, password="wrong-password-99")}"')
    output = _check(farm)
    assert "password authentication failed" in _database_line(output)
    assert "wrong-password-99" not in output

    # Without the driver installed (its import refused):
    set_option(farm.root, "master", "db_url", f'"{postgresql.url(database)}"')
    output = _check(farm, "sys.modules['psycopg'] = None")
    assert _database_line(output) == (
        "  FAIL database  master.db_url is PostgreSQL but the psycopg driver is not installed: "
        "pip install 'gentoo-farm[postgresql]' (or 'psycopg[binary]')"
    )

    # Another driver than the one the farm installs:
    set_option(
        farm.root, "master", "db_url", f'"{postgresql.url(database).replace("+psycopg", "+psycopg2")}"'
    )
    output = _check(farm)
    assert _database_line(output) == (
        f"  FAIL database  master.db_url postgresql+psycopg2://{USER}:***@127.0.0.1:{postgresql.port}/"
        f"{database} names the psycopg2 driver; the farm installs psycopg 3: write postgresql+psycopg://"
    )
    assert PASSWORD not in output
