"""Push-back of real Portage output: two builds push their new gpkg files and distfiles at the same time,
both end up in the binhost index, and a third build installs everything from the farm without compiling.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gentoo_farm.signing import FarmKey
from gentoo_farm.stageprotocol import RESULT_MARKER
from gentoo_farm.store import ArtifactStore, open_store
from gentoo_farm.store.binhost import (
    LAYOUT_CONF,
    PushbackCandidates,
    index_key,
    merge_distfiles,
    parse_index,
    pushback_uploads,
    render_index,
)
from tests.services.s3 import make_bucket_public
from tests.services.store import put_snapshot
from tests.world import build_world
from tests.world.repository import PROFILE
from tests.world.server import WorldServer

pytest_plugins = ["tests.services.store"]

pytestmark = pytest.mark.slow

BUILDS = {"a": "app-misc/farm-hello", "b": "app-misc/farm-motd"}
MERGE = (
    "import sys; from pathlib import Path; from gentoo_farm.store.binhost import merge_pushback; "
    "from gentoo_farm.signing import FarmKey; "
    "{open}; print(merge_pushback(store, *sys.argv[1:3], FarmKey(Path(sys.argv[3]))))"
)


def farm_worker(*args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "farm-worker"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, (
        f"farm-worker {args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    reported: dict[str, object] = {}
    for line in result.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            reported.update(json.loads(line[len(RESULT_MARKER) :]))
    return reported


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The world's ebuild repository (its snapshot unpacked), its distfiles on an HTTP upstream mirror."""
    home = tmp_path_factory.mktemp("upstream")
    world = build_world(home / "world")
    subprocess.run(["tar", "-xJf", world.file(world.snapshot_path), "-C", home], check=True)
    with WorldServer(world.mirror_dir) as server:
        yield home / "portage", server.url


def emerge_arguments(work: Path, repo: Path, atom: str, *mirror_args: object) -> list[object]:
    shutil.copytree(repo, work / "root/var/db/repos/gentoo")
    return [
        "emerge",
        atom,
        "--root",
        work / "root",
        "--pkgdir",
        work / "pkgdir",
        "--distdir",
        work / "distdir",
        "--workdir",
        work / "work",
        "--profile",
        PROFILE,
        "--jobs",
        "1",
        *mirror_args,
    ]


def emerge(work: Path, repo: Path, atom: str, *mirror_args: object) -> dict[str, object]:
    return farm_worker(*emerge_arguments(work, repo, atom, *mirror_args))


def emerge_process(
    work: Path, repo: Path, atom: str, *mirror_args: object
) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "farm-worker")]
    command += [str(argument) for argument in emerge_arguments(work, repo, atom, *mirror_args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def farm_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmKey]:
    """The farm's signing key (the master's), and its public half as a worker gets it."""
    key = FarmKey.create(tmp_path_factory.mktemp("farm-key") / "gnupg", "Test farm <farm@localhost>")
    (key.home.parent / "public.asc").write_text(key.public_key())
    yield key
    key.stop_agent()


@pytest.fixture(scope="module")
def builds(upstream: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two from-source builds (each compiles farm-core and its own package), made once for both backends."""
    repo, mirror = upstream
    works = {}
    for name, atom in BUILDS.items():
        works[name] = tmp_path_factory.mktemp(f"build-{name}")
        reported = emerge(works[name], repo, atom, "--upstream-mirror", mirror)
        assert "dev-libs/farm-core-1.0" in reported["packages_compiled"]
    return works


def push(store: ArtifactStore, work: Path, binhost: str, mirror: str) -> str:
    """What an image build does after emerge: list-new, signed URLs, upload. Returns the staging token."""
    farm_worker(
        "list-new",
        "--pkgdir",
        work / "pkgdir",
        "--binhost",
        binhost,
        "--distdir",
        work / "distdir",
        "--mirror",
        mirror,
        "--repository",
        work / "root/var/db/repos/gentoo",
        "--output",
        work / "new.json",
    )
    token = uuid.uuid4().hex
    candidates = PushbackCandidates.from_json((work / "new.json").read_text(), str(work / "new.json"))
    # The build's snapshot, as the mirror builder published it: its Manifests vouch for the distfiles.
    snapshot = put_snapshot(
        store, work / "root/var/db/repos/gentoo", f"portage/20261125T000000Z-{token}/s.tar.xz"
    )
    uploads = pushback_uploads(store, token, candidates, 600, snapshot)
    (work / "uploads.json").write_text(json.dumps(uploads))
    farm_worker("upload", "--map", work / "uploads.json")
    merge_distfiles(store, token)
    return token


def file_digest(path: Path, algorithm: str) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, algorithm).hexdigest()


def store_opener(settings) -> str:
    if settings.type == "local":
        return (
            "from pathlib import Path; from gentoo_farm.store.local import LocalStore; "
            f"store = LocalStore(Path({str(settings.path)!r}), '')"
        )
    return (
        "from gentoo_farm.store.s3 import S3Store; "
        f"store = S3Store({settings.bucket!r}, prefix={settings.prefix!r}, "
        f"endpoint_url={settings.endpoint_url!r})"
    )


def test_two_concurrent_pushes_both_land_signed_and_a_fresh_build_compiles_nothing(
    any_settings,
    builds: dict[str, Path],
    upstream: tuple[Path, str],
    farm_key: FarmKey,
    s3_server,
    tmp_path: Path,
) -> None:
    if any_settings.type == "s3":
        # Portage reads the binhost anonymously: a bucket whose policy lets anyone GET.
        any_settings.public_url = make_bucket_public(any_settings)
    store = open_store(any_settings)
    base = store.public_base_url()
    binhost, mirror = f"{base}/binpkgs/{PROFILE}", f"{base}/distfiles"

    tokens: dict[str, str] = {}

    def push_build(name: str) -> None:
        tokens[name] = push(store, builds[name], binhost, mirror)

    pushers = [threading.Thread(target=push_build, args=(name,)) for name in builds]
    for pusher in pushers:
        pusher.start()
    for pusher in pushers:
        pusher.join(timeout=300)
    assert set(tokens) == set(builds)
    # Both builds made farm-core: both staged it, both merge at the same moment, in two processes.
    merges = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                MERGE.format(open=store_opener(any_settings)),
                PROFILE,
                token,
                str(farm_key.home),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=s3_server.environment,
        )
        for token in tokens.values()
    ]
    outputs = [merge.communicate(timeout=300)[0] for merge in merges]
    assert all(merge.returncode == 0 for merge in merges), outputs

    index = parse_index(store.get_bytes(index_key(PROFILE)), "Packages")
    paths = sorted(entry["PATH"] for entry in index.packages)
    assert paths == [
        "app-misc/farm-hello/farm-hello-1.0-1.gpkg.tar",
        "app-misc/farm-motd/farm-motd-1.0-1.gpkg.tar",
        "dev-libs/farm-core/farm-core-1.0-1.gpkg.tar",
    ]
    assert index.header["PACKAGES"] == "3" and index.header["PROFILE"] == PROFILE
    assert sum("already_there=['dev-libs/farm-core" in output for output in outputs) == 1
    assert [info.key for info in store.list("incoming/")] == [], "staging is cleaned up"
    assert store.get_bytes("distfiles/layout.conf") == LAYOUT_CONF
    for distfile in ("farm-core-1.0.tar.gz", "farm-hello-1.0.tar.gz", "farm-motd-1.0.tar.gz"):
        assert store.exists(f"distfiles/{distfile}")

    # The proof that the index and files agree and every package carries the farm's signature: Portage,
    # trusting only the farm key, installs everything from the farm, compiling nothing, with no upstream
    # mirror at all.
    repo, _ = upstream
    public_key = farm_key.home.parent / "public.asc"
    reported = emerge(
        tmp_path / "fresh", repo, "app-misc/farm-hello", "--binhost", binhost, "--distfile-mirror", base,
        "--binhost-key", public_key,
    )  # fmt: skip
    assert reported["packages_compiled"] == []
    assert sorted(reported["packages_binary"]) == ["app-misc/farm-hello-1.0", "dev-libs/farm-core-1.0"]

    # Whoever can write the store swaps in an unsigned package and fixes up the index to match it (what a
    # build would have pushed before signing): emerge refuses it.
    hello = "app-misc/farm-hello/farm-hello-1.0-1.gpkg.tar"
    unsigned = builds["a"] / "pkgdir" / hello
    store.put_file(f"binpkgs/{PROFILE}/{hello}", unsigned)
    for entry in index.packages:
        if entry["PATH"] == hello:
            entry |= {"SIZE": str(unsigned.stat().st_size), "MD5": file_digest(unsigned, "md5"),
                      "SHA1": file_digest(unsigned, "sha1")}  # fmt: skip
    store.put_bytes(index_key(PROFILE), render_index(index))
    refused = emerge_process(
        tmp_path / "tampered", repo, "app-misc/farm-hello", "--binhost", binhost, "--distfile-mirror", base,
        "--binhost-key", public_key,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "signature" in refused.stdout.lower() and "farm-hello" in refused.stdout


def test_list_new_skips_what_the_farm_already_has(
    local_settings, builds: dict[str, Path], farm_key: FarmKey, tmp_path: Path
) -> None:
    store = open_store(local_settings)
    base = store.public_base_url()
    binhost, mirror = f"{base}/binpkgs/{PROFILE}", f"{base}/distfiles"
    from gentoo_farm.store.binhost import merge_pushback

    merge_pushback(store, PROFILE, push(store, builds["a"], binhost, mirror), farm_key)
    farm_worker(
        "list-new",
        "--pkgdir",
        builds["b"] / "pkgdir",
        "--binhost",
        binhost,
        "--distdir",
        builds["b"] / "distdir",
        "--mirror",
        mirror,
        "--repository",
        builds["b"] / "root/var/db/repos/gentoo",
        "--output",
        tmp_path / "new.json",
    )
    found = json.loads((tmp_path / "new.json").read_text())
    assert sorted(found["binpkgs"]) == ["app-misc/farm-motd/farm-motd-1.0-1.gpkg.tar"]
    assert sorted(found["distfiles"]) == ["farm-motd-1.0.tar.gz"]
