"""The kernel and image steps: rendered stage arguments, properties, status text and the serial log."""

from gentoo_farm.stageprotocol import SERIAL_LOG_END, SERIAL_LOG_MARKER
from gentoo_farm.steps.base import SIGTERM_GRACE_SECONDS
from gentoo_farm.steps.image import BootTest, BuildDisk
from gentoo_farm.steps.kernel import BuildKernel
from tests.stagesteps import STAGE_ENV, know_the_nonce, result_line

# isort: split
# Importing buildbot.test turns every warning into an error: the farm's modules must be imported first.
from buildbot.process.properties import Property
from buildbot.process.results import FAILURE, SUCCESS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import ExpectShell, TestBuildStepMixin
from twisted.trial import unittest

CONSOLE = "SYSLINUX 6.04 20210613 Copyright (C) 1994-2015 H. Peter Anvin et al\nINIT: version 3.08 booting\n"


class TestBootTest(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self):
        self.setup_test_reactor()
        know_the_nonce(self)
        return self.setup_test_build_step()

    def expect_boot(self, exit_code: int, stderr: str = "", login: str = ""):
        command = ExpectShell(
            env=STAGE_ENV,
            workdir="wkdir",
            command=[
                "farm-worker",
                "boot-test",
                "images/gentoo.qcow2",
                "--timeout",
                "300",
                "--kernel-release",
                "6.1.0-farm",
                "--expect-command",
                "farm-hello",
            ],
        ).stdout(
            "booting images/gentoo.qcow2\n"
            + login
            + f"{SERIAL_LOG_MARKER}images/gentoo.qcow2.serial.log -----\n{CONSOLE}{SERIAL_LOG_END}\n"
            + result_line(
                boot_test_serial_log="images/gentoo.qcow2.serial.log", boot_test_passed=exit_code == 0
            )
        )
        if stderr:
            command = command.stderr(stderr)
        self.expect_commands(command.exit(exit_code))

    async def test_serial_console_becomes_its_own_log(self):
        self.setup_step(
            BootTest(Property("image"), commands=["farm-hello"], kernel_release=Property("kernel_release"))
        )
        self.build.setProperty("image", "images/gentoo.qcow2", "test")
        self.build.setProperty("kernel_release", "6.1.0-farm", "test")
        self.expect_boot(0)
        self.expect_outcome(SUCCESS)
        self.expect_log_file("serial console", CONSOLE)
        self.expect_property("boot_test_passed", True)
        await self.run_step()

    async def test_status_text_says_how_long_the_login_took(self):
        self.setup_step(BootTest("images/gentoo.qcow2", commands=["farm-hello"], kernel_release="6.1.0-farm"))
        self.expect_boot(0, login=result_line(boot_test_login_seconds=41))
        self.expect_outcome(SUCCESS, "logged in over SSH after 41 s; every check passed")
        await self.run_step()

    async def test_status_text_of_a_test_without_login_says_the_checks_passed(self):
        self.setup_step(BootTest("images/gentoo.qcow2", commands=["farm-hello"], kernel_release="6.1.0-farm"))
        self.expect_boot(0)
        self.expect_outcome(SUCCESS, "booted; every check passed")
        await self.run_step()

    async def test_failed_check_is_the_status_text_and_the_log_is_still_attached(self):
        self.setup_step(BootTest("images/gentoo.qcow2", commands=["farm-hello"], kernel_release="6.1.0-farm"))
        message = (
            "boot test failed: the hostname 'farm-boot-test' from the metadata service: `uname -n` printed "
            "'localhost' (serial log: images/gentoo.qcow2.serial.log)"
        )
        self.expect_boot(1, f"farm-worker boot-test: error: {message}\n")
        self.expect_outcome(FAILURE)
        self.expect_result_summary({"step": f"boot-test: {message}"})
        self.expect_log_file("serial console", CONSOLE)
        await self.run_step()


DIST_LINE = "DIST linux-6.1.tar.xz 134728520 BLAKE2B 1a SHA512 2b"


class TestBuildKernel(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self):
        self.setup_test_reactor()
        know_the_nonce(self)
        return self.setup_test_build_step()

    async def test_compiler_error_is_the_status_text(self):
        self.setup_step(
            BuildKernel(
                ["http://store.test", "https://distfiles.gentoo.org"],
                Property("kernel_source_dist"),
                "../kernel-config/config",
                "vmlinuz.tar.zst",
                "/var/cache/farm/kernel",
                "/var/cache/farm/ccache",
            )
        )
        self.build.setProperty("kernel_source_dist", DIST_LINE, "farm-worker kernel-source")
        error = "kernel build failed: kernel/fork.c:12:1: error: expected ';' before '}' token"
        self.expect_commands(
            ExpectShell(
                env=STAGE_ENV,
                workdir="wkdir",
                command=[
                    "farm-worker",
                    "kernel",
                    "--mirror",
                    "http://store.test",
                    "--mirror",
                    "https://distfiles.gentoo.org",
                    "--source-dist",
                    DIST_LINE,
                    "--config",
                    "../kernel-config/config",
                    "--output",
                    "vmlinuz.tar.zst",
                    "--work-dir",
                    "/var/cache/farm/kernel",
                    "--ccache-dir",
                    "/var/cache/farm/ccache",
                ],
            )
            .stderr(f"farm-worker kernel: error: {error}\nmake[2]: *** [kernel/fork.o] Error 1\n")
            .exit(1)
        )
        self.expect_outcome(FAILURE)
        self.expect_result_summary({"step": f"build-kernel: {error}"})
        await self.run_step()


class TestBuildDisk(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self):
        self.setup_test_reactor()
        know_the_nonce(self)
        return self.setup_test_build_step()

    async def test_size_and_compression_become_arguments_and_results_properties(self):
        self.setup_step(
            BuildDisk("root", Property("disk_path"), size="4G", compress=False, compression="zlib")
        )
        self.build.setProperty("disk_path", "images/gentoo.qcow2", "test")
        self.expect_commands(
            ExpectShell(
                env=STAGE_ENV,
                workdir="wkdir",
                command=[
                    "farm-worker",
                    "disk",
                    "root",
                    "--output",
                    "images/gentoo.qcow2",
                    "--size",
                    "4G",
                    "--no-compress",
                    "--compression",
                    "zlib",
                ],
            )
            .stdout(
                result_line(
                    image_sha512="ff" * 64,
                    kernel_release="6.1.192-farm",
                    image_bytes=327_155_712,
                    disk_bytes=4 * 1024**3,
                )
            )
            .exit(0)
        )
        self.expect_outcome(SUCCESS, "qcow2 312.0 MiB (disk 4.0 GiB)")
        self.expect_property("kernel_release", "6.1.192-farm")
        self.expect_property("image_sha512", "ff" * 64)
        await self.run_step()


def test_a_stopped_stage_gets_sigterm_and_time_to_clean_up() -> None:
    disk = BuildDisk(root="root", output="image/gentoo.qcow2")
    assert (disk.sigtermTime, disk.interruptSignal) == (SIGTERM_GRACE_SECONDS, "KILL")
