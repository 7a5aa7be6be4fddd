"""The kernel builder's steps: a kernel from source (the farm's config) or from a binary package, and
the kernel ccache the farm shares with workers that start empty (gentoo_farm/kernel_ccache.py)."""

from typing import Any

from buildbot.process.results import SUCCESS

from gentoo_farm.kernel_ccache import (
    CcachePointer,
    advance_pointer,
    read_pointer,
    tarball_key,
    verify_tarball,
)
from gentoo_farm.steps.base import REQUIRED, FarmWorkerStep, StageArgument, declared
from gentoo_farm.steps.store import SignedUrlsStep, StoreStep, declared_parameters
from gentoo_farm.store import ArtifactStore, StoreError

SHARED_CCACHE_OPTIONS: dict[str, Any] = {
    "haltOnFailure": False,
    "flunkOnFailure": False,
    "warnOnFailure": True,
}
"""The shared ccache only changes how fast the kernel compiles: a step of it that fails warns, and the
kernel is built (cold) and published all the same."""


class OfferKernelCcache(SignedUrlsStep):
    """Write ``map_path`` for ``farm-worker kernel-ccache-seed``: a signed download URL, sha256 and size
    of the ccache tarball ``arch``'s pointer names, or ``{}`` while there is none."""

    name = "offer-kernel-ccache"
    parameters = declared_parameters(arch=REQUIRED, map_path=REQUIRED)
    renderables = ("map_path",)
    options = SHARED_CCACHE_OPTIONS
    arch: str

    async def run(self) -> int:
        expiry = self.store_settings.url_expiry_seconds

        def offer(store: ArtifactStore) -> tuple[dict[str, object], CcachePointer | None]:
            pointer = read_pointer(store, self.arch)
            if pointer is None:
                return {}, None
            url = store.download_url(pointer.key, expiry)
            return {"url": url, "sha256": pointer.sha256, "size": pointer.size}, pointer

        try:
            urls, pointer = await self.in_thread(offer)
        except StoreError as error:
            return await self.fail(error)
        outcome = (
            f"kernel ccache of build {pointer.build} ({pointer.size} bytes) offered"
            if pointer is not None
            else "no shared kernel ccache yet"
        )
        return await self.hand_over(str(self.map_path), urls, {}, outcome)


class SignKernelCcacheUpload(SignedUrlsStep):
    """Write ``map_path`` for ``farm-worker upload``: one create-only URL for the packed ccache's content
    key, bound to its reported size, or none when the store has that content already."""

    name = "sign-kernel-ccache-upload"
    parameters = declared_parameters(
        arch=REQUIRED, sha256=REQUIRED, size=REQUIRED, tarball=REQUIRED, map_path=REQUIRED
    )
    renderables = ("sha256", "size", "tarball", "map_path")
    options = SHARED_CCACHE_OPTIONS
    arch: str

    async def run(self) -> int:
        key = tarball_key(self.arch, str(self.sha256))
        expiry = self.store_settings.url_expiry_seconds

        def sign(store: ArtifactStore) -> dict[str, str]:
            if store.exists(key):
                return {}
            return {str(self.tarball): store.upload_url(key, expiry, int(str(self.size)))}

        try:
            urls = await self.in_thread(sign)
        except StoreError as error:
            return await self.fail(error)
        outcome = f"upload URL for {key}" if urls else f"{key} is in the store already"
        return await self.hand_over(str(self.map_path), urls, {}, outcome)


class AdvanceKernelCcache(StoreStep):
    """Check the uploaded ccache tarball against what the worker packed, then point ``arch``'s latest
    kernel ccache at it, unless a later build's is named already (forward only)."""

    name = "share-kernel-ccache"
    parameters = declared_parameters(arch=REQUIRED, sha256=REQUIRED, size=REQUIRED, build_number=REQUIRED)
    renderables = ("sha256", "size", "build_number")
    options = SHARED_CCACHE_OPTIONS
    arch: str

    async def run(self) -> int:
        key = tarball_key(self.arch, str(self.sha256))
        pointer = CcachePointer(key, str(self.sha256), int(str(self.size)), int(str(self.build_number)))

        def share(store: ArtifactStore) -> bool:
            verify_tarball(store, key, pointer.sha256, pointer.size)
            return advance_pointer(store, self.arch, pointer)

        try:
            moved = await self.in_thread(share)
        except StoreError as error:
            return await self.fail(error)
        self.outcome = (
            f"later kernel builds start from this build's ccache ({pointer.size} bytes)"
            if moved
            else "a later build's kernel ccache is shared already"
        )
        return SUCCESS


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


class SeedKernelCcache(FarmWorkerStep):
    """``farm-worker kernel-ccache-seed``: an empty ccache directory filled from the shared kernel ccache
    (a damaged one is skipped with a warning in the log)."""

    stage = "kernel-ccache-seed"
    name = "seed-kernel-ccache"
    arguments = declared(map=StageArgument("--map"), ccache_dir=StageArgument("--ccache-dir"))


class PackKernelCcache(FarmWorkerStep):
    """``farm-worker kernel-ccache-pack``: the ccache as a tar.zst after a build with misses; sets
    ``kernel_ccache_packed``, ``kernel_ccache_sha256`` and ``kernel_ccache_size``."""

    stage = "kernel-ccache-pack"
    name = "pack-kernel-ccache"
    arguments = declared(ccache_dir=StageArgument("--ccache-dir"), output=StageArgument("--output"))


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
