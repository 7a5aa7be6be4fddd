"""The image builder's steps: pruning, assembly, the image manifest, disk, boot test."""

from collections.abc import Sequence

from buildbot.process import logobserver
from buildbot.process.results import SUCCESS

from gentoo_farm.stageprotocol import SERIAL_LOG_END, SERIAL_LOG_MARKER
from gentoo_farm.steps.base import FarmWorkerStep
from gentoo_farm.units import human_size

# The account that gets the instance's SSH key (the image's conf.d/cloud-metadata names it too).
CLOUD_USER = "ec2-user"


class PruneRoot(FarmWorkerStep):
    """``farm-worker prune-root``: build-only packages and the repository out of the emerged root.

    Sets ``root_bytes_emerged``, ``root_bytes_pruned`` and ``packages_unmerged``; the status text says
    how much it took out.
    """

    renderables = ("root", "scratch_dir", "keep_build_deps", "keep_repository")

    def __init__(
        self,
        root: object,
        scratch_dir: object,
        keep_build_deps: object = False,
        keep_repository: object = False,
        **kwargs,
    ) -> None:
        kwargs.setdefault("name", "prune-root")
        kwargs.setdefault("description", ["pruning", "build-only", "files"])
        super().__init__("prune-root", **kwargs)
        self.root = root
        self.scratch_dir = scratch_dir
        self.keep_build_deps = keep_build_deps
        self.keep_repository = keep_repository

    def stage_arguments(self) -> list[object]:
        arguments: list[object] = [self.root, "--workdir", self.scratch_dir]
        if self.keep_build_deps:
            arguments.append("--keep-build-deps")
        if self.keep_repository:
            arguments.append("--keep-repository")
        return arguments

    def getResultSummary(self) -> dict[str, str]:
        emerged = self.getProperty("root_bytes_emerged")
        pruned = self.getProperty("root_bytes_pruned")
        if self.results == SUCCESS and emerged is not None and pruned is not None:
            return {"step": f"root {human_size(emerged)} -> {human_size(pruned)}"}
        return super().getResultSummary()


class AssembleImage(FarmWorkerStep):
    """``farm-worker assemble``: kernel + overlay + cloud user (and its way to root) into the build root."""

    renderables = ("root", "vmlinuz", "overlay", "user", "admin")

    def __init__(
        self,
        root: object,
        vmlinuz: object,
        overlay: object,
        user: object = CLOUD_USER,
        admin: object = "sudo",
        **kwargs,
    ) -> None:
        kwargs.setdefault("name", "assemble-image")
        super().__init__("assemble", **kwargs)
        self.root = root
        self.vmlinuz = vmlinuz
        self.overlay = overlay
        self.user = user
        self.admin = admin

    def stage_arguments(self) -> list[object]:
        return [
            self.root, "--vmlinuz", self.vmlinuz, "--overlay", self.overlay, "--user", self.user,
            "--admin", self.admin,
        ]  # fmt: skip


class WriteImageManifest(FarmWorkerStep):
    """``farm-worker image-manifest``: every package in the image, where it came from, kernel and inputs.

    Sets ``image_package_count``.
    """

    renderables = ("root", "json_output", "text_output", "compiled", "binary", "inputs")

    def __init__(
        self,
        root: object,
        json_output: object,
        text_output: object,
        compiled: object = (),
        binary: object = (),
        inputs: object = "{}",
        **kwargs,
    ) -> None:
        kwargs.setdefault("name", "image-manifest")
        kwargs.setdefault("description", ["listing", "packages"])
        super().__init__("image-manifest", **kwargs)
        self.root = root
        self.json_output = json_output
        self.text_output = text_output
        self.compiled = compiled
        self.binary = binary
        self.inputs = inputs

    def stage_arguments(self) -> list[object]:
        return [
            self.root, "--json", self.json_output, "--text", self.text_output, "--inputs", self.inputs,
            "--compiled", *self.compiled, "--binary", *self.binary,
        ]  # fmt: skip

    def getResultSummary(self) -> dict[str, str]:
        count = self.getProperty("image_package_count")
        if self.results == SUCCESS and count is not None:
            return {"step": f"{count} packages listed"}
        return super().getResultSummary()


class BuildDisk(FarmWorkerStep):
    """``farm-worker disk``: raw disk + qcow2; sets ``image_path``, ``image_sha512``, ``kernel_release``,
    ``image_bytes`` (the qcow2) and ``disk_bytes`` (the disk it holds); the status text gives both sizes."""

    renderables = ("root", "output", "size", "compress")

    def __init__(
        self,
        root: object,
        output: object,
        size: object = None,
        compress: object = True,
        **kwargs,
    ) -> None:
        kwargs.setdefault("name", "build-disk")
        super().__init__("disk", **kwargs)
        self.root = root
        self.output = output
        self.size = size
        self.compress = compress

    def stage_arguments(self) -> list[object]:
        arguments: list[object] = [self.root, "--output", self.output]
        if self.size:
            arguments += ["--size", self.size]
        arguments.append("--compress" if self.compress else "--no-compress")
        return arguments

    def getResultSummary(self) -> dict[str, str]:
        image = self.getProperty("image_bytes")
        disk = self.getProperty("disk_bytes")
        if self.results == SUCCESS and image is not None and disk is not None:
            return {"step": f"qcow2 {human_size(image)} (disk {human_size(disk)})"}
        return super().getResultSummary()


class BootTest(FarmWorkerStep):
    """``farm-worker boot-test``: boot the image, log in over SSH; the serial console becomes its own log.

    The status text says how long the image took from power-on to the SSH login
    (``boot_test_login_seconds``), or that every check passed when the test logs in to nothing
    (``--metadata none``).
    """

    renderables = ("image", "boot_timeout", "commands", "kernel_release")

    def __init__(
        self,
        image: object,
        boot_timeout: object = 300,
        commands: Sequence[object] = (),
        kernel_release: object = "",
        **kwargs,
    ) -> None:
        kwargs.setdefault("name", "boot-test")
        super().__init__("boot-test", **kwargs)
        self.image = image
        # Not "timeout": ShellMixin uses that name for its no-output timeout of the whole command.
        self.boot_timeout = boot_timeout
        self.commands = commands
        self.kernel_release = kernel_release
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

    def stage_arguments(self) -> list[object]:
        arguments: list[object] = [self.image, "--timeout", self.boot_timeout]
        if self.kernel_release:
            arguments += ["--kernel-release", self.kernel_release]
        for command in self.commands:
            arguments += ["--expect-command", command]
        return arguments

    async def run(self) -> int:
        result = await super().run()
        log = await self.addLog("serial console")
        await log.addStdout("".join(self.serial_lines) or "(the stage printed no serial log)\n")
        await log.finish()
        return result

    def getResultSummary(self) -> dict[str, str]:
        if self.results != SUCCESS:
            return super().getResultSummary()
        seconds = self.getProperty("boot_test_login_seconds")
        if seconds is not None:
            return {"step": f"logged in over SSH after {seconds} s; every check passed"}
        return {"step": "booted; every check passed"}
