"""Steps that get Gentoo onto a worker: fetch and verify a release, unpack it, emerge the package set."""

from buildbot.process import logobserver

from gentoo_farm.emergeoutput import EMERGING
from gentoo_farm.steps.base import FarmWorkerStep, LiveStatus, StageArgument, declared


class FetchRelease(FarmWorkerStep):
    """Download the latest stage3 and a Portage snapshot and verify each against the key that signs it.

    Sets ``stage3_timestamp``, ``stage3_file``, ``stage3_path``, ``stage3_sha512``, ``snapshot_date``,
    ``snapshot_file``, ``snapshot_path``, ``snapshot_sha512`` and ``snapshot_md5``. With ``check_only``
    it only reads what upstream offers (the signed pointer and DIGESTS, the snapshot's .md5sum): a few
    kilobytes that the input key is made of. ``expect_*`` make the full fetch refuse anything else.
    """

    stage = "fetch-release"
    description = "fetching stage3 and snapshot"
    descriptionDone = "stage3 and snapshot verified"
    arguments = declared(
        mirror=StageArgument("--mirror"),
        keyring=StageArgument("--keyring"),
        release_key=StageArgument("--release-key"),
        snapshot_key=StageArgument("--snapshot-key"),
        dest=StageArgument("--dest"),
        arch=StageArgument("--arch", default="amd64"),
        variant=StageArgument("--variant", default="amd64-openrc"),
        snapshot=StageArgument("--snapshot", default="latest"),
        check_only=StageArgument("--check-only", "switch", default=False),
        expect_stage3_sha512=StageArgument("--expect-stage3-sha512", default=None),
        expect_snapshot_md5=StageArgument("--expect-snapshot-md5", default=None),
    )

    def __init__(self, *values: object, **kwargs: object) -> None:
        if kwargs.get("check_only"):
            kwargs.setdefault("name", "upstream-state")
            kwargs.setdefault("description", "reading upstream state")
            kwargs.setdefault("descriptionDone", "upstream state read")
        super().__init__(*values, **kwargs)


class UnpackRoot(FarmWorkerStep):
    """Unpack the stage3 and the snapshot, or a stage4, into a fresh build root; sets ``build_root``."""

    stage = "unpack-root"
    description = "unpacking the root"
    descriptionDone = "build root ready"
    arguments = declared(
        stage3=StageArgument("--stage3", default=None),
        snapshot=StageArgument("--snapshot", default=None),
        stage4=StageArgument("--stage4", default=None),
        root=StageArgument("--root"),
    )


class PackRoot(FarmWorkerStep):
    """Pack the emerged and pruned build root into a stage4 tarball; sets ``stage4_bytes``."""

    stage = "pack-root"
    description = "packing the stage4"
    descriptionDone = "stage4 packed"
    arguments = declared(root=StageArgument("--root"), output=StageArgument("--output"))


class EmergePackages(LiveStatus, FarmWorkerStep):
    """Emerge the package set into the build root through the farm binhost and distfile mirror.

    Sets ``packages_compiled``, ``packages_binary`` (of them ``packages_upstream_binary`` from the stage3's
    own binhost, with ``upstream_binhost`` "fallback" or "first") and ``distfiles_fetched`` (from Portage's
    own output and the DISTDIR), plus ``pkgdir`` and ``distdir`` for the push back to the store. While it
    runs its status follows Portage ("emerging 3/8 dev-libs/foo-1.0 (binary)"); when it is done it says
    how many packages came from the binhost and how many were compiled.
    """

    stage = "emerge"
    description = "emerging packages"
    descriptionDone = "packages emerged"
    arguments = declared(
        atoms=StageArgument(form="rest"),
        root=StageArgument("--root"),
        pkgdir=StageArgument("--pkgdir"),
        distdir=StageArgument("--distdir"),
        # Not "workdir": that is where a BuildStep runs its commands.
        scratch_dir=StageArgument("--workdir"),
        profile=StageArgument("--profile", default=None),
        binhost=StageArgument("--binhost", default=None),
        binhost_key=StageArgument("--binhost-key", default=None),
        upstream_binhost=StageArgument("--upstream-binhost", default=None),
        upstream_binhost_key=StageArgument("--upstream-binhost-key", default=None),
        distfile_mirror=StageArgument("--distfile-mirror", default=None),
        jobs=StageArgument("--jobs", default=None),
        upstream_mirrors=StageArgument("--upstream-mirror", "each", default=()),
    )

    def __init__(self, *values: object, **kwargs: object) -> None:
        super().__init__(*values, **kwargs)
        self.addLogObserver("stdio", logobserver.LineConsumerLogObserver(self._follow_portage))

    def _follow_portage(self):
        while True:
            stream, line = yield
            if stream == "o" and (match := EMERGING.match(line)):
                how = "binary" if match["binary"] else "compiling"
                self.show_live_status(f"emerging {match['number']}/{match['total']} {match['cpv']} ({how})")

    def success_summary(self) -> str:
        binary = len(self.getProperty("packages_binary") or [])
        compiled = len(self.getProperty("packages_compiled") or [])
        return f"{binary} from the binhost, {compiled} compiled"
