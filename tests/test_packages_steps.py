"""The package steps: each runs its ``farm-worker`` stage with rendered arguments and reports back."""

import json

from gentoo_farm.steps.packages import EmergePackages, FetchRelease, UnpackRoot
from tests.stagesteps import STAGE_ENV, know_the_nonce, result_line

# isort: split
# Importing buildbot.test turns every warning into an error: the farm's modules must be imported first.
from buildbot.process.properties import Interpolate, Property
from buildbot.process.results import FAILURE, SUCCESS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import ExpectShell, TestBuildStepMixin
from twisted.trial import unittest

RELEASE, SNAPSHOT = "13EBBDBEDE7A12775DFDB1BABB572E0E2D182910", "E1D6ABB63BFCFB4BA02FDF1CEC590EEAC9189250"
FETCH_ARGUMENTS = (
    "--mirror", "http://mirror.test", "--keyring", "key.asc", "--release-key", RELEASE,
    "--snapshot-key", SNAPSHOT, "--dest", "downloads",
    "--arch", "amd64", "--variant", "amd64-openrc", "--snapshot", "latest",
)  # fmt: skip


class TestFetchRelease(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self):
        self.setup_test_reactor()
        know_the_nonce(self)
        return self.setup_test_build_step()

    async def test_reports_the_release_as_properties(self):
        self.setup_step(
            FetchRelease(Property("upstream"), "/etc/farm/gentoo-release.asc", RELEASE, SNAPSHOT, "downloads")
        )
        self.build.setProperty("upstream", "http://mirror.test", "test")
        self.expect_commands(
            ExpectShell(
                env=STAGE_ENV,
                workdir="wkdir",
                command=[
                    "farm-worker",
                    "fetch-release",
                    "--mirror",
                    "http://mirror.test",
                    "--keyring",
                    "/etc/farm/gentoo-release.asc",
                    "--release-key",
                    RELEASE,
                    "--snapshot-key",
                    SNAPSHOT,
                    "--dest",
                    "downloads",
                    "--arch",
                    "amd64",
                    "--variant",
                    "amd64-openrc",
                    "--snapshot",
                    "latest",
                ],
            )
            .stdout(
                "stage3-amd64-openrc-20261122T170403Z.tar.xz: 100% (0.8 of 0.8 MiB)\n"
                + result_line(stage3_timestamp="20261122T170403Z", snapshot_date="20261124")
            )
            .exit(0)
        )
        self.expect_outcome(SUCCESS)
        self.expect_property("stage3_timestamp", "20261122T170403Z")
        self.expect_property("snapshot_date", "20261124")
        await self.run_step()

    async def test_check_only_reads_what_upstream_offers(self):
        common = FETCH_ARGUMENTS
        self.setup_step(
            FetchRelease("http://mirror.test", "key.asc", RELEASE, SNAPSHOT, "downloads", check_only=True)
        )
        self.expect_commands(
            ExpectShell(
                env=STAGE_ENV,
                workdir="wkdir",
                command=["farm-worker", "fetch-release", *common, "--check-only"],
            )
            .stdout(result_line(stage3_sha512="aa", snapshot_md5="bb"))
            .exit(0)
        )
        self.expect_outcome(SUCCESS, "upstream state read")
        self.expect_property("snapshot_md5", "bb")
        await self.run_step()

    async def test_the_full_fetch_must_find_what_the_check_saw(self):
        common = FETCH_ARGUMENTS
        self.setup_step(
            FetchRelease(
                "http://mirror.test",
                "key.asc",
                RELEASE,
                SNAPSHOT,
                "downloads",
                expect_stage3_sha512=Property("stage3_sha512"),
                expect_snapshot_md5=Property("snapshot_md5"),
            )
        )
        self.build.setProperty("stage3_sha512", "aa", "test")
        self.build.setProperty("snapshot_md5", "bb", "test")
        expected = [*common, "--expect-stage3-sha512", "aa", "--expect-snapshot-md5", "bb"]
        self.expect_commands(
            ExpectShell(
                env=STAGE_ENV, workdir="wkdir", command=["farm-worker", "fetch-release", *expected]
            ).exit(0)
        )
        self.expect_outcome(SUCCESS)
        await self.run_step()

    async def test_bad_signature_is_the_status_text(self):
        self.setup_step(FetchRelease("http://mirror.test", "key.asc", RELEASE, SNAPSHOT, "downloads"))
        message = (
            "stage3-amd64-openrc-20261122T170403Z.tar.xz: BAD signature "
            "(stage3-amd64-openrc-20261122T170403Z.tar.xz.asc does not match: "
            "the file was altered or corrupted)"
        )
        self.expect_commands(
            ExpectShell(
                env=STAGE_ENV,
                workdir="wkdir",
                command=[
                    "farm-worker",
                    "fetch-release",
                    "--mirror",
                    "http://mirror.test",
                    "--keyring",
                    "key.asc",
                    "--release-key",
                    RELEASE,
                    "--snapshot-key",
                    SNAPSHOT,
                    "--dest",
                    "downloads",
                    "--arch",
                    "amd64",
                    "--variant",
                    "amd64-openrc",
                    "--snapshot",
                    "latest",
                ],
            )
            .stderr(f"farm-worker fetch: error: {message}\n")
            .exit(1)
        )
        self.expect_outcome(FAILURE, f"fetch-release: {message}")
        await self.run_step()


class TestUnpackRoot(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self):
        self.setup_test_reactor()
        know_the_nonce(self)
        return self.setup_test_build_step()

    async def test_unpacks_what_fetch_reported(self):
        self.setup_step(
            UnpackRoot(
                stage3=Property("stage3_path"),
                snapshot=Property("snapshot_path"),
                root=Interpolate("%(prop:builddir)s/root"),
            )
        )
        self.build.setProperty("stage3_path", "/dl/stage3.tar.xz", "test")
        self.build.setProperty("snapshot_path", "/dl/portage-20261124.tar.xz", "test")
        self.build.setProperty("builddir", "/builds/image", "test")
        self.expect_commands(
            ExpectShell(
                env=STAGE_ENV,
                workdir="wkdir",
                command=[
                    "farm-worker",
                    "unpack-root",
                    "--stage3",
                    "/dl/stage3.tar.xz",
                    "--snapshot",
                    "/dl/portage-20261124.tar.xz",
                    "--root",
                    "/builds/image/root",
                ],
            )
            .stdout(result_line(build_root="/builds/image/root"))
            .exit(0)
        )
        self.expect_outcome(SUCCESS)
        self.expect_property("build_root", "/builds/image/root")
        await self.run_step()

    async def test_a_stage4_is_unpacked_alone(self):
        self.setup_step(UnpackRoot(stage4="inputs/stage4.tar.zst", root="root"))
        self.expect_commands(
            ExpectShell(
                env=STAGE_ENV,
                workdir="wkdir",
                command=["farm-worker", "unpack-root", "--stage4", "inputs/stage4.tar.zst", "--root", "root"],
            )
            .stdout(result_line(build_root="/builds/image/root"))
            .exit(0)
        )
        self.expect_outcome(SUCCESS)
        await self.run_step()


class TestEmergePackages(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self):
        self.setup_test_reactor()
        know_the_nonce(self)
        return self.setup_test_build_step()

    def emerge_command(self, *tail: str) -> list[str]:
        return [
            "farm-worker", "emerge", "--root", "root", "--pkgdir", "pkgs", "--distdir", "distfiles",
            "--workdir", "work", *tail,
        ]  # fmt: skip

    async def test_binhost_mirrors_and_set_become_arguments(self):
        self.setup_step(
            EmergePackages(
                Property("package_set"),
                "root",
                "pkgs",
                "distfiles",
                "work",
                profile="default/linux/amd64/farm",
                binhost="http://store.test/binpkgs/default/linux/amd64/farm",
                distfile_mirror="http://store.test",
                upstream_mirrors=["http://a.test", "http://b.test"],
            )
        )
        self.build.setProperty("package_set", ["app-misc/farm-hello", "app-misc/farm-tools"], "test")
        self.expect_commands(
            ExpectShell(
                env=STAGE_ENV,
                workdir="wkdir",
                command=self.emerge_command(
                    "--profile",
                    "default/linux/amd64/farm",
                    "--binhost",
                    "http://store.test/binpkgs/default/linux/amd64/farm",
                    "--distfile-mirror",
                    "http://store.test",
                    "--upstream-mirror",
                    "http://a.test",
                    "--upstream-mirror",
                    "http://b.test",
                    "--",
                    "app-misc/farm-hello",
                    "app-misc/farm-tools",
                ),
            )
            .stdout(
                ">>> Emerging binary (1 of 1) app-misc/farm-hello-1.0::gentoo for /root/\n"
                + result_line(packages_compiled=[], packages_binary=["app-misc/farm-hello-1.0"])
            )
            .exit(0)
        )
        self.expect_outcome(SUCCESS)
        self.expect_property("packages_compiled", [])
        self.expect_property("packages_binary", ["app-misc/farm-hello-1.0"])
        await self.run_step()

    async def test_the_upstream_binhost_policy_and_its_keyring_become_arguments(self):
        self.setup_step(
            EmergePackages(
                "app-misc/upstream-only", "root", "pkgs", "distfiles", "work",
                upstream_binhost="fallback", upstream_binhost_key="upstream-binhost-keyring.asc",
            )
        )  # fmt: skip
        self.expect_commands(
            ExpectShell(
                env=STAGE_ENV,
                workdir="wkdir",
                command=self.emerge_command(
                    "--upstream-binhost",
                    "fallback",
                    "--upstream-binhost-key",
                    "upstream-binhost-keyring.asc",
                    "--",
                    "app-misc/upstream-only",
                ),
            )
            .stdout(
                result_line(
                    packages_compiled=[],
                    packages_binary=["app-misc/upstream-only-1.0"],
                    packages_upstream_binary=["app-misc/upstream-only-1.0"],
                )
            )
            .exit(0)
        )
        self.expect_outcome(SUCCESS)
        self.expect_property("packages_upstream_binary", ["app-misc/upstream-only-1.0"])
        await self.run_step()

    async def test_status_follows_portage_and_the_summary_counts_where_packages_came_from(self):
        step = self.setup_step(EmergePackages("app-misc/farm-hello", "root", "pkgs", "distfiles", "work"))
        self.expect_commands(
            ExpectShell(
                env=STAGE_ENV, workdir="wkdir", command=self.emerge_command("--", "app-misc/farm-hello")
            )
            .stdout(
                ">>> Emerging binary (1 of 2) dev-libs/farm-core-1.0::gentoo for /root/\n"
                ">>> Emerging (2 of 2) app-misc/farm-hello-1.0::gentoo for /root/\n"
                + result_line(
                    packages_compiled=["app-misc/farm-hello-1.0"], packages_binary=["dev-libs/farm-core-1.0"]
                )
            )
            .exit(0)
        )
        self.expect_outcome(SUCCESS, "1 from the binhost, 1 compiled")
        await self.run_step()
        assert step.getCurrentSummary() == {"step": "emerging 2/2 app-misc/farm-hello-1.0 (compiling)"}

    async def test_cold_build_without_binhost_and_compile_failure(self):
        self.setup_step(EmergePackages("app-misc/farm-hello", "root", "pkgs", "distfiles", "work"))
        message = "emerge app-misc/farm-hello: dev-libs/farm-core-1.0 failed in its compile phase"
        self.expect_commands(
            ExpectShell(
                env=STAGE_ENV, workdir="wkdir", command=self.emerge_command("--", "app-misc/farm-hello")
            )
            .stderr(f"farm-worker emerge: error: {message} (see the log above)\n")
            .exit(1)
        )
        self.expect_outcome(FAILURE, f"emerge: {message} (see the log above)")
        await self.run_step()

    async def test_a_package_build_cannot_forge_results(self):
        self.setup_step(EmergePackages("app-misc/farm-hello", "root", "pkgs", "distfiles", "work"))
        forged = {"packages_binary": ["app-misc/forged-1.0"], "image_sha512": "0" * 128}
        self.expect_commands(
            ExpectShell(
                env=STAGE_ENV, workdir="wkdir", command=self.emerge_command("--", "app-misc/farm-hello")
            )
            .stdout(
                result_line(packages_compiled=[], packages_binary=["app-misc/farm-hello-1.0"])
                # What a package's build may print: it knows the marker, not this command's nonce.
                + f"farm-worker-result: {json.dumps(forged)}\n"
                + f"farm-worker-result: another-nonce {json.dumps(forged)}\n"
            )
            .exit(0)
        )
        self.expect_outcome(SUCCESS)
        self.expect_property("packages_binary", ["app-misc/farm-hello-1.0"])
        self.expect_no_property("image_sha512")
        await self.run_step()
