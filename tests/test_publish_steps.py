"""The master-side store steps inside Buildbot's step test harness, against a real local store."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from buildbot.config import ConfigErrors
from buildbot.db.steps import UrlModel
from buildbot.process import remotetransfer
from buildbot.process.results import FAILURE, SKIPPED, SUCCESS, WARNINGS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import ExpectDownloadFile, ExpectRemoteRef, ExpectUploadFile, TestBuildStepMixin
from twisted.trial import unittest

from gentoo_farm.image_name import ImageName
from gentoo_farm.signing import FarmKey
from gentoo_farm.steps.naming import NameImage
from gentoo_farm.steps.publish import MakeUploadUrls, PublishSet, artifact_link
from gentoo_farm.steps.pushback import MergeBinhost, MergeDistfiles, PushBackUrls
from gentoo_farm.steps.uptodate import CheckUpToDate, unless_up_to_date
from gentoo_farm.store import open_store
from gentoo_farm.store.s3 import S3Store
from gentoo_farm.store.sets import ARTIFACT, PublishedFile, PublishedSet, latest_set, next_image_name
from tests.services.store import LocalStoreSettings, publish_files, put_snapshot


class StoreStepsTest(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self):  # type: ignore[no-untyped-def]
        self.setup_test_reactor()
        self.directory = Path(tempfile.mkdtemp(prefix="farm-steps-"))
        self.addCleanup(shutil.rmtree, self.directory)
        self.settings = LocalStoreSettings(path=self.directory / "store", public_url="http://127.0.0.1:8011")
        self.store = open_store(self.settings)
        return self.setup_test_build_step()

    def publish_image(self, input_key: str) -> str:
        disk = self.directory / "disk.qcow2"
        disk.write_bytes(b"qcow2 bytes")
        return publish_files(self.store, "images", input_key, {"gentoo.qcow2": disk}).set_id

    async def test_up_to_date_hands_on_the_existing_set_and_skips_the_rest(self) -> None:
        set_id = self.publish_image("input-1")
        self.setup_step(CheckUpToDate(self.settings, "images", "input-1"))
        self.expect_outcome(
            result=SUCCESS, state_string=f"images-up-to-date: up to date: images {set_id} already published"
        )
        self.expect_property("up_to_date", True)
        self.expect_property("images_set_id", set_id)
        self.expect_build_result_summary(
            {
                "step": f"images-up-to-date: up to date: images {set_id} already published",
                "build": f"up to date: images {set_id}",
            }
        )
        await self.run_step()
        # The steps after the check are skipped, out of sight.
        later = unless_up_to_date(lambda step: True)
        self.assertFalse(later["doStepIf"](self.get_nth_step(0)))
        self.assertTrue(later["hideStepIf"](SKIPPED, self.get_nth_step(0)))

    async def test_not_up_to_date_lets_the_build_run(self) -> None:
        self.publish_image("input-1")
        self.setup_step(CheckUpToDate(self.settings, "images", "input-2"))
        self.expect_outcome(
            result=SUCCESS, state_string="images-up-to-date: no images for input key input-2 yet: building"
        )
        self.expect_property("up_to_date", False)
        self.expect_build_result_summary(
            {"step": "images-up-to-date: no images for input key input-2 yet: building"}
        )
        await self.run_step()
        # The steps after it run, as far as their own condition lets them.
        self.assertTrue(unless_up_to_date()["doStepIf"](self.get_nth_step(0)))
        self.assertFalse(unless_up_to_date(lambda step: False)["doStepIf"](self.get_nth_step(0)))
        self.assertFalse(unless_up_to_date()["hideStepIf"](SUCCESS, self.get_nth_step(0)))

    async def test_name_image_takes_the_next_name_of_the_day(self) -> None:
        today = next_image_name(self.store, "arm64")
        disk = self.directory / "disk.qcow2"
        disk.write_bytes(b"qcow2 bytes")
        publish_files(
            self.store, "images", "input-1", {f"{today}.qcow2": disk}, metadata={"name": str(today)}
        )
        self.setup_step(NameImage(self.settings, "arm64"))
        second = ImageName(today.day, "arm64", serial=1)
        self.expect_outcome(result=SUCCESS, state_string=f"name-image: image name {second}")
        self.expect_property("image_name", str(second))
        await self.run_step()

    async def test_upload_urls_reach_the_worker_as_a_private_file(self) -> None:
        written: list[bytes] = []
        self.setup_step(
            MakeUploadUrls(self.settings, "kernel", "kernel-key", {"vmlinuz.tar.xz": "out/vmlinuz.tar.xz"})
        )
        self.expect_commands(
            ExpectDownloadFile(
                workerdest="upload-map.json",
                workdir="wkdir",
                blocksize=32 * 1024,
                maxsize=None,
                mode=0o600,
                reader=ExpectRemoteRef(remotetransfer.StringFileReader),
            )
            .download_string(written.append, size=100_000)
            .exit(0)
        )
        self.expect_outcome(result=SUCCESS)
        await self.run_step()

        set_id = self.get_nth_step(0).getProperty("publish_set_id")
        (url,) = json.loads(written[0]).values()
        assert url.startswith(f"http://127.0.0.1:8011/kernel/{set_id}/vmlinuz.tar.xz?expires=")
        properties = json.dumps(self.get_nth_step(0).build.getProperties().asDict())
        assert "signature" not in properties

    def test_a_store_step_takes_its_arguments_by_position_or_keyword_and_names_a_mistake(self) -> None:
        by_position = MakeUploadUrls(self.settings, "kernel", "kernel-key", {}, "map.json")
        by_keyword = MakeUploadUrls(
            self.settings, map_path="map.json", files={}, input_key="kernel-key", kind="kernel"
        )
        for step in (by_position, by_keyword):
            self.assertEqual(
                (step.name, step.kind, step.input_key, step.map_path),
                ("kernel-upload-urls", "kernel", "kernel-key", "map.json"),
            )
        # A factory's mistake fails the config check, naming the step and the argument.
        with self.assertRaisesRegex(ConfigErrors, "PublishSet: missing argument 'files'"):
            PublishSet(self.settings, "kernel", "k1")
        with self.assertRaisesRegex(ConfigErrors, "CheckUpToDate: kind given twice"):
            CheckUpToDate(self.settings, "images", "input-1", kind="kernel")
        with self.assertRaisesRegex(
            ConfigErrors, r"NameImage: 3 positional values for \['arch', 'images_kind'\]"
        ):
            NameImage(self.settings, "amd64", "images", "extra")

    async def test_publish_verifies_and_flips_latest(self) -> None:
        data = b"kernel tarball"
        self.store.put_bytes("kernel/20261125T000000Z-k1/vmlinuz.tar.xz", data)
        files = {"vmlinuz.tar.xz": {"size": len(data), "sha512": hashlib.sha512(data).hexdigest()}}
        self.setup_step(PublishSet(self.settings, "kernel", "k1", files, set_id="20261125T000000Z-k1"))
        self.expect_outcome(
            result=SUCCESS, state_string="publish-kernel: published kernel 20261125T000000Z-k1"
        )
        self.expect_property("kernel_set_id", "20261125T000000Z-k1")
        await self.run_step()
        self.assertEqual(latest_set(self.store, "kernel").set_id, "20261125T000000Z-k1")

    async def test_the_publish_log_says_how_far_the_read_back_is(self) -> None:
        data = b"kernel tarball"
        self.store.put_bytes("kernel/20261125T000000Z-k1/vmlinuz.tar.xz", data)
        files = {"vmlinuz.tar.xz": {"size": len(data), "sha512": hashlib.sha512(data).hexdigest()}}
        self.setup_step(PublishSet(self.settings, "kernel", "k1", files, set_id="20261125T000000Z-k1"))
        self.expect_outcome(result=SUCCESS)
        await self.run_step()

        key = "kernel/20261125T000000Z-k1/vmlinuz.tar.xz"
        log = self.get_nth_step(0).logs["publish"].stdout.splitlines()
        reading = next(line for line in log if line.startswith("reading back "))
        assert reading.startswith(f"reading back {key} 14 B / 14 B (100 %)")
        assert log.index(reading) < log.index(f"verified {key} (14 bytes)")

    async def test_an_image_publish_names_the_image_and_links_its_qcow2(self) -> None:
        data = b"qcow2 bytes"
        set_id = "20261206T000000Z-i1"
        self.store.put_bytes(f"images/{set_id}/gentoo-20261206-amd64.qcow2", data)
        files = {
            "gentoo-20261206-amd64.qcow2": {"size": len(data), "sha512": hashlib.sha512(data).hexdigest()}
        }
        metadata = {ARTIFACT: "gentoo-20261206-amd64.qcow2", "name": "gentoo-20261206-amd64"}
        self.setup_step(PublishSet(self.settings, "images", "i1", files, metadata, set_id=set_id))
        summary = f"publish-images: published gentoo-20261206-amd64 (images set {set_id})"
        self.expect_outcome(result=SUCCESS, state_string=summary)
        self.expect_build_result_summary({"step": summary, "build": "published gentoo-20261206-amd64"})
        await self.run_step()
        step = await self.master.db.steps.getStep(self.get_nth_step(0).stepid)
        self.assertEqual(
            step.urls,
            [
                UrlModel(
                    "gentoo-20261206-amd64.qcow2",
                    f"http://127.0.0.1:8011/images/{set_id}/gentoo-20261206-amd64.qcow2",
                )
            ],
        )

    async def test_a_corrupt_upload_fails_the_step_and_publishes_nothing(self) -> None:
        self.store.put_bytes("kernel/20261125T000000Z-k1/vmlinuz.tar.xz", b"corrupted")
        files = {"vmlinuz.tar.xz": {"size": 9, "sha512": hashlib.sha512(b"the real one").hexdigest()}}
        self.setup_step(PublishSet(self.settings, "kernel", "k1", files, set_id="20261125T000000Z-k1"))
        self.expect_outcome(result=FAILURE)
        await self.run_step()
        assert "vmlinuz.tar.xz" in self.get_nth_step(0).outcome and "sha512" in self.get_nth_step(0).outcome
        self.assertIsNone(latest_set(self.store, "kernel"))

    async def test_push_back_signs_staging_urls_for_new_files_only(self) -> None:
        line = {"size": 5, "sha512": "ab" * 64, "blake2b": "cd" * 64}
        candidates = {
            "packages_index": "/w/pkgdir/Packages",
            "binpkgs": {"dev-libs/a/a-1-1.gpkg.tar": "/w/pkgdir/dev-libs/a/a-1-1.gpkg.tar"},
            "distfiles": {
                "a-1.tar.gz": {"file": "/w/distdir/a-1.tar.gz", **line},
                # The mirror has this one: the worker listing it again must not get a URL to replace it.
                "b-1.tar.gz": {"file": "/w/distdir/b-1.tar.gz", **line},
            },
        }
        self.store.put_bytes("distfiles/b-1.tar.gz", b"kept!")
        repository = self.directory / "repo"
        (repository / "app-misc" / "a").mkdir(parents=True)
        (repository / "app-misc" / "a" / "Manifest").write_text(
            f"DIST a-1.tar.gz 5 BLAKE2B {'cd' * 64} SHA512 {'ab' * 64}\n"
        )
        snapshot = put_snapshot(self.store, repository)
        written: list[bytes] = []
        self.setup_step(PushBackUrls(self.settings, snapshot))
        self.expect_commands(
            ExpectUploadFile(
                workersrc="push-back.json",
                workdir="wkdir",
                blocksize=32 * 1024,
                maxsize=None,
                writer=ExpectRemoteRef(remotetransfer.StringFileWriter),
            )
            .upload_string(json.dumps(candidates))
            .exit(0),
            ExpectDownloadFile(
                workerdest="push-back-uploads.json",
                workdir="wkdir",
                blocksize=32 * 1024,
                maxsize=None,
                mode=0o600,
                reader=ExpectRemoteRef(remotetransfer.StringFileReader),
            )
            .download_string(written.append, size=100_000)
            .exit(0),
        )
        self.expect_outcome(
            result=SUCCESS,
            state_string="push-back-urls: 1 packages, 1 distfiles to push "
            "(1 the mirror has or the snapshot does not vouch for)",
        )
        await self.run_step()

        token = self.get_nth_step(0).getProperty("pushback_token")
        uploads = {path: url.split("?")[0] for path, url in json.loads(written[0]).items()}
        base = "http://127.0.0.1:8011"
        staging = f"{base}/incoming/{token}"
        assert uploads == {
            "/w/pkgdir/Packages": f"{staging}/Packages",
            "/w/pkgdir/dev-libs/a/a-1-1.gpkg.tar": f"{staging}/binpkgs/dev-libs/a/a-1-1.gpkg.tar",
            "/w/distdir/a-1.tar.gz": f"{staging}/distfiles/a-1.tar.gz",
        }
        assert "size=5&" in json.loads(written[0])["/w/distdir/a-1.tar.gz"]
        vouched = json.loads(self.store.get_bytes(f"incoming/{token}/vouched-distfiles.json"))
        assert vouched == {"a-1.tar.gz": line}

    async def test_merge_without_a_push_is_a_no_op(self) -> None:
        self.setup_step(MergeBinhost(self.settings, "default/linux/amd64/23.0", FarmKey(Path("unused"))))
        self.expect_outcome(
            result=SUCCESS, state_string="merge-binhost: nothing was pushed back (no push-back token)"
        )
        await self.run_step()

    async def test_merge_distfiles_takes_what_matches_its_line_and_names_what_does_not(self) -> None:
        staging = "incoming/b1-t/"
        good, bad = b"good!", b"evil!"
        line = {
            "size": 5,
            "sha512": hashlib.sha512(good).hexdigest(),
            "blake2b": hashlib.blake2b(good).hexdigest(),
        }
        self.store.put_bytes(
            staging + "vouched-distfiles.json", json.dumps({"a-1.tar.gz": line, "b-1.tar.gz": line}).encode()
        )
        self.store.put_bytes(staging + "distfiles/a-1.tar.gz", good)
        self.store.put_bytes(staging + "distfiles/b-1.tar.gz", bad)
        self.setup_step(MergeDistfiles(self.settings))
        self.build.setProperty("pushback_token", "b1-t", "test")
        self.expect_outcome(
            result=WARNINGS, state_string="merge-distfiles: mirror: 1 added, 0 already there, 1 refused"
        )
        self.expect_log_file(
            "distfiles", "added a-1.tar.gz\nrefused: b-1.tar.gz: SHA512 does not match its DIST line\n"
        )
        await self.run_step()
        self.assertEqual(self.store.get_bytes("distfiles/a-1.tar.gz"), good)
        self.assertFalse(self.store.exists("distfiles/b-1.tar.gz"))


def test_a_private_bucket_gets_no_build_link_as_its_urls_expire() -> None:
    disk = PublishedFile(
        "gentoo-20261206-amd64.qcow2", "images/20261206T000000Z-i1/gentoo-20261206-amd64.qcow2", 1, "0"
    )
    published = PublishedSet(
        "images", "20261206T000000Z-i1", "i1", "2026-12-06T00:00:00Z", (disk,), {ARTIFACT: disk.name}
    )
    private = S3Store("farm", endpoint_url="http://127.0.0.1:9", region="us-east-1")
    assert artifact_link(private, published) is None
    public = S3Store(
        "farm", endpoint_url="http://127.0.0.1:9", region="us-east-1", public_url="https://img.example/"
    )
    assert artifact_link(public, published) == (disk.name, f"https://img.example/{disk.key}")
