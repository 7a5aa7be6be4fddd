"""The kernel builder's steps: a kernel from source (the farm's config) or from a binary package."""

from gentoo_farm.steps.base import FarmWorkerStep, StageArgument, declared


class BuildKernel(FarmWorkerStep):
    """``farm-worker kernel``: compile the kernel config into a vmlinuz tarball, with ccache.

    Sets ``kernel_release``, ``vmlinuz_path`` and ``vmlinuz_sha512``; a config that does not compile
    fails the step with the compiler's error as its summary.
    """

    stage = "kernel"
    name = "build-kernel"
    description = "building kernel"
    descriptionDone = "kernel"
    arguments = declared(
        mirrors=StageArgument("--mirror", "each"),
        source_dist=StageArgument("--source-dist"),
        config=StageArgument("--config"),
        output=StageArgument("--output"),
        work_dir=StageArgument("--work-dir"),
        ccache_dir=StageArgument("--ccache-dir"),
    )


class KernelFromPackage(FarmWorkerStep):
    """``farm-worker kernel-package``: a distribution's binary kernel package as the vmlinuz tarball.

    The package is a path on the worker, or fetched from ``mirrors`` (tried in order) into ``distdir``,
    accepted only when it matches ``package_dist`` (its Manifest DIST line).
    """

    stage = "kernel-package"
    name = "kernel-from-package"
    arguments = declared(
        package=StageArgument(default=None),
        mirrors=StageArgument("--mirror", "each", default=()),
        package_dist=StageArgument("--package-dist", default=None),
        distdir=StageArgument("--distdir", default=None),
        output=StageArgument("--output"),
    )
