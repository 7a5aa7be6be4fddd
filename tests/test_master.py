"""The spine through a real master and real local workers, started by `farm init` + `farm up`."""

import json
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.farmtest import Farm, farm_command

SUCCESS, FAILURE, SKIPPED = 0, 2, 3
ATTEMPTS = 50


def test_forced_build_runs_on_a_local_worker_and_publishes_its_artifact(running_farm: Farm) -> None:
    running_farm.login()
    status, answer = running_farm.force("force-overlay", builderNames=["overlay"], reason="from a test")
    assert status == 200, answer

    build = running_farm.wait_for_build("overlay")

    assert build["results"] == SUCCESS, build["state_string"]
    properties = running_farm.properties(build)
    assert properties["reason"] == "from a test"
    key = properties["input_key"]
    assert f"overlay input key {key}" in running_farm.log(build, "input-key")
    latest = json.loads((running_farm.root / "store" / "overlay" / "latest.json").read_text())
    assert latest["input_key"] == key
    # Only an image build needs every input; with no stage3 or kernel yet, none is started.
    steps = {step["name"]: step for step in running_farm.steps(build)}
    assert steps["trigger-image"]["results"] == SKIPPED
    # The local worker was started for the build, in its own directory, and is gone afterwards.
    assert properties["workername"] == "local-1"
    deadline = time.monotonic() + 60
    while (running_farm.root / "workers" / "local-1").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (running_farm.root / "workers" / "local-1").exists()


def test_control_actions_need_a_login(running_farm: Farm) -> None:
    status, answer = running_farm.force("build-image", builderNames=["image"])
    assert status == 403, answer
    assert running_farm.api("builds")["builds"] == []
    # Looking is allowed without a login by default.
    assert sorted(b["name"] for b in running_farm.api("builders")["builders"]) == [
        "image",
        "kernel",
        "mirror",
        "overlay",
    ]


def test_wrong_password_is_refused(running_farm: Farm) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        running_farm.login(password="not-the-password")
    assert refused.value.code == 401


def test_a_flood_of_wrong_passwords_neither_stalls_the_ui_nor_gets_tried(running_farm: Farm) -> None:
    def wrong_login(_: int) -> int:
        with pytest.raises(urllib.error.HTTPError) as refused:
            running_farm.login(password="not-the-password")
        return refused.value.code

    with ThreadPoolExecutor(max_workers=ATTEMPTS) as pool:
        codes = pool.map(wrong_login, range(ATTEMPTS))
        time.sleep(0.5)  # the attempts are in; each costs a bcrypt check unless refused unchecked
        started = time.monotonic()
        running_farm.api("builders")
        answered_in = time.monotonic() - started
        assert list(codes) == [401] * ATTEMPTS
    assert answered_in < 1, f"the UI took {answered_in:.1f} s to answer during the flood"
    # Throttled: for a while not even the right password is tried from this address.
    with pytest.raises(urllib.error.HTTPError) as refused:
        running_farm.login()
    assert refused.value.code == 401
    assert "refused unchecked: 5 attempts failed" in (running_farm.root / "master" / "twistd.log").read_text()


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _wait_for_poller(farm: Farm) -> None:
    """The poller's first poll only records the head; pushes before that are not changes."""
    log = farm.root / "master" / "twistd.log"
    deadline = time.monotonic() + 60
    while "gitpoller: processing changes" not in log.read_text():
        assert time.monotonic() < deadline, "the kernel-config poller never polled"
        time.sleep(0.5)


def test_push_of_the_kernel_config_builds_the_kernel_at_that_revision(
    running_farm: Farm, tmp_path: Path
) -> None:
    _wait_for_poller(running_farm)
    clone = tmp_path / "kernel-config"
    _git("clone", "--quiet", str(running_farm.root / "kernel-config.git"), str(clone), cwd=tmp_path)
    _git("config", "user.email", "dev@example.org", cwd=clone)
    _git("config", "user.name", "A Developer", cwd=clone)

    (clone / "NOTES").write_text("only documentation\n")
    _git("add", "NOTES", cwd=clone)
    _git("commit", "--quiet", "-m", "notes", cwd=clone)
    _git("push", "--quiet", cwd=clone)
    with (clone / "config").open("a") as config:
        config.write('CONFIG_LOCALVERSION="-pushed"\n')
    _git("commit", "--quiet", "-am", "new local version", cwd=clone)
    pushed = subprocess.run(["git", "push"], cwd=clone, capture_output=True, text=True, check=True)
    revision = _git("rev-parse", "HEAD", cwd=clone)
    # What the person who pushed reads: the master heard it, and where the build shows up.
    assert (
        f"remote: gentoo-farm: the master took the notification: its kernel-config poller fetches main"
        f" ({revision[:12]}) now and starts a build if the push changes what the farm builds from;"
        f" follow it at {running_farm.url}#/builders"
    ) in pushed.stderr

    # The default deadline (300 s): 120 s was too short for push, poll and build on a loaded machine.
    build = running_farm.wait_for_build("kernel")

    properties = running_farm.properties(build)
    assert properties["got_revision"] == revision
    # This farm has no snapshot yet to vouch for a kernel source: the build says so.
    assert build["results"] == FAILURE
    (resolve_step,) = [step for step in running_farm.steps(build) if step["name"] == "resolve-snapshot"]
    assert "no portage is published yet: run the mirror builder first" in resolve_step["state_string"]
    changes = running_farm.api("changes")["changes"]
    assert {tuple(change["files"]) for change in changes} == {("NOTES",), ("config",)}
    # The documentation-only commit built nothing: one kernel build request, for the config change. The
    # scheduler takes changes in order, so a request for the earlier commit would be there already.
    requests = running_farm.api(f"buildrequests?builderid={running_farm.builder_id('kernel')}")
    assert len(requests["buildrequests"]) == 1


def test_knocking_the_poller_needs_credentials(running_farm: Farm) -> None:
    knock = urllib.request.Request(
        f"{running_farm.url}change_hook/poller?poller=kernel-config", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(knock, timeout=30)
    assert refused.value.code == 401


def test_farm_status_reports_the_running_master(running_farm: Farm) -> None:
    status = farm_command("--farm", str(running_farm.root), "status").stdout
    assert "master   running" in status
    assert "worker   local-1: idle (starts on demand)" in status


def test_consecutive_builds_each_start_a_fresh_worker_the_second_up_to_date(running_farm: Farm) -> None:
    running_farm.login()
    for number in (1, 2):
        status, answer = running_farm.force("force-overlay", builderNames=["overlay"])
        assert status == 200, answer
        build = running_farm.wait_for_build("overlay", number)
        assert build["results"] == SUCCESS, build["state_string"]
    steps = {step["name"]: step for step in running_farm.steps(build)}
    assert steps["up-to-date"]["state_string"].startswith("up-to-date: up to date: overlay")
    assert "up to date: overlay" in build["state_string"]
    assert (steps["build-overlay"]["results"], steps["build-overlay"]["hidden"]) == (SKIPPED, True)
