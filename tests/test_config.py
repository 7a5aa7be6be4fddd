"""farm.toml mistakes: a clear message for each, naming its line and key, a non-zero exit, no traceback."""

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from gentoo_farm.config import (
    CONFIG_NAME,
    WORKER_PACKAGES,
    FarmConfigError,
    ImageSection,
    StoreSection,
    UpstreamSection,
    parse_config,
)
from tests.farmtest import FARM, farm_command, init_farm, set_option
from tests.world import build_world

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
    result = farm_command("--farm", str(tmp_path), "check", "--config-only", check=False)
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
        (
            '[farm]\nid = "x"\n[upstream]\nstage3 = "stage3-arm64-openrc"\n',
            'upstream.stage3 = "stage3-arm64-openrc": the farm builds amd64 images only so far, not arm64',
        ),
        ('[farm]\nid = "x"\n[[glance]]\nkeep = 1\n', "missing key glance[0].cloud (or set OS_CLOUD)"),
        (
            '[farm]\nid = "x"\n[[workers.openstack]]\nname = "os"\n',
            "missing key workers.openstack[0].cloud (or set OS_CLOUD)",
        ),
        (
            '[farm]\nid = "x"\n[kernel]\nsettle_seconds = -1\n',
            "kernel.settle_seconds = -1: expected 0 or more seconds",
        ),
        (
            '[farm]\nid = "x"\n[kernel]\nshared_ccache = "yes"\n',
            'kernel.shared_ccache = "yes": expected true or false',
        ),
        (
            '[farm]\nid = "x"\n[image.worker]\nenabled = "yes"\n',
            "image.worker.enabled = \"yes\": expected true or false or one of 'auto'",
        ),
        ('[farm]\nid = "x"\n[image.worker]\nkeep = 0\n', "image.worker.keep = 0: expected at least 1"),
        ('[farm]\nid = "x"\n[image.worker]\npackage = []\n', "unknown key image.worker.package"),
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
def test_mistakes_are_named(tmp_path: Path, text: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OS_CLOUD", raising=False)
    code, output = _check(tmp_path, text)
    assert code == 2
    assert message in output
    assert str(tmp_path / "farm.toml") in output


OPENSTACK_WITHOUT_CLOUD = """
[farm]
id = "x"

[[workers.openstack]]
name = "os"
flavor = "m1.small"
image = "gentoo"
network = "private"

[[glance]]
keep = 2
"""


def test_an_omitted_cloud_is_os_clouds_as_for_openstacksdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OS_CLOUD", "home")
    code, output = _check(tmp_path, OPENSTACK_WITHOUT_CLOUD)
    assert code == 0, output
    assert "openstack     os: cloud home, up to 1 instances" in output
    assert "glance        home (private, keep 2)" in output

    # A cloud farm.toml names wins over OS_CLOUD.
    code, output = _check(tmp_path, OPENSTACK_WITHOUT_CLOUD.replace("keep = 2", 'keep = 2\ncloud = "work"'))
    assert code == 0, output
    assert "glance        work (private, keep 2)" in output

    # Without OS_CLOUD the message names both ways out, on the table's line.
    monkeypatch.delenv("OS_CLOUD")
    code, output = _check(tmp_path, OPENSTACK_WITHOUT_CLOUD)
    assert code == 2
    path = tmp_path / "farm.toml"
    assert f"{path}:5: missing key workers.openstack[0].cloud (or set OS_CLOUD): expected a string" in output
    assert f"{path}:11: missing key glance[0].cloud (or set OS_CLOUD): expected a string" in output


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


def test_check_reads_what_farm_toml_names_and_says_what_is_wrong(tmp_path: Path) -> None:
    farm = init_farm(tmp_path / "farm")
    world = build_world(tmp_path / "world")
    environment = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")}
    (tmp_path / "clouds.yaml").write_text(
        "clouds:\n  home:\n    auth:\n      auth_url: http://127.0.0.1:1/v3\n    regions: [RegionOne]\n"
    )
    (farm.root / "farm.toml").write_text(
        (farm.root / "farm.toml").read_text()
        + '\n[[glance]]\ncloud = "home"\n\n[[glance]]\ncloud = "work"\n'
        + '\n[[glance]]\ncloud = "home"\nregion = "Atlantis"\n'
    )

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FARM, "--farm", str(farm.root), "check"],
            capture_output=True,
            text=True,
            env=environment,
            timeout=300,
        )

    failed = check()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    lines = failed.stdout.splitlines()
    assert (
        f"  FAIL keyring   upstream.keyring {farm.root}/keys/gentoo-release.asc: no such file"
        in "\n".join(lines)
    )
    (clouds_line,) = [line for line in lines if line.startswith("  FAIL clouds ")]
    assert clouds_line.startswith("  FAIL clouds    clouds.yaml has no 'work' (named in farm.toml")
    assert "clouds.yaml's 'home' has no region 'Atlantis'" in clouds_line
    assert "  ok   recipes   kernel-config (main), overlay (main)" in lines
    assert "  ok   buildbot  Buildbot's checkconfig accepts the composed configuration" in lines
    assert failed.stderr.strip() == "2 problem(s): the farm would not work as configured"

    # The keyring must hold the very keys farm.toml names.
    set_option(farm.root, "upstream", "keyring", json.dumps(str(world.keyring)))
    wrong_key = check()
    assert "lacks release_key 13EBBDBEDE7A12775DFDB1BABB572E0E2D182910 and snapshot_key" in wrong_key.stdout
    set_option(farm.root, "upstream", "release_key", json.dumps(world.release_fingerprint))
    set_option(farm.root, "upstream", "snapshot_key", json.dumps(world.snapshot_fingerprint))
    text = (farm.root / "farm.toml").read_text()
    text = text.replace('\n[[glance]]\ncloud = "work"\n', "")
    (farm.root / "farm.toml").write_text(text.replace('region = "Atlantis"', 'region = "RegionOne"'))
    passed = check()
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert (
        "  ok   keyring" in passed.stdout
        and "  ok   clouds    clouds.yaml has home, home (region RegionOne)" in passed.stdout
    )
    assert "  ok   build ids local builds run as host ids 1879048192-1879113727, which no account uses" in (
        passed.stdout
    )

    # Local builds are root of their ids: a range holding accounts is refused, naming them.
    set_option(farm.root, "workers.local", "build_ids", "1")
    taken = check()
    assert taken.returncode == 1
    (line,) = [line for line in taken.stdout.splitlines() if line.startswith("  FAIL build ids")]
    assert "local builds run as host ids 1-65536, which user daemon (1)" in line
    assert "user nobody (65534)" in line and line.endswith("choose a range no account uses")


POOL = """
[farm]
id = "x"

[[workers.openstack]]
name = "os"
cloud = "home"
flavor = "m1.large"
network = "private"
"""


def test_the_worker_image_is_built_when_a_pool_boots_it(tmp_path: Path) -> None:
    # A pool's default image is the farm's worker image, and "auto" builds it then.
    config = parse_config(POOL, tmp_path)
    assert config.workers.openstack[0].image == "farm-worker-latest"
    assert config.image.worker.enabled == "auto"
    assert config.builds_worker_image
    # The worker image holds the cloud image's packages (sudo for admin = "sudo" too), then the worker's.
    assert config.worker_image_packages == [*config.image.emerged_packages, *WORKER_PACKAGES]
    assert config.worker_image_packages[:3] == ["net-misc/openssh", "net-misc/dhcpcd", "app-admin/sudo"]
    assert {"app-emulation/qemu", "sys-boot/syslinux", "dev-util/ccache"} <= set(config.worker_image_packages)

    # Pools that boot another image, or none at all: nothing to build unless asked.
    assert not parse_config(POOL + 'image = "farm-latest"\n', tmp_path).builds_worker_image
    assert not parse_config('[farm]\nid = "x"\n', tmp_path).builds_worker_image
    assert parse_config('[farm]\nid = "x"\n[image.worker]\nenabled = true\n', tmp_path).builds_worker_image

    # Packages named twice are emerged once.
    config = parse_config(
        '[farm]\nid = "x"\n[image]\npackages = ["net-misc/openssh", "app-misc/hello"]\n'
        '[image.worker]\npackages = ["app-misc/hello", "dev-vcs/git"]\n',
        tmp_path,
    )
    assert config.worker_image_packages == [
        "net-misc/openssh",
        "app-misc/hello",
        "app-admin/sudo",
        "dev-vcs/git",
    ]


def test_a_pool_booting_a_worker_image_the_farm_does_not_build_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FarmConfigError) as refused:
        parse_config(POOL + "\n[image.worker]\nenabled = false\n", tmp_path)
    assert str(refused.value) == (
        f'{CONFIG_NAME}:5: workers.openstack[0].image = "farm-worker-latest" with image.worker.enabled = '
        "false: the farm builds no worker image for the pool to boot; enable it or name another image"
    )
