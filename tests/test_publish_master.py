"""Publishing through a real Buildbot master and worker: signed URLs reach the worker as a file, the
worker uploads with `farm-worker upload`, the master verifies and flips latest; the next build with the
same input key ends "up to date" without running the rest."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from buildbot.config import BuilderConfig
from buildbot.plugins import schedulers, steps, util
from buildbot.process.factory import BuildFactory
from buildbot.process.results import SKIPPED, SUCCESS
from buildbot.test.util.integration import RunMasterBase

from gentoo_farm.steps.base import FarmWorkerStep
from gentoo_farm.steps.publish import CheckUpToDate, MakeUploadUrls, PublishSet, unless_up_to_date
from gentoo_farm.store import open_store
from gentoo_farm.store.sets import latest_set, list_sets
from tests.services.store import LocalStoreSettings, running_store_server

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
