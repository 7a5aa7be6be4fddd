"""The kernel builder's steps: a kernel from source (the farm's config) or from a binary package."""

from collections.abc import Sequence

from gentoo_farm.steps.base import FarmWorkerStep


class BuildKernel(FarmWorkerStep):
    """``farm-worker kernel``: compile the kernel config into a vmlinuz tarball, with ccache.

    Sets ``kernel_release``, ``vmlinuz_path`` and ``vmlinuz_sha512``; a config that does not compile
    fails the step with the compiler's error as its summary.
    """

    renderables = ("mirrors", "source_dist", "config", "output", "work_dir", "ccache_dir")

    def __init__(
        self,
        mirrors: Sequence[object],
        source_dist: object,
        config: object,
        output: object,
        work_dir: object,
        ccache_dir: object,
        **kwargs,
    ) -> None:
        kwargs.setdefault("name", "build-kernel")
        kwargs.setdefault("description", ["building", "kernel"])
        kwargs.setdefault("descriptionDone", ["kernel"])
        super().__init__("kernel", **kwargs)
        self.mirrors = mirrors
        self.source_dist = source_dist
        self.config = config
        self.output = output
        self.work_dir = work_dir
        self.ccache_dir = ccache_dir

    def stage_arguments(self) -> list[object]:
        arguments: list[object] = []
        for mirror in self.mirrors:
            arguments += ["--mirror", mirror]
        return [
            *arguments,
            "--source-dist",
            self.source_dist,
            "--config",
            self.config,
            "--output",
            self.output,
            "--work-dir",
            self.work_dir,
            "--ccache-dir",
            self.ccache_dir,
        ]


class KernelFromPackage(FarmWorkerStep):
    """``farm-worker kernel-package``: a distribution's binary kernel package as the vmlinuz tarball.

    The package is a path on the worker, or fetched from ``mirrors`` (tried in order) into ``distdir``,
    accepted only when it matches ``package_dist`` (its Manifest DIST line).
    """

    renderables = ("package", "output", "mirrors", "package_dist", "distdir")

    def __init__(
        self,
        package: object = None,
        output: object = None,
        mirrors: Sequence[object] = (),
        package_dist: object = None,
        distdir: object = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("name", "kernel-from-package")
        super().__init__("kernel-package", **kwargs)
        self.package = package
        self.output = output
        self.mirrors = mirrors
        self.package_dist = package_dist
        self.distdir = distdir

    def stage_arguments(self) -> list[object]:
        arguments: list[object] = [self.package] if self.package else []
        for mirror in self.mirrors:
            arguments += ["--mirror", mirror]
        if self.package_dist:
            arguments += ["--package-dist", self.package_dist]
        if self.distdir:
            arguments += ["--distdir", self.distdir]
        return [*arguments, "--output", self.output]
