"""The mirror builder in a real farm (`farm init` + `farm up`, a local worker) against the stand-in world:
a first build fetches, verifies and publishes; a second one with nothing new upstream reads only the
small signed pointer, DIGESTS and .md5sum and ends up to date; a new snapshot upstream is fetched again;
with upstream down the build fails at the check and the published sets stay."""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from buildbot.process.results import FAILURE, SKIPPED, SUCCESS

from gentoo_farm.config import load_config
from gentoo_farm.store import open_store
from gentoo_farm.store.sets import PublishedSet, latest_set
from tests.farmtest import Farm, configure_for_world, farm_command, init_farm
from tests.world import World, WorldServer, build_world, signing

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BUILD_TIMEOUT = 300


@dataclass
class MirrorFarm:
    farm: Farm
    world: World
    upstream: WorldServer

    def build(self) -> dict:
        number = len(self.farm.builds("mirror")) + 1
        status, answer = self.farm.force("force-mirror", builderNames=["mirror"])
        assert status == 200, answer
        return self.farm.wait_for_build("mirror", number, timeout=BUILD_TIMEOUT)

    def latest(self, kind: str) -> PublishedSet:
        published = latest_set(open_store(load_config(self.farm.root).store), kind)
        assert published is not None, f"no {kind} set published"
        return published

    def tarballs_requested(self) -> list[str]:
        return sorted(path for path in self.upstream.requested_paths() if path.endswith(".tar.xz"))


@pytest.fixture
def mirror_farm(tmp_path: Path) -> Iterator[MirrorFarm]:
    world = build_world(tmp_path / "world")
    with WorldServer(world.mirror_dir) as upstream:
        farm = init_farm(tmp_path / "farm")
        # The kernel builder is not run here; it only needs a source name to be configured.
        configure_for_world(farm, world, upstream.url, "linux-6.1.tar.xz")
        farm_command("--farm", str(farm.root), "up")
        try:
            farm.login()
            yield MirrorFarm(farm, world, upstream)
        finally:
            farm_command("--farm", str(farm.root), "down", check=False)


def ran(farm: Farm, build: dict) -> dict[str, int]:
    """The steps a build ran (not skipped), in order, with their results."""
    return {
        step["name"]: step["results"]
        for step in farm.steps(build)
        if step["started_at"] and step["results"] != SKIPPED
    }


def test_unchanged_upstream_is_up_to_date_without_downloading_a_tarball(mirror_farm: MirrorFarm) -> None:
    world, farm = mirror_farm.world, mirror_farm.farm
    first = mirror_farm.build()

    assert first["results"] == SUCCESS, first["state_string"]
    assert mirror_farm.tarballs_requested() == sorted(
        [f"/{world.stage3_path}", "/snapshots/portage-latest.tar.xz"]
    )
    steps = list(ran(farm, first))
    assert steps.index("upstream-state") < steps.index("input-key") < steps.index("up-to-date")
    assert steps.index("up-to-date") < steps.index("fetch-release") < steps.index("publish-stage3")
    stage3, portage = mirror_farm.latest("stage3"), mirror_farm.latest("portage")
    properties = farm.properties(first)
    assert stage3.input_key == portage.input_key == properties["input_key"]
    # What was published is what upstream signed.
    assert (
        stage3.file(world.stage3_name).sha512
        == hashlib.sha512(world.file(world.stage3_path).read_bytes()).hexdigest()
    )
    assert (
        portage.file(world.snapshot_name).sha512
        == hashlib.sha512(world.file(world.snapshot_path).read_bytes()).hexdigest()
    )

    mirror_farm.upstream.clear_log()
    second = mirror_farm.build()

    assert second["results"] == SUCCESS, second["state_string"]
    assert mirror_farm.tarballs_requested() == []
    assert sorted(mirror_farm.upstream.requested_paths()) == sorted(
        [f"/{world.pointer_path}", f"/{world.stage3_path}.DIGESTS", "/snapshots/portage-latest.tar.xz.md5sum"]
    )
    steps_run = ran(farm, second)
    assert steps_run["up-to-date"] == SUCCESS
    assert "fetch-release" not in steps_run
    assert "up to date: portage" in second["state_string"]
    # What the first build did after the check, the second skipped, out of sight.
    first_steps = list(ran(farm, first))
    after_check = first_steps[first_steps.index("up-to-date") + 1 :]
    skipped = {step["name"]: step for step in farm.steps(second) if step["name"] in after_check}
    assert set(skipped) == set(after_check)
    assert all(step["results"] == SKIPPED and step["hidden"] for step in skipped.values()), skipped
    assert farm.properties(second)["input_key"] == stage3.input_key
    assert mirror_farm.latest("portage").set_id == portage.set_id

    # The next day's snapshot appears upstream: the check sees it, and the build fetches and publishes it.
    latest = world.file("snapshots/portage-latest.tar.xz")
    latest.write_bytes(latest.read_bytes() + b"\0")
    try:
        signing.sign_detached(
            world.gnupg_home, latest, latest.with_name(latest.name + ".gpgsig"), world.snapshot_fingerprint
        )
    finally:
        signing.stop_agent(world.gnupg_home)
    latest.with_name(latest.name + ".md5sum").write_text(
        f"{hashlib.md5(latest.read_bytes()).hexdigest()}  {latest.name}\n"
    )
    mirror_farm.upstream.clear_log()
    third = mirror_farm.build()

    assert third["results"] == SUCCESS, third["state_string"]
    assert "/snapshots/portage-latest.tar.xz" in mirror_farm.tarballs_requested()
    renewed = mirror_farm.latest("portage")
    assert renewed.set_id != portage.set_id
    assert renewed.input_key == farm.properties(third)["input_key"] != portage.input_key
    assert renewed.file(world.snapshot_name).sha512 == hashlib.sha512(latest.read_bytes()).hexdigest()

    # Upstream unreachable: the check fails, saying why, and what was published stays.
    mirror_farm.upstream.go_down()
    try:
        unreachable = mirror_farm.build()
    finally:
        mirror_farm.upstream.come_up()

    assert unreachable["results"] == FAILURE
    (check,) = [step for step in farm.steps(unreachable) if step["name"] == "upstream-state"]
    assert check["state_string"] == (
        f"upstream-state: cannot download {mirror_farm.upstream.url}/{world.pointer_path}: "
        "[Errno 111] Connection refused"
    )
    assert "fetch-release" not in ran(farm, unreachable)
    assert mirror_farm.latest("portage").set_id == renewed.set_id
