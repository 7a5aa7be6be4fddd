"""``farm-worker prune-root`` with real Portage: build-only packages and the repository leave the image."""

from pathlib import Path

import pytest

from tests.test_emerge import build_root
from tests.world import World, build_world
from tests.world.stages import run_stage

EBUILD_HEAD = """\
EAPI=8
DESCRIPTION="{description}"
HOMEPAGE="https://farm.invalid/"
LICENSE="GPL-2"
SLOT="0"
KEYWORDS="amd64"
S="${{WORKDIR}}"
"""
BUILD_TOOL = "dev-libs/farm-buildtool"
BUILT = "app-misc/farm-built"


def add_ebuild(repository: Path, atom: str, body: str) -> None:
    package = repository / atom
    package.mkdir(parents=True)
    (package / f"{atom.split('/')[1]}-1.0.ebuild").write_text(body)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("prune") / "world")


@pytest.fixture
def emerged_root(world: World, tmp_path: Path) -> Path:
    """A root where farm-built is installed and farm-buildtool was needed only to build it.

    DEPEND, not BDEPEND: with ROOT set, Portage installs BDEPEND on the worker (BROOT), DEPEND (headers,
    static libraries) into the root, where only depclean takes it out again.
    """
    root = build_root(world, tmp_path / "root")
    repository = root / "var/db/repos/gentoo"
    add_ebuild(
        repository,
        BUILD_TOOL,
        EBUILD_HEAD.format(description="A header only builds need")
        + 'src_install() {\n\techo "#define FARM 1" > "${T}"/farm-buildtool.h\n'
        '\tdoheader "${T}"/farm-buildtool.h\n}\n',
    )
    add_ebuild(
        repository,
        BUILT,
        EBUILD_HEAD.format(description="A package built with farm-buildtool") + f'DEPEND="{BUILD_TOOL}"\n'
        "src_install() {\n\tinsinto /usr/share/farm-built\n"
        '\techo built > "${T}"/made\n\tdoins "${T}"/made\n}\n',
    )
    work = tmp_path / "work"
    emerged = run_stage(
        "emerge", "--root", root, "--pkgdir", work / "pkgs", "--distdir", work / "distfiles",
        "--workdir", work / "scratch", "--profile", world.profile, "--jobs", "1", BUILT,
    )  # fmt: skip
    assert emerged.returncode == 0, emerged.stdout[-3000:] + emerged.stderr
    assert (root / "usr/include/farm-buildtool.h").exists()
    return root


def test_build_only_packages_and_the_repository_leave_the_root(emerged_root: Path, tmp_path: Path) -> None:
    pruned = run_stage("prune-root", emerged_root, "--workdir", tmp_path / "prune")
    assert pruned.returncode == 0, pruned.stdout[-3000:] + pruned.stderr

    assert pruned.result["packages_unmerged"] == [f"{BUILD_TOOL}-1.0"]
    assert not (emerged_root / "usr/include/farm-buildtool.h").exists()
    assert not (emerged_root / f"var/db/pkg/{BUILD_TOOL}-1.0").exists()
    assert (emerged_root / "usr/share/farm-built/made").read_text() == "built\n"
    assert (emerged_root / f"var/db/pkg/{BUILT}-1.0").is_dir()
    assert list((emerged_root / "var/db/repos/gentoo").iterdir()) == []
    assert pruned.result["root_bytes_pruned"] < pruned.result["root_bytes_emerged"]
    assert "after pruning" in pruned.stdout


def test_kept_on_request(emerged_root: Path, tmp_path: Path) -> None:
    pruned = run_stage(
        "prune-root", emerged_root, "--workdir", tmp_path / "prune", "--keep-build-deps", "--keep-repository"
    )
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.result["packages_unmerged"] == []
    assert (emerged_root / "usr/include/farm-buildtool.h").exists()
    assert (emerged_root / "var/db/repos/gentoo/profiles").is_dir()


def test_a_root_that_was_never_emerged_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    pruned = run_stage("prune-root", tmp_path / "root", "--workdir", tmp_path / "prune")
    assert pruned.returncode == 1
    assert "not an emerged root" in pruned.error
