"""The image builder's steps: pruning, assembly, the image manifest, disk, boot test."""

from buildbot.process import logobserver

from gentoo_farm.qemuboot import CLOUD_USER
from gentoo_farm.stageprotocol import SERIAL_LOG_END, SERIAL_LOG_MARKER
from gentoo_farm.steps.base import FarmWorkerStep, StageArgument, declared


class PruneRoot(FarmWorkerStep):
    """``farm-worker prune-root``: build-only packages and the repository out of the emerged root.

    Sets ``root_bytes_emerged``, ``root_bytes_pruned`` and ``packages_unmerged``; the status text says
    how much it took out.
    """

    stage = "prune-root"
    description = "pruning build-only files"
    arguments = declared(
        root=StageArgument(),
        scratch_dir=StageArgument("--workdir"),
        keep_build_deps=StageArgument("--keep-build-deps", "switch", default=False),
        keep_repository=StageArgument("--keep-repository", "switch", default=False),
    )

    def success_summary(self) -> str | None:
        sizes = self.reported_sizes("root_bytes_emerged", "root_bytes_pruned")
        return f"root {sizes[0]} -> {sizes[1]}" if sizes else None


class AssembleImage(FarmWorkerStep):
    """``farm-worker assemble``: kernel + overlay + cloud user (and its way to root) into the build root."""

    stage = "assemble"
    name = "assemble-image"
    arguments = declared(
        root=StageArgument(),
        vmlinuz=StageArgument("--vmlinuz"),
        overlay=StageArgument("--overlay"),
        user=StageArgument("--user", default=CLOUD_USER),
        admin=StageArgument("--admin", default="sudo"),
    )


class WriteImageManifest(FarmWorkerStep):
    """``farm-worker image-manifest``: every package in the image, where it came from, kernel and inputs.

    Sets ``image_package_count``.
    """

    stage = "image-manifest"
    description = "listing packages"
    arguments = declared(
        root=StageArgument(),
        inputs=StageArgument("--inputs", default="{}"),
        compiled=StageArgument("--compiled", "list", default=()),
        binary=StageArgument("--binary", "list", default=()),
        upstream_binary=StageArgument("--upstream-binary", "list", default=()),
        json_output=StageArgument("--json"),
        text_output=StageArgument("--text"),
    )

    def success_summary(self) -> str | None:
        count = self.getProperty("image_package_count")
        return None if count is None else f"{count} packages listed"


class BuildDisk(FarmWorkerStep):
    """``farm-worker disk``: raw disk + qcow2; sets ``image_path``, ``image_sha512``, ``kernel_release``,
    ``image_bytes`` (the qcow2) and ``disk_bytes`` (the disk it holds); the status text gives both sizes."""

    stage = "disk"
    name = "build-disk"
    arguments = declared(
        root=StageArgument(),
        output=StageArgument("--output"),
        size=StageArgument("--size", default=None),
        compress=StageArgument("--compress", "toggle", default=True),
        compression=StageArgument("--compression", default="zstd"),
    )

    def success_summary(self) -> str | None:
        sizes = self.reported_sizes("image_bytes", "disk_bytes")
        return f"qcow2 {sizes[0]} (disk {sizes[1]})" if sizes else None


class BootTest(FarmWorkerStep):
    """``farm-worker boot-test``: boot the image, log in over SSH; the serial console becomes its own log.

    The status text says how long the image took from power-on to the SSH login
    (``boot_test_login_seconds``), or that every check passed when the test logs in to nothing
    (``--metadata none``).
    """

    stage = "boot-test"
    arguments = declared(
        image=StageArgument(),
        # Not "timeout": ShellMixin uses that name for its no-output timeout of the whole command.
        boot_timeout=StageArgument("--timeout", default=300),
        kernel_release=StageArgument("--kernel-release", default=""),
        commands=StageArgument("--expect-command", "each", default=()),
    )

    def __init__(self, *values: object, **kwargs: object) -> None:
        super().__init__(*values, **kwargs)
        self.serial_lines: list[str] = []
        self.addLogObserver("stdio", logobserver.LineConsumerLogObserver(self._collect_serial_log))

    def _collect_serial_log(self):
        inside = False
        while True:
            stream, line = yield
            if stream != "o":
                continue
            if line.startswith(SERIAL_LOG_MARKER):
                inside = True
            elif line == SERIAL_LOG_END:
                inside = False
            elif inside:
                self.serial_lines.append(line + "\n")

    async def run(self) -> int:
        result = await super().run()
        log = await self.addLog("serial console")
        await log.addStdout("".join(self.serial_lines) or "(the stage printed no serial log)\n")
        await log.finish()
        return result

    def success_summary(self) -> str:
        seconds = self.getProperty("boot_test_login_seconds")
        if seconds is not None:
            return f"logged in over SSH after {seconds} s; every check passed"
        return "booted; every check passed"
