"""`farm build`, `farm logs` and `farm status` against a real master, as an operator runs them."""

import argparse
import json
import os
import subprocess
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from gentoo_farm.cli import CommandError
from gentoo_farm.commands import build
from gentoo_farm.config import parse_config
from gentoo_farm.signing import FarmKey
from tests.farmtest import FARM, Farm, farm_command, init_farm, set_option


def farm(running: Farm, *arguments: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "FARM_PASSWORD": password if password is not None else running.admin_password,
    }
    return subprocess.run(
        [FARM, "--farm", str(running.root), *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_build_waits_and_prints_each_step_then_logs_and_status_show_it(running_farm: Farm) -> None:
    built = farm(running_farm, "build", "overlay", "--wait", "--reason", "from the CLI")
    assert built.returncode == 0, built.stdout + built.stderr
    lines = built.stdout.splitlines()
    assert lines[0].startswith("overlay: queued as build request ") and "(from the CLI)" in lines[0]
    assert lines[1] == "overlay build #1 started"
    assert any(line.startswith("  input-key: success") for line in lines)
    assert lines[-1].startswith("overlay build #1: success")

    logs = farm(running_farm, "logs", "overlay/1")
    assert logs.returncode == 0, logs.stderr
    assert "==> input-key / stdio" in logs.stdout
    (build,) = running_farm.builds("overlay")
    assert f"overlay input key {running_farm.properties(build)['input_key']}" in logs.stdout

    status = farm(running_farm, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["master"]["pid"] > 0
    assert report["builds"][0] == {
        "builder": "overlay", "number": 1, "result": "success", "state": build["state_string"], "step": "",
    }  # fmt: skip
    assert report["queue"] == [] and report["stranded"] == [] and report["newest_image"] is None


def test_build_force_rebuilds_what_is_up_to_date(running_farm: Farm) -> None:
    assert farm(running_farm, "build", "overlay", "--wait").returncode == 0
    unchanged = farm(running_farm, "build", "overlay", "--wait")
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert unchanged.stdout.splitlines()[-1] == "overlay build #2: up to date: nothing to build (use --force)"
    assert "skipped" not in unchanged.stdout

    forced = farm(running_farm, "build", "overlay", "--force", "--wait")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert any(
        line.startswith("  up-to-date: success") and "rebuild forced: overlay " in line
        for line in forced.stdout.splitlines()
    ), forced.stdout
    assert forced.stdout.splitlines()[-1].startswith("overlay build #3: success")
    first, _, third = running_farm.builds("overlay")
    published = [running_farm.properties(build)["publish_set_id"] for build in (first, third)]
    assert published[0] != published[1]

    refused = farm(running_farm, "build", "overlay", "--extra-packages", "app-misc/hello")
    assert refused.returncode != 0 and "apply to image builds only" in refused.stderr


def test_logs_follow_a_running_build_across_its_steps_to_its_end(running_farm: Farm) -> None:
    assert farm(running_farm, "build", "overlay").returncode == 0
    deadline = time.monotonic() + 120
    while not running_farm.builds("overlay"):
        assert time.monotonic() < deadline, "the forced overlay build did not start"
        time.sleep(0.2)

    followed = farm(running_farm, "logs", "-f", "overlay")
    assert followed.returncode == 0, followed.stdout + followed.stderr
    lines = followed.stdout.splitlines()
    assert lines[0].startswith("overlay #1: running"), "the build ended before `farm logs -f` started"
    assert lines[-1].startswith("overlay #1: success")
    headings = [line for line in lines if line.startswith("==> ")]
    assert headings[0] == "==> checkout-overlay / stdio" and "==> publish-overlay / publish" in headings
    (build,) = running_farm.builds("overlay")
    assert f"overlay input key {running_farm.properties(build)['input_key']}" in followed.stdout
    # Buildbot's header lines (argv, environment, exit code) only with --verbose.
    assert "program finished with exit code" not in followed.stdout
    verbose = farm(running_farm, "logs", "--verbose", "overlay/1")
    assert "program finished with exit code 0" in verbose.stdout


def test_logs_of_a_build_or_builder_that_does_not_exist_say_so(running_farm: Farm) -> None:
    missing = farm(running_farm, "logs", "overlay/99")
    assert missing.returncode != 0
    assert missing.stderr.strip() == "farm logs: error: no build overlay/99"
    misspelt = farm(running_farm, "logs", "imagee")
    assert misspelt.stderr.strip() == (
        "farm logs: error: no builder called 'imagee' (the builders: image, kernel, mirror, overlay)"
    )


def test_a_wrong_password_is_named_and_nothing_is_built(running_farm: Farm) -> None:
    refused = farm(running_farm, "build", "kernel", password="wrong")
    assert refused.returncode != 0
    assert "login as 'admin' refused: wrong user or password" in refused.stderr
    assert "wrong" not in refused.stderr.replace("wrong user", "")
    assert running_farm.api("builds")["builds"] == []


@pytest.fixture
def private_farm(tmp_path: Path) -> Iterator[Farm]:
    running = init_farm(tmp_path / "farm")
    set_option(running.root, "master", "anonymous_view", "false")
    farm_command("--farm", str(running.root), "up")
    try:
        yield running
    finally:
        farm_command("--farm", str(running.root), "down", check=False)


def test_status_logs_in_when_the_farm_hides_builds(private_farm: Farm) -> None:
    anonymous = farm(private_farm, "status", "--json")
    assert anonymous.returncode == 1
    assert "403" in json.loads(anonymous.stdout)["error"]
    logged_in = farm(private_farm, "status", "--json", "--user", "admin")
    assert logged_in.returncode == 0, logged_in.stdout
    assert json.loads(logged_in.stdout)["workers"][0]["name"] == "local-1"


def gpg_agents_of(home: Path) -> list[int]:
    """The gpg daemons (gpg-agent, keyboxd) running for the GnuPG home ``home``."""
    found = []
    for process in Path("/proc").iterdir():
        try:
            argv = (process / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and Path(argv[0].decode()).name in ("gpg-agent", "keyboxd") and str(home).encode() in argv:
            found.append(int(process.name))
    return found


def test_no_gpg_agent_outlives_farm_init_or_farm_down(tmp_path: Path) -> None:
    running = init_farm(tmp_path / "farm")
    home = running.root / "secrets" / "gnupg"
    assert gpg_agents_of(home) == []
    # farm check loads the master's configuration (Buildbot's checkconfig), which reads the key.
    farm_command("--farm", str(running.root), "check", check=False)
    assert gpg_agents_of(home) == []
    farm_command("--farm", str(running.root), "up")
    try:
        # What the master's binhost merge does when it signs a package: gpg starts an agent.
        assert FarmKey(home).fingerprint
        assert gpg_agents_of(home) != []
    finally:
        farm_command("--farm", str(running.root), "down")
    assert gpg_agents_of(home) == []


def test_a_saved_admin_password_is_named_by_farm_up_and_kept_true_by_farm_passwd(tmp_path: Path) -> None:
    """How the demo's user finds the first login: `farm up` says where the password is."""
    running = init_farm(tmp_path / "farm", "--save-password")
    saved = running.root / "secrets" / "admin-password"
    assert saved.read_text() == running.admin_password + "\n"
    assert saved.stat().st_mode & 0o777 == 0o600
    started = farm_command("--farm", str(running.root), "up")
    try:
        assert f"Log in as admin with the password in {saved}." in started.stdout
        running.login()
        changed = farm_command("--farm", str(running.root), "passwd", "admin")
        assert f"Saved in {saved}." in changed.stdout
        with pytest.raises(urllib.error.HTTPError):
            running.login()
        running.login(password=saved.read_text().strip())
    finally:
        farm_command("--farm", str(running.root), "down")


def test_build_worker_image_says_how_to_have_one_when_the_farm_builds_none(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    build.add_arguments(parser)
    config = parse_config('[farm]\nid = "x"\n', tmp_path)
    with pytest.raises(CommandError, match=r"this farm builds no worker image: set \[image.worker\] enabled"):
        build.run(parser.parse_args(["worker-image"]), config)


# A master that takes longer to stop than `buildbot stop` waits (10 s), as one stopping its workers on a
# loaded machine does: it removes its pid file and exits 11 s after SIGTERM, as twistd would.
SLOW_TO_STOP_MASTER = """
import os, signal, sys, time
def stop(*_):
    time.sleep(11)
    os.unlink("twistd.pid")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open("twistd.pid.new", "w").write(str(os.getpid()))
os.rename("twistd.pid.new", "twistd.pid")
while True:
    time.sleep(1)
"""


def test_farm_down_waits_for_a_master_slower_to_stop_than_buildbot_stop(tmp_path: Path) -> None:
    master = tmp_path / "master"
    master.mkdir()
    (master / "buildbot.tac").write_text("application = service.Application('buildmaster')\n")
    process = subprocess.Popen(["python3", "-c", SLOW_TO_STOP_MASTER], cwd=master)
    try:
        deadline = time.monotonic() + 30
        while not (master / "twistd.pid").exists():
            assert time.monotonic() < deadline and process.poll() is None, "the stand-in master did not start"
            time.sleep(0.05)
        (tmp_path / "farm.toml").write_text('[farm]\nid = "slow-stop"\n')
        down = farm_command("--farm", str(tmp_path), "down", check=False)
        assert down.returncode == 0, down.stdout + down.stderr
        assert f"The master (pid {process.pid}) is still stopping its workers" in down.stdout
        assert down.stdout.rstrip().endswith("The master has stopped.")
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
        process.wait()
