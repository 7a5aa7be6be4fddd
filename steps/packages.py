"""Steps that get Gentoo onto a worker: fetch and verify a release, unpack it, emerge the package set."""

from collections.abc import Sequence

from buildbot.process import logobserver
from buildbot.process.results import SUCCESS

from gentoo_farm.emergeoutput import EMERGING
from gentoo_farm.steps.base import FarmWorkerStep


class FetchRelease(FarmWorkerStep):
    """Download the latest stage3 and a Portage snapshot and verify each against the key that signs it.

    Sets ``stage3_timestamp``, ``stage3_file``, ``stage3_path``, ``stage3_sha512``, ``snapshot_date``,
    ``snapshot_file``, ``snapshot_path``, ``snapshot_sha512`` and ``snapshot_md5``. With ``check_only``
    it only reads what upstream offers (the signed pointer and DIGESTS, the snapshot's .md5sum): a few
    kilobytes that the input key is made of. ``expect_*`` make the full fetch refuse anything else.
    """

    renderables = (
        "mirror", "keyring", "release_key", "snapshot_key", "dest", "arch", "variant", "snapshot",
        "expect_stage3_sha512", "expect_snapshot_md5",
    )  # fmt: skip

    def __init__(
        self,
        mirror: object,
        keyring: object,
        release_key: object,
        snapshot_key: object,
        dest: object,
        arch: object = "amd64",
        variant: object = "amd64-openrc",
        snapshot: object = "latest",
        check_only: bool = False,
        expect_stage3_sha512: object = None,
        expect_snapshot_md5: object = None,
        **kwargs,
    ) -> None:
        if check_only:
            kwargs.setdefault("name", "upstream-state")
            kwargs.setdefault("description", ["reading", "upstream", "state"])
            kwargs.setdefault("descriptionDone", ["upstream", "state", "read"])
        kwargs.setdefault("name", "fetch-release")
        kwargs.setdefault("description", ["fetching", "stage3", "and", "snapshot"])
        kwargs.setdefault("descriptionDone", ["stage3", "and", "snapshot", "verified"])
        super().__init__("fetch-release", **kwargs)
        self.check_only = check_only
        self.expect_stage3_sha512 = expect_stage3_sha512
        self.expect_snapshot_md5 = expect_snapshot_md5
        self.mirror = mirror
        self.keyring = keyring
        self.release_key = release_key
        self.snapshot_key = snapshot_key
        self.dest = dest
        self.arch = arch
        self.variant = variant
        self.snapshot = snapshot

    def stage_arguments(self) -> list[object]:
        arguments: list[object] = [
            "--mirror", self.mirror, "--keyring", self.keyring, "--release-key", self.release_key,
            "--snapshot-key", self.snapshot_key, "--dest", self.dest,
            "--arch", self.arch, "--variant", self.variant, "--snapshot", self.snapshot,
        ]  # fmt: skip
        if self.check_only:
            arguments.append("--check-only")
        if self.expect_stage3_sha512:
            arguments += ["--expect-stage3-sha512", self.expect_stage3_sha512]
        if self.expect_snapshot_md5:
            arguments += ["--expect-snapshot-md5", self.expect_snapshot_md5]
        return arguments


class UnpackRoot(FarmWorkerStep):
    """Unpack the stage3 and the snapshot into a fresh build root; sets ``build_root``."""

    renderables = ("stage3", "snapshot", "root")

    def __init__(self, stage3: object, snapshot: object, root: object, **kwargs) -> None:
        kwargs.setdefault("name", "unpack-root")
        kwargs.setdefault("description", ["unpacking", "stage3"])
        kwargs.setdefault("descriptionDone", ["build", "root", "ready"])
        super().__init__("unpack-root", **kwargs)
        self.stage3 = stage3
        self.snapshot = snapshot
        self.root = root

    def stage_arguments(self) -> list[object]:
        return ["--stage3", self.stage3, "--snapshot", self.snapshot, "--root", self.root]


class EmergePackages(FarmWorkerStep):
    """Emerge the package set into the build root through the farm binhost and distfile mirror.

    Sets ``packages_compiled``, ``packages_binary`` and ``distfiles_fetched`` (from Portage's own
    output and the DISTDIR), plus ``pkgdir`` and ``distdir`` for the push back to the store. While it
    runs its status follows Portage ("emerging 3/8 dev-libs/foo-1.0 (binary)"); when it is done it says
    how many packages came from the binhost and how many were compiled.
    """

    renderables = (
        "atoms", "root", "pkgdir", "distdir", "scratch_dir", "profile", "binhost", "binhost_key",
        "distfile_mirror", "upstream_mirrors", "jobs",
    )  # fmt: skip

    def __init__(
        self,
        atoms: object,
        root: object,
        pkgdir: object,
        distdir: object,
        scratch_dir: object,
        profile: object = None,
        binhost: object = None,
        binhost_key: object = None,
        distfile_mirror: object = None,
        upstream_mirrors: object = (),
        jobs: object = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("name", "emerge")
        kwargs.setdefault("description", ["emerging", "packages"])
        kwargs.setdefault("descriptionDone", ["packages", "emerged"])
        super().__init__("emerge", **kwargs)
        self.atoms = atoms
        self.root = root
        self.pkgdir = pkgdir
        self.distdir = distdir
        # Not "workdir": that is where a BuildStep runs its commands.
        self.scratch_dir = scratch_dir
        self.profile = profile
        self.binhost = binhost
        self.binhost_key = binhost_key
        self.distfile_mirror = distfile_mirror
        self.upstream_mirrors = upstream_mirrors
        self.jobs = jobs
        self.emerging: str | None = None
        self.addLogObserver("stdio", logobserver.LineConsumerLogObserver(self._follow_portage))

    def _follow_portage(self):
        while True:
            stream, line = yield
            if stream == "o" and (match := EMERGING.match(line)):
                how = "binary" if match["binary"] else "compiling"
                self.emerging = f"emerging {match['number']}/{match['total']} {match['cpv']} ({how})"
                self.updateSummary()

    def getCurrentSummary(self) -> dict[str, str]:
        if self.emerging:
            return {"step": self.emerging}
        return super().getCurrentSummary()

    def getResultSummary(self) -> dict[str, str]:
        if self.results != SUCCESS:
            return super().getResultSummary()
        binary = len(self.getProperty("packages_binary") or [])
        compiled = len(self.getProperty("packages_compiled") or [])
        return {"step": f"{binary} from the binhost, {compiled} compiled"}

    def stage_arguments(self) -> list[object]:
        arguments: list[object] = ["--root", self.root, "--pkgdir", self.pkgdir, "--distdir", self.distdir]
        arguments += ["--workdir", self.scratch_dir]
        for option, value in (
            ("--profile", self.profile),
            ("--binhost", self.binhost),
            ("--binhost-key", self.binhost_key),
            ("--distfile-mirror", self.distfile_mirror),
            ("--jobs", self.jobs),
        ):
            if value:
                arguments += [option, value]
        for mirror in _as_list(self.upstream_mirrors):
            arguments += ["--upstream-mirror", mirror]
        # "--" keeps an atom like "-foo" (or a set "@x") from being read as an option.
        return [*arguments, "--", *_as_list(self.atoms)]


def _as_list(value: object) -> list[object]:
    """A rendered property may hold one string or a list; a package set in farm.toml is a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, Sequence):
        return list(value)
    return [value]
