"""The shared kernel ccache's master-side steps in Buildbot's step harness, against a real local store."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from buildbot.process import remotetransfer
from buildbot.process.results import FAILURE, SUCCESS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import ExpectDownloadFile, ExpectRemoteRef, TestBuildStepMixin
from twisted.trial import unittest

from gentoo_farm.kernel_ccache import CcachePointer, advance_pointer, read_pointer, tarball_key
from gentoo_farm.steps.kernel import AdvanceKernelCcache, OfferKernelCcache, SignKernelCcacheUpload
from gentoo_farm.store import open_store
from tests.services.store import LocalStoreSettings

PACKED = b"a packed kernel ccache"
SHA256 = hashlib.sha256(PACKED).hexdigest()


class KernelCcacheStepsTest(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self):  # type: ignore[no-untyped-def]
        self.setup_test_reactor()
        self.directory = Path(tempfile.mkdtemp(prefix="farm-ccache-steps-"))
        self.addCleanup(shutil.rmtree, self.directory)
        self.settings = LocalStoreSettings(path=self.directory / "store", public_url="http://127.0.0.1:8011")
        self.store = open_store(self.settings)
        return self.setup_test_build_step()

    def expect_private_file(self, path: str, written: list[bytes]) -> None:
        self.expect_commands(
            ExpectDownloadFile(
                workerdest=path,
                workdir="wkdir",
                blocksize=32 * 1024,
                maxsize=None,
                mode=0o600,
                reader=ExpectRemoteRef(remotetransfer.StringFileReader),
            )
            .download_string(written.append, size=100_000)
            .exit(0)
        )

    async def test_without_a_shared_ccache_the_worker_is_offered_none(self) -> None:
        written: list[bytes] = []
        self.setup_step(OfferKernelCcache(self.settings, "amd64", "kernel-ccache.json"))
        self.expect_private_file("kernel-ccache.json", written)
        self.expect_outcome(result=SUCCESS, state_string="offer-kernel-ccache: no shared kernel ccache yet")
        await self.run_step()
        assert json.loads(written[0]) == {}

    async def test_the_pointed_ccache_is_offered_with_its_checksum(self) -> None:
        key = tarball_key("amd64", SHA256)
        self.store.put_bytes(key, PACKED)
        advance_pointer(self.store, "amd64", CcachePointer(key, SHA256, len(PACKED), 4))
        written: list[bytes] = []
        self.setup_step(OfferKernelCcache(self.settings, "amd64", "kernel-ccache.json"))
        self.expect_private_file("kernel-ccache.json", written)
        self.expect_outcome(
            result=SUCCESS,
            state_string=f"offer-kernel-ccache: kernel ccache of build 4 ({len(PACKED)} bytes) offered",
        )
        await self.run_step()
        assert json.loads(written[0]) == {
            "url": f"http://127.0.0.1:8011/{key}",
            "sha256": SHA256,
            "size": len(PACKED),
        }

    async def test_the_upload_url_is_for_the_content_key_and_size(self) -> None:
        written: list[bytes] = []
        self.setup_step(
            SignKernelCcacheUpload(
                self.settings, "amd64", SHA256, len(PACKED), "out/kernel-ccache.tar.zst", "upload.json"
            )
        )
        self.expect_private_file("upload.json", written)
        self.expect_outcome(result=SUCCESS)
        await self.run_step()
        url = json.loads(written[0])["out/kernel-ccache.tar.zst"]
        assert url.startswith(f"http://127.0.0.1:8011/{tarball_key('amd64', SHA256)}?")
        assert f"size={len(PACKED)}" in url
        properties = json.dumps(self.get_nth_step(0).build.getProperties().asDict())
        assert "signature" not in properties

    async def test_content_the_store_has_gets_no_upload_url(self) -> None:
        self.store.put_bytes(tarball_key("amd64", SHA256), PACKED)
        written: list[bytes] = []
        self.setup_step(
            SignKernelCcacheUpload(
                self.settings, "amd64", SHA256, len(PACKED), "out/kernel-ccache.tar.zst", "upload.json"
            )
        )
        self.expect_private_file("upload.json", written)
        self.expect_outcome(result=SUCCESS)
        await self.run_step()
        assert json.loads(written[0]) == {}

    async def test_a_verified_upload_is_shared(self) -> None:
        self.store.put_bytes(tarball_key("amd64", SHA256), PACKED)
        self.setup_step(AdvanceKernelCcache(self.settings, "amd64", SHA256, len(PACKED), 9))
        self.expect_outcome(
            result=SUCCESS,
            state_string=f"share-kernel-ccache: later kernel builds start from this build's ccache "
            f"({len(PACKED)} bytes)",
        )
        await self.run_step()
        pointer = read_pointer(self.store, "amd64")
        assert pointer is not None and pointer.build == 9 and pointer.sha256 == SHA256

    async def test_a_tampered_upload_is_not_shared_and_only_warns(self) -> None:
        self.store.put_bytes(tarball_key("amd64", SHA256), b"something else")
        step = AdvanceKernelCcache(self.settings, "amd64", SHA256, len(PACKED), 9)
        assert (step.flunkOnFailure, step.haltOnFailure, step.warnOnFailure) == (False, False, True)
        self.setup_step(step)
        self.expect_outcome(result=FAILURE)
        await self.run_step()
        assert read_pointer(self.store, "amd64") is None
        assert f"not the {len(PACKED)} bytes" in str(self.get_nth_step(0).outcome)
