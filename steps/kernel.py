"""The kernel builder's steps: a kernel from source (the farm's config) or from a binary package."""

from collections.abc import Sequence

from gentoo_farm.steps.base import FarmWorkerStep


class BuildKernel(FarmWorkerStep):
    """``farm-worker kernel``: compile the kernel config into a vmlinuz tarball, with ccache.

    Sets ``kernel_release``, ``vmlinuz_path`` and ``vmlinuz_sha512``; a config that does not compile
    fails the step with the compiler's error as its summary.
    """

    renderables = ("source_urls", "config", "output", "work_dir", "ccache_dir", "source_sha512")

    def __init__(
        self,
        source_urls: Sequence[object],
        config: object,
        output: object,
        work_dir: object,
        ccache_dir: object,
        source_sha512: object = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("name", "build-kernel")
        kwargs.setdefault("description", ["building", "kernel"])
        kwargs.setdefault("descriptionDone", ["kernel"])
        super().__init__("kernel", **kwargs)
        self.source_urls = source_urls
        self.config = config
        self.output = output
        self.work_dir = work_dir
        self.ccache_dir = ccache_dir
        self.source_sha512 = source_sha512

    def stage_arguments(self) -> list[object]:
        arguments: list[object] = []
        for url in self.source_urls:
            arguments += ["--source-url", url]
        if self.source_sha512:
            arguments += ["--source-sha512", self.source_sha512]
        return [
            *arguments,
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

    The package is a path on the worker, or fetched from ``package_urls`` (tried in order) into ``distdir``.
    """

    renderables = ("package", "output", "package_urls", "distdir")

    def __init__(
        self,
        package: object = None,
        output: object = None,
        package_urls: Sequence[object] = (),
        distdir: object = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("name", "kernel-from-package")
        super().__init__("kernel-package", **kwargs)
        self.package = package
        self.output = output
        self.package_urls = package_urls
        self.distdir = distdir

    def stage_arguments(self) -> list[object]:
        arguments: list[object] = [self.package] if self.package else []
        for url in self.package_urls:
            arguments += ["--package-url", url]
        if self.distdir:
            arguments += ["--distdir", self.distdir]
        return [*arguments, "--output", self.output]
