"""farm.toml mistakes: a clear message for each, naming its line and key, a non-zero exit, no traceback."""

import dataclasses
from pathlib import Path

import pytest

from gentoo_farm.config import ImageSection, StoreSection, UpstreamSection
from tests.farmtest import farm_command

VALID = """
[farm]
id = "3f0c0d1e-farm"

[master]
web_address = "127.0.0.1:8010"

[[glance]]
cloud = "home"
keep = 2
"""


def _check(tmp_path: Path, text: str) -> tuple[int, str]:
    (tmp_path / "farm.toml").write_text(text)
    result = farm_command("--farm", str(tmp_path), "check", check=False)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout + result.stderr


def test_a_valid_file_passes_and_is_summarised(tmp_path: Path) -> None:
    code, output = _check(tmp_path, VALID)
    assert code == 0, output
    assert "farm.toml: OK" in output
    assert "glance        home (private, keep 2)" in output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[master]\nweb_address = "127.0.0.1:8010"\n', "missing key farm: expected a table"),
        ("[farm]\n", "missing key farm.id: expected a string"),
        ("[farm]\nid = 7\n", "farm.id = 7: expected a string"),
        (
            '[farm]\nid = "x"\n[workers.local]\ncount = "two"\n',
            'workers.local.count = "two": expected an integer',
        ),
        ('[farm]\nid = "x"\n[schedule]\nnightly = 1\n', "schedule.nightly = 1: expected true or false"),
        ('[farm]\nid = "x"\n[store]\ntype = "ftp"\n', "store.type = \"ftp\": expected one of 'local', 's3'"),
        ('[farm]\nid = "x"\n[master]\nweb_adress = "a:1"\n', "unknown key master.web_adress"),
        ('[farm]\nid = "x"\n[mastr]\n', "unknown key mastr"),
        (
            '[farm]\nid = "x"\n[master]\nweb_address = "localhost"\n',
            'master.web_address = "localhost": expected HOST:PORT',
        ),
        ('[farm]\nid = "x"\n[schedule]\nnightly_time = "25:00"\n', "expected a time of day HH:MM"),
        ('[farm]\nid = "x"\n[[glance]]\nkeep = 1\n', "missing key glance[0].cloud"),
        ('[farm]\nid = "x"\n[[workers.openstack]]\nname = "os"\n', "missing key workers.openstack[0].cloud"),
        ("[farm\n", "not valid TOML"),
        # tomllib recurses into arrays and inline tables: deep nesting is refused like any other bad TOML.
        ("x = " + "[" * 100_000 + "]" * 100_000 + "\n", "not valid TOML: arrays or tables nested too deeply"),
        (
            "x = " + "{a = " * 100_000 + "}" * 100_000 + "\n",
            "not valid TOML: arrays or tables nested too deeply",
        ),
        # A farm.toml from before the two keys named the key file here: the message says where it goes now.
        (
            '[farm]\nid = "x"\n[upstream]\nrelease_key = "keys/gentoo-release.asc"\n',
            'upstream.release_key = "keys/gentoo-release.asc": expected a key\'s full fingerprint, 40 '
            "hexadecimal digits without spaces (the key file itself is named by upstream.keyring)",
        ),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    code, output = _check(tmp_path, text)
    assert code == 2
    assert message in output
    assert str(tmp_path / "farm.toml") in output


def test_every_mistake_is_reported_with_its_line_and_the_nearest_key(tmp_path: Path) -> None:
    text = (
        VALID
        + '\n[image]\ndisk_sise = "4G"\n'
        + '\n[[glance]]\ncloud = "work"\nkeep = 0\n'
        + '\n[store]\ndescription = """\nkeep = "not a key"\n"""\n'
    )
    code, output = _check(tmp_path, text)
    assert code == 2
    path = tmp_path / "farm.toml"
    lines = text.splitlines()
    disk_line = lines.index('disk_sise = "4G"') + 1
    keep_line = lines.index("keep = 0") + 1
    description_line = lines.index('description = """') + 1
    assert output.splitlines() == [
        f"farm check: error: {path}: 3 mistakes",
        f"{path}:{disk_line}: unknown key image.disk_sise (did you mean disk_size?); known keys here: "
        + ", ".join(sorted(field.name for field in dataclasses.fields(ImageSection))),
        f"{path}:{keep_line}: glance[1].keep = 0: "
        "expected at least 1: retention never deletes the newest set",
        f"{path}:{description_line}: unknown key store.description; known keys here: "
        + ", ".join(sorted(field.name for field in dataclasses.fields(StoreSection))),
    ]


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    result = farm_command("--farm", str(tmp_path), "check", check=False)
    assert result.returncode == 2
    assert "no such file (create a farm with `farm init DIR`)" in result.stderr


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "farm.toml").mkdir()
    result = farm_command("--farm", str(tmp_path), "check", check=False)
    assert result.returncode == 2
    assert "farm.toml: cannot read" in result.stderr


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("keep me")
    result = farm_command("init", str(tmp_path), check=False)
    assert result.returncode == 2
    assert "exists and is not empty" in result.stderr
    assert (tmp_path / "precious").read_text() == "keep me"


def test_the_architecture_comes_from_the_configured_stage3() -> None:
    upstream = UpstreamSection(stage3="stage3-arm64-desktop-systemd")
    assert (upstream.arch, upstream.variant) == ("arm64", "arm64-desktop-systemd")
    assert UpstreamSection().arch == "amd64"
