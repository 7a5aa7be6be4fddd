"""Several masters on Buildbot's own multi-master engine: the settings (farm.toml shared, master.toml per
host), what they make of BuildmasterConfig, and which OpenStack servers a master's reaper deletes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openstack
import pytest
from buildbot.config.master import MasterConfig
from buildbot.test import fakedb
from buildbot.test.fake.fakemaster import make_master
from twisted.trial import unittest

from gentoo_farm.config import FarmConfigError, load_config, parse_config
from gentoo_farm.master.buildmaster import buildmaster_config
from gentoo_farm.workers.latent.fleet import OpenStackFleet
from gentoo_farm.workers.latent.openstack import FARM_ID_KEY, INSTANCE_KEY, MASTER_KEY
from gentoo_farm.workers.latent.reaper import OpenStackOrphanReaper
from tests.farmtest import farm_command, set_option
from tests.services.compute import ComputeStandIn
from tests.services.glance import Glance, glance  # noqa: F401  (session fixture)
from tests.services.keystone import Keystone, keystone  # noqa: F401  (session fixture)
from tests.test_openstack_worker import CLOUD, FARM_ID, _prepare_vm, _upload_image

SHARED = """\
[farm]
id = "farm-mm"
[master]
multi_master = true
db_url = "postgresql+psycopg://farm@db.example.org/farm"
[master.mq]
type = "wamp"
router_url = "ws://mq.example.org:8080/ws"
realm = "farm"
[store]
type = "s3"
bucket = "farm"
"""


def test_the_shared_settings_and_the_refusals_say_why(tmp_path: Path) -> None:
    master = parse_config(SHARED, tmp_path).master
    assert master.multi_master and master.roles == ["ui", "builds"]
    assert (master.mq.type, master.mq.router_url, master.mq.realm) == (
        "wamp",
        "ws://mq.example.org:8080/ws",
        "farm",
    )

    local_store = SHARED.replace('type = "s3"', 'type = "local"')
    with pytest.raises(FarmConfigError) as refused:
        parse_config(local_store, tmp_path)
    assert str(refused.value) == (
        'farm.toml:11: store.type = "local" with master.multi_master = true: a local store is one master\'s '
        "directory, served by that master alone, so builds of the other masters could not publish to it; "
        'use type = "s3", which every master and worker reaches'
    )

    every_mistake = SHARED.replace(
        "postgresql+psycopg://farm@db.example.org/farm", "sqlite:///state.sqlite"
    ).replace('type = "wamp"\nrouter_url = "ws://mq.example.org:8080/ws"', 'type = "simple"')
    with pytest.raises(FarmConfigError) as refused:
        parse_config(every_mistake, tmp_path)
    message = str(refused.value)
    assert (
        'farm.toml:5: master.db_url = "sqlite:///state.sqlite" with master.multi_master = true: SQLite'
        in message
    )
    assert (
        'farm.toml:7: master.mq.type = "simple" with master.multi_master = true: the simple queue' in message
    )

    with pytest.raises(
        FarmConfigError, match=r'farm.toml:7: master.mq.type = "wamp" needs master.mq.router_url'
    ):
        parse_config('[farm]\nid = "f"\n[master]\n[master.mq]\n\n\ntype = "wamp"\n', tmp_path)
    with pytest.raises(FarmConfigError, match=r"farm.toml:4: .*other roles need master.multi_master = true"):
        parse_config('[farm]\nid = "f"\n[master]\nroles = ["ui"]\n', tmp_path)


def test_master_toml_sets_this_masters_addresses_and_roles_and_nothing_shared(tmp_path: Path) -> None:
    (tmp_path / "farm.toml").write_text(SHARED)
    assert load_config(tmp_path).master.web_address == "127.0.0.1:8010"
    (tmp_path / "master.toml").write_text(
        '[master]\nweb_address = "0.0.0.0:8020"\nworker_address = "10.0.0.5:9999"\nroles = ["builds"]\n'
    )
    master = load_config(tmp_path).master
    assert (master.web_address, master.worker_address, master.roles) == (
        "0.0.0.0:8020",
        "10.0.0.5:9999",
        ["builds"],
    )
    assert master.db_url == "postgresql+psycopg://farm@db.example.org/farm"

    # what every master must share stays in farm.toml
    (tmp_path / "master.toml").write_text('[master]\nroles = ["ui"]\ndb_url = "sqlite:///mine.sqlite"\n')
    with pytest.raises(FarmConfigError) as refused:
        load_config(tmp_path)
    assert str(refused.value) == (
        f"{tmp_path}/master.toml:3: master.db_url is the same for every master: set it in farm.toml"
    )
    (tmp_path / "master.toml").write_text('[master]\nweb_adress = "0.0.0.0:8020"\n')
    with pytest.raises(FarmConfigError) as refused:
        load_config(tmp_path)
    assert str(refused.value) == (
        f"{tmp_path}/master.toml:2: unknown key master.web_adress (did you mean web_address?); "
        "known keys here: public_url, roles, web_address, worker_address"
    )
    (tmp_path / "farm.toml").write_text(SHARED.replace("multi_master = true", "multi_master = false"))
    (tmp_path / "master.toml").write_text('[master]\nroles = ["ui"]\n')
    with pytest.raises(
        FarmConfigError, match=r"master.toml:2: master.roles = .*need master.multi_master = true"
    ):
        load_config(tmp_path)


@pytest.fixture(scope="module")
def farm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multimaster") / "farm"
    farm_command("init", str(root))
    set_option(root, "master", "multi_master", "true")
    set_option(root, "master", "db_url", '"postgresql+psycopg://farm@db.example.org/farm"')
    set_option(root, "store", "type", '"s3"')
    set_option(root, "store", "bucket", '"farm"')
    set_option(root, "store", "public_url", '"https://images.example.org/"')
    with (root / "farm.toml").open("a") as farm_toml:
        farm_toml.write('[master.mq]\ntype = "wamp"\nrouter_url = "ws://mq.example.org:8080/ws"\n')
    return root


def _buildbot_checked(config: dict[str, Any]) -> MasterConfig:
    """Buildbot's own reading of the configuration: unknown mq keys, builders without workers... fail."""
    return MasterConfig.loadFromDict(config, "master.cfg")


def test_master_config_is_multi_master_on_wamp_and_each_role_runs_its_part(farm_dir: Path) -> None:
    both = _buildbot_checked(buildmaster_config(farm_dir))
    assert both.multiMaster is True
    assert both.mq == {
        "type": "wamp",
        "router_url": "ws://mq.example.org:8080/ws",
        "realm": "realm1",
        "wamp_debug_level": "error",
    }
    assert both.www["port"] == "tcp:8010:interface=127.0.0.1" and [
        worker.name for worker in both.workers
    ] == ["local-1"]
    assert [builder.name for builder in both.builders] == ["mirror", "kernel", "overlay", "image"]

    (farm_dir / "master.toml").write_text('[master]\nroles = ["ui"]\n')
    try:
        ui = _buildbot_checked(buildmaster_config(farm_dir))
        assert ui.www["port"] == "tcp:8010:interface=127.0.0.1"
        assert (ui.workers, ui.builders, ui.protocols) == ([], [], {})
        # every master has the schedulers (Buildbot runs each on one): a force on the UI makes the request
        assert {scheduler.name for scheduler in ui.schedulers.values()} == {
            scheduler.name for scheduler in both.schedulers.values()
        }

        (farm_dir / "master.toml").write_text(
            '[master]\nroles = ["builds"]\nworker_address = "10.0.0.5:9999"\n'
        )
        builds = _buildbot_checked(buildmaster_config(farm_dir))
        assert builds.www["port"] is None
        assert builds.protocols == {"pb": {"port": "tcp:9999:interface=10.0.0.5"}}
        assert [builder.name for builder in builds.builders] == ["mirror", "kernel", "overlay", "image"]
    finally:
        (farm_dir / "master.toml").unlink()


def test_farm_check_refuses_a_local_store_with_several_masters(tmp_path: Path) -> None:
    (tmp_path / "farm.toml").write_text(SHARED.replace('type = "s3"', 'type = "local"'))
    checked = farm_command("--farm", str(tmp_path), "check", "--config-only", check=False)
    assert checked.returncode != 0
    assert (
        'store.type = "local" with master.multi_master = true: a local store'
        in checked.stdout + checked.stderr
    )


THIS_MASTER = "build-1.example.org:/srv/farm/master"
LIVE_MASTER = "build-2.example.org:/srv/farm/master"
GONE_MASTER = "build-3.example.org:/srv/farm/master"


class ReaperDecisions(unittest.TestCase):
    """A multi-master reaper against the Compute stand-in, with Buildbot's data API on a database
    that lists this master, a live one and an inactive one."""

    @pytest.fixture(autouse=True)
    def _cloud(self, keystone: Keystone, glance: Glance, tmp_path: Path) -> Iterator[None]:  # noqa: F811
        compute = ComputeStandIn(
            keystone, tmp_path / "compute", glance_url=glance.url, prepare_vm=_prepare_vm
        )
        compute.start()
        keystone.register_service("compute", "nova", compute.url)
        clouds = keystone.write_clouds_yaml(tmp_path / "clouds.yaml", cloud=CLOUD, username="demo")
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
            self.cloud = openstack.connect(cloud=CLOUD)
            self.image_id = _upload_image(self.cloud, tmp_path, "gentoo-mm", FARM_ID)
            self.compute = compute
            try:
                yield
            finally:
                compute.stop()
                self.cloud.image.delete_image(self.image_id, ignore_missing=True)

    def _server(self, name: str, **metadata: str) -> str:
        flavor = self.cloud.compute.find_flavor("m1.small")
        return self.cloud.compute.create_server(
            name=name, flavor_id=flavor.id, image_id=self.image_id, networks="auto", metadata=metadata
        ).id

    async def test_a_master_reaps_its_orphans_and_an_inactive_masters_servers_only(self) -> None:
        fleet = OpenStackFleet(FARM_ID)
        held = secrets.token_hex(8)
        fleet.hold(held)

        def ours(master: str, token: str | None = None) -> dict[str, str]:
            return {FARM_ID_KEY: FARM_ID, MASTER_KEY: master, INSTANCE_KEY: token or secrets.token_hex(8)}

        servers = {
            "own-orphan": self._server("own-orphan", **ours(THIS_MASTER)),
            "own-live": self._server("own-live", **ours(THIS_MASTER, held)),
            "live-masters": self._server("live-masters", **ours(LIVE_MASTER)),
            "inactive-masters": self._server("inactive-masters", **ours(GONE_MASTER)),
            "unknown-masters": self._server("unknown-masters", **ours("elsewhere:/farm")),
            "no-master": self._server("no-master", **{FARM_ID_KEY: FARM_ID, INSTANCE_KEY: "t"}),
            "other-farm": self._server("other-farm", **{**ours(GONE_MASTER), FARM_ID_KEY: "someone-else"}),
        }

        master = await make_master(self, wantDb=True, wantData=True, wantRealReactor=True)
        master.name = THIS_MASTER
        master.config.multiMaster = True
        await master.db.insert_test_data(
            [
                fakedb.Master(id=1, name=THIS_MASTER, active=1),
                fakedb.Master(id=2, name=LIVE_MASTER, active=1),
                fakedb.Master(id=3, name=GONE_MASTER, active=0),
            ]
        )
        reaper = OpenStackOrphanReaper(CLOUD, fleet)
        reaper.setServiceParent(master)
        reaper.reconfigService(CLOUD, fleet)

        reaped = await reaper.sweep()

        self.assertEqual(sorted(reaped), ["inactive-masters", "own-orphan"])
        self.assertEqual(
            set(self.compute.deleted) & set(servers.values()),
            {servers["own-orphan"], servers["inactive-masters"]},
        )

        # the same servers on a single master: its farm's servers without a live token, whoever started them
        master.config.multiMaster = False
        reaped = await reaper.sweep()
        self.assertEqual(sorted(reaped), ["live-masters", "no-master", "unknown-masters"])
        self.assertIn(servers["own-live"], self.compute.servers)
        self.assertIn(servers["other-farm"], self.compute.servers)

    async def test_a_master_announced_stopped_has_its_servers_reaped_without_waiting_for_the_interval(
        self,
    ) -> None:
        fleet = OpenStackFleet(FARM_ID)
        gone = self._server(
            "gone-masters", **{FARM_ID_KEY: FARM_ID, MASTER_KEY: GONE_MASTER, INSTANCE_KEY: "t"}
        )
        master = await make_master(self, wantDb=True, wantData=True, wantRealReactor=True)
        master.name = THIS_MASTER
        master.config.multiMaster = True
        await master.db.insert_test_data(
            [fakedb.Master(id=1, name=THIS_MASTER, active=1), fakedb.Master(id=3, name=GONE_MASTER, active=1)]
        )
        reaper = OpenStackOrphanReaper(CLOUD, fleet, interval=3600)
        reaper.setServiceParent(master)
        reaper.reconfigService(CLOUD, fleet, interval=3600)
        await reaper.startService()
        try:
            await master.mq.wait_consumed()
            await reaper.sweep()  # the start's sweep has run: the master is live, its server stays
            self.assertIn(gone, self.compute.servers)

            # what Buildbot's housekeeping does for a master silent past its expiry
            await master.db.masters.setMasterState(masterid=3, active=False)
            master.mq.callConsumer(
                ("masters", "3", "stopped"), {"masterid": 3, "name": GONE_MASTER, "active": False}
            )
            await master.mq.wait_consumed()
            self.assertIn(gone, self.compute.deleted)
        finally:
            await reaper.stopService()
