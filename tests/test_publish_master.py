"""Publishing through a real Buildbot master and worker: signed URLs reach the worker as a file, the
worker uploads with `farm-worker upload`, the master verifies and flips latest; the next build with the
same input key ends "up to date" without running the rest."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from buildbot.config import BuilderConfig
from buildbot.plugins import schedulers, steps, util
from buildbot.process.factory import BuildFactory
from buildbot.process.results import SKIPPED, SUCCESS
from buildbot.test.util.integration import RunMasterBase

from gentoo_farm.master.factories.common import push_back
from gentoo_farm.steps.base import FarmWorkerStep
from gentoo_farm.steps.publish import MakeUploadUrls, PublishSet
from gentoo_farm.steps.uptodate import CheckUpToDate, unless_up_to_date
from gentoo_farm.store import open_store
from gentoo_farm.store.sets import latest_set, list_sets
from tests.services.store import LocalStoreSettings, put_snapshot, running_store_server
from tests.world.repository import manifest_line

DISK = b"a qcow2 image, as far as this test is concerned\n" * 1000


class PublishThroughMaster(RunMasterBase):
    timeout = 120

    async def setup_config(self, settings: LocalStoreSettings, basedir: Path) -> None:
        toolkit_path = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
        building = unless_up_to_date()
        factory = BuildFactory(
            [
                CheckUpToDate(settings, "images", util.Property("input_key")),
                steps.StringDownload(DISK.decode(), workerdest="gentoo-20261125-amd64.qcow2", **building),
                MakeUploadUrls(
                    settings,
                    "images",
                    util.Property("input_key"),
                    {"gentoo-20261125-amd64.qcow2": "gentoo-20261125-amd64.qcow2"},
                    **building,
                ),
                FarmWorkerStep(
                    "upload", ["--map", "upload-map.json", "--report-checksums"], env=toolkit_path, **building
                ),
                PublishSet(
                    settings,
                    "images",
                    util.Property("input_key"),
                    files=util.Property("uploaded"),
                    metadata={"kernel": "6.6.30-gentoo"},
                    **building,
                ),
            ]
        )
        await self.setup_master(
            {
                "builders": [BuilderConfig(name="image", workernames=["local1"], factory=factory)],
                "schedulers": [
                    schedulers.ForceScheduler(
                        name="force",
                        builderNames=["image"],
                        properties=[util.StringParameter(name="input_key", default="key-1")],
                    )
                ],
            },
            basedir=str(basedir),
        )

    async def test_publish_then_up_to_date(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="farm-master-publish-"))
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        with running_store_server(directory / "store", directory / "server.log") as url:
            settings = LocalStoreSettings(path=directory / "store", public_url=url)
            await self.setup_config(settings, directory / "master")

            first = await self.doForceBuild(wantSteps=True, wantProperties=True, wantLogs=True)
            self.assertEqual(first["results"], SUCCESS, first["state_string"])
            store = open_store(settings)
            published = latest_set(store, "images")
            self.assertEqual(store.get_bytes(published.files[0].key), DISK)
            self.assertEqual(published.metadata, {"kernel": "6.6.30-gentoo"})
            self.assertEqual(first["properties"]["images_set_id"][0], published.set_id)
            shown = str(first["properties"]) + "".join(
                log.get("contents", {}).get("content", "") for step in first["steps"] for log in step["logs"]
            )
            self.assertIn("uploaded 1 files", shown)
            self.assertNotIn("signature=", shown, "signed URLs must not reach properties or logs")

            second = await self.doForceBuild(wantSteps=True, wantProperties=True)
            self.assertEqual(second["results"], SUCCESS)
            ran = [
                step["name"]
                for step in second["steps"]
                if step["results"] not in (None, SKIPPED) and step["started_at"]
            ]
            self.assertEqual(ran, ["worker_preparation", "images-up-to-date"])
            skipped = [step for step in second["steps"] if step["name"] not in ran]
            self.assertEqual(len(skipped), 4)
            self.assertTrue(all(step["results"] == SKIPPED and step["hidden"] for step in skipped), skipped)
            self.assertIn(f"up to date: images {published.set_id}", second["state_string"])
            self.assertEqual(second["properties"]["images_set_id"][0], published.set_id)
            self.assertEqual(len(list_sets(store, "images")), 1)


class PushBackThroughMaster(RunMasterBase):
    """The image builder's push-back steps (``push_back``) on a real master and worker: a distfile the
    build's snapshot vouches for lands in the mirror, one it does not vouch for gets no URL at all."""

    timeout = 120

    async def test_push_back_adds_only_what_the_snapshot_vouches_for(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="farm-master-pushback-"))
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        # The worker runs farm-worker from the environment it inherits.
        self.addCleanup(os.environ.__setitem__, "PATH", os.environ["PATH"])
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
        vouched, planted = b"the upstream tarball\n", b"a tarball of the worker's making\n"
        (directory / "repo" / "app-misc" / "a").mkdir(parents=True)
        (directory / "distfiles").mkdir()
        (directory / "distfiles" / "a-1.tar.gz").write_bytes(vouched)
        (directory / "repo" / "app-misc" / "a" / "Manifest").write_text(
            manifest_line(directory / "distfiles" / "a-1.tar.gz")
        )
        with running_store_server(directory / "store", directory / "server.log") as url:
            settings = LocalStoreSettings(path=directory / "store", public_url=url)
            store = open_store(settings)
            snapshot = put_snapshot(store, directory / "repo")
            # What the worker's own tree says after a build tampered with it: a line for a name of its own.
            (directory / "distfiles" / "b-1.tar.gz").write_bytes(planted)
            with (directory / "repo" / "app-misc" / "a" / "Manifest").open("a") as manifest:
                manifest.write(manifest_line(directory / "distfiles" / "b-1.tar.gz"))
            config = SimpleNamespace(
                store=settings,
                upstream=SimpleNamespace(profile="default/linux/amd64/23.0"),
                basedir=directory / "farm",
            )
            factory = BuildFactory(
                [
                    steps.MakeDirectory(dir="build/packages"),
                    steps.SetProperty(property="image_artifacts", value={"portage": snapshot}),
                    *push_back(
                        config,  # type: ignore[arg-type]
                        distdir=str(directory / "distfiles"),
                        repository=str(directory / "repo"),
                        snapshot_key=util.Transform(
                            lambda artifacts: artifacts.get("portage"), util.Property("image_artifacts")
                        ),
                        pkgdir="packages",
                    ),
                ]
            )
            await self.setup_master(
                {
                    "builders": [BuilderConfig(name="image", workernames=["local1"], factory=factory)],
                    "schedulers": [schedulers.ForceScheduler(name="force", builderNames=["image"])],
                },
                basedir=str(directory / "master"),
            )

            build = await self.doForceBuild(wantSteps=True, wantLogs=True)

            self.assertEqual(build["results"], SUCCESS, build["state_string"])
            states = {step["name"]: step["state_string"] for step in build["steps"]}
            self.assertEqual(
                states["push-back-urls"],
                "push-back-urls: 0 packages, 1 distfiles to push "
                "(1 the mirror has or the snapshot does not vouch for)",
            )
            self.assertEqual(states["merge-distfiles"], "merge-distfiles: mirror: 1 added, 0 already there")
            self.assertEqual(store.get_bytes("distfiles/a-1.tar.gz"), vouched)
            self.assertFalse(store.exists("distfiles/b-1.tar.gz"))
            self.assertEqual([info.key for info in store.list("incoming/")], [])
