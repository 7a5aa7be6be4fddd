"""Workers run the master's exact code: the master's wheel and wheelhouse, served by the store, installed
by the bootstrap with ``pip --no-index --require-hashes`` and nothing else.

Most tests use a tiny dependency wheelhouse of wheels made in the test; the tests that install on
Python 3.12 and 3.13 (a Gentoo worker's Python, not the master's 3.11) use the real one: buildbot-worker,
Twisted, zope.interface ... at the master's versions for each Python, downloaded from the package index
once into the test cache (``tests/cache.py``, shared directory ``worker-wheelhouse``). The master's own
wheel is the real one, built from this checkout. The store is a real store server on 127.0.0.1, and a
package index on 127.0.0.1 that fails the test if anything asks it for a package stands where pip's
configuration would send it.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import importlib.metadata
import os
import shutil
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gentoo_farm import wheelhouse
from gentoo_farm.config import FarmConfigError, parse_config
from gentoo_farm.master.workers import served_wheels
from gentoo_farm.store import open_store
from gentoo_farm.store.local import LocalStore
from gentoo_farm.wheelhouse import (
    WORKER_REQUIRES_PYTHON,
    WheelhouseError,
    WorkerWheels,
    build_dependency_wheelhouse,
    build_master_wheel,
    describe_wheels,
    master_source_dir,
    master_version,
    needs_worker_wheels,
    prepare_worker_wheels,
    publish_wheels,
    select_wheels,
    worker_requirements,
)
from gentoo_farm.workers.latent.bootstrap import WorkerBootstrap
from tests import cache
from tests.services.store import LocalStoreSettings, local_settings  # noqa: F401  (fixture)

BINHOST_URL = "http://10.0.0.1:8011/binpkgs/default/linux/amd64/23.0"
MIRROR_URL = "http://10.0.0.1:8011"
INSTALL_TIMEOUT = 300
# What the tiny wheelhouse is served for: whatever /usr/bin/python3 is here, the install finds its group.
SERVED = ("3.11", "3.12", "3.13")


def _tiny_wheel(directory: Path, name: str, version: str) -> Path:
    """A real, installable wheel of one module ``<name>_mod`` that says its name."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}_mod.py": f"NAME = {name!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    wheel = directory / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture(scope="module")
def master_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_master_wheel(tmp_path_factory.mktemp("master-wheel"))


class _Tripwire(http.server.BaseHTTPRequestHandler):
    asked: list[str]

    def do_GET(self) -> None:
        self.asked.append(self.path)
        self.send_error(418, "no index may be asked")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def forbidden_index() -> Iterator[tuple[str, list[str]]]:
    """A package index on 127.0.0.1 that records every request made to it."""
    asked: list[str] = []
    handler = type("Tripwire", (_Tripwire,), {"asked": asked})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/", asked
    finally:
        server.shutdown()
        server.server_close()


def _served(
    settings: LocalStoreSettings, master_wheel: Path, tmp_path: Path, pythons: tuple[str, ...] = SERVED
) -> tuple[WorkerBootstrap, dict[str, str], LocalStore]:
    """The master's wheel and a dependency wheel published to the store for ``pythons``, and the
    bootstrap for them."""
    dependency = _tiny_wheel(tmp_path, "farm-dependency", "1.0")
    paths = [master_wheel, dependency]
    wheels = describe_wheels(master_version(), {python: paths for python in pythons})
    store = open_store(settings)
    assert isinstance(store, LocalStore)
    publish_wheels(store, wheels, paths)
    urls = {wheel.filename: store.download_url(wheel.key, 600) for wheel in wheels.files}
    return WorkerBootstrap("10.0.0.1:9989", BINHOST_URL, MIRROR_URL, wheels=wheels), urls, store


def _run_install(
    bootstrap: WorkerBootstrap, urls: dict[str, str], home: Path, index_url: str, path: str = "/usr/bin:/bin"
) -> subprocess.CompletedProcess[str]:
    """The install part of the user-data, as the script runs it: ``$home`` and ``$venv`` set, ``set -eu``;
    ``python3`` is the first on ``path``."""
    script = f'set -eu\nhome="{home}"\nvenv="$home/venv"\n{bootstrap.install_commands(urls)}\n'
    env = {"PATH": path, "PIP_INDEX_URL": index_url, "PIP_EXTRA_INDEX_URL": index_url}
    return subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT
    )


def _installed_version(home: Path) -> str:
    check = "import importlib.metadata as m; print(m.version('gentoo-farm'))"
    python = home / "venv" / "bin" / "python"
    if not python.exists():
        return ""
    # run in the venv's home: from this checkout, its gentoo_farm.egg-info would answer
    run = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=60, cwd=home)
    return run.stdout.strip()


def test_requirements_pin_what_the_worker_runs_at_the_masters_versions() -> None:
    pins = worker_requirements()
    assert f"buildbot-worker=={importlib.metadata.version('buildbot')}" in pins
    assert f"twisted=={importlib.metadata.version('twisted')}" in pins
    assert f"portage=={importlib.metadata.version('portage')}" in pins
    names = {pin.split("==")[0] for pin in pins}
    # the master's own dependencies stay on the master
    assert not names & {"buildbot", "openstacksdk", "boto3", "gentoo-farm"}


def test_select_wheels_names_what_the_wheelhouse_lacks(tmp_path: Path) -> None:
    wanted = _tiny_wheel(tmp_path, "farm-dependency", "1.0")
    _tiny_wheel(tmp_path, "farm-dependency", "0.9")
    (tmp_path / "not-a-wheel.whl").write_text("junk")
    assert select_wheels(tmp_path, ["farm-dependency==1.0"]) == [wanted]
    with pytest.raises(WheelhouseError, match=r"has no wheel for Python 3\.12 of: farm-other==2\.0$"):
        select_wheels(tmp_path, ["farm-dependency==1.0", "farm-other==2.0"], "3.12")
    # a binary wheel serves its own Python only, on manylinux x86_64
    binary = tmp_path / "farm_binary-1.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    shutil.copy(wanted, binary)
    shutil.copy(wanted, tmp_path / "farm_binary-1.0-cp313-cp313-musllinux_1_2_x86_64.whl")
    assert select_wheels(tmp_path, ["farm-binary==1.0"], "3.12") == [binary]
    with pytest.raises(WheelhouseError, match=r"no wheel for Python 3\.13 of: farm-binary==1\.0$"):
        select_wheels(tmp_path, ["farm-binary==1.0"], "3.13")


def test_the_master_wheel_is_the_code_the_master_runs(master_wheel: Path) -> None:
    source = master_source_dir()
    assert master_wheel.name == f"gentoo_farm-{master_version()}-py3-none-any.whl"
    with zipfile.ZipFile(master_wheel) as archive:
        assert (
            archive.read("gentoo_farm/workers/latent/bootstrap.py")
            == (source / "workers/latent/bootstrap.py").read_bytes()
        )
        assert (
            archive.read("gentoo_farm/wheelhouse.py") == (source / "gentoo_farm/wheelhouse.py").read_bytes()
        )
    assert not (source / "build").exists(), "building the wheel must leave the source tree alone"


def test_the_master_wheel_installs_on_the_workers_pythons_not_just_the_masters(master_wheel: Path) -> None:
    with zipfile.ZipFile(master_wheel) as archive:
        metadata = archive.read(f"gentoo_farm-{master_version()}.dist-info/METADATA").decode()
    assert f"Requires-Python: {WORKER_REQUIRES_PYTHON}\n" in metadata
    assert WORKER_REQUIRES_PYTHON == ">=3.11"  # the master's own pin (<3.12) is not the worker's


def test_manifest_round_trips_and_bad_ones_are_named(tmp_path: Path) -> None:
    wheel = _tiny_wheel(tmp_path, "farm-dependency", "1.0")
    wheels = describe_wheels("0.1.0", {"3.12": [wheel], "3.13": [wheel]})
    assert WorkerWheels.from_json(wheels.to_json()) == wheels
    assert list(wheels.pythons) == ["3.12", "3.13"] and len(wheels.files) == 1
    with pytest.raises(WheelhouseError, match="sha256 'abc' is not 64 hex digits"):
        WorkerWheels.from_json(
            '{"version": "1", "pythons": {"3.12": [{"filename": "a-1-py3-none-any.whl", "sha256": "abc"}]}}'
        )
    with pytest.raises(WheelhouseError, match=r"written by an older gentoo-farm .*`farm up` writes it anew"):
        WorkerWheels.from_json('{"version": "1", "files": []}')
    with pytest.raises(WheelhouseError, match="not a worker wheel manifest"):
        WorkerWheels.from_json("{}")


def test_bootstrap_needs_one_way_to_install_and_a_url_for_every_file(tmp_path: Path) -> None:
    wheels = describe_wheels("0.1.0", {"3.12": [_tiny_wheel(tmp_path, "farm-dependency", "1.0")]})
    with pytest.raises(ValueError, match="nothing to install the worker from"):
        WorkerBootstrap("10.0.0.1:9989", BINHOST_URL, MIRROR_URL).render("os-1", "pw")
    with pytest.raises(ValueError, match="replaces the master's worker wheels; got both"):
        WorkerBootstrap("10.0.0.1:9989", BINHOST_URL, MIRROR_URL, "gentoo-farm", wheels=wheels)
    bootstrap = WorkerBootstrap("10.0.0.1:9989", BINHOST_URL, MIRROR_URL, wheels=wheels)
    with pytest.raises(ValueError, match=r"no http\(s\) URL to fetch the worker's farm_dependency-1.0"):
        bootstrap.render("os-1", "pw", {})
    script = bootstrap.render("os-1", "pw", {wheels.files[0].filename: "http://10.0.0.1:8011/w.whl"})
    assert "--no-index --no-deps --require-hashes" in script
    assert f"--hash=sha256:{wheels.files[0].sha256}" in script


def test_the_masters_wheel_installs_from_the_store_and_no_index_is_asked(
    local_settings: LocalStoreSettings,  # noqa: F811
    master_wheel: Path,
    forbidden_index: tuple[str, list[str]],
    tmp_path: Path,
) -> None:
    bootstrap, urls, _ = _served(local_settings, master_wheel, tmp_path)
    index_url, asked = forbidden_index
    home = tmp_path / "home"

    run = _run_install(bootstrap, urls, home, index_url)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"installing the master's gentoo-farm {master_version()}" in run.stdout
    assert _installed_version(home) == master_version()
    assert (home / "venv" / "bin" / "farm-worker").is_file()
    importer = [str(home / "venv" / "bin" / "python"), "-c", "import farm_dependency_mod as m; print(m.NAME)"]
    imported = subprocess.run(importer, capture_output=True, text=True, timeout=60, cwd=home)
    assert imported.stdout == "farm-dependency\n"
    assert not (home / "wheels").exists()
    for url in urls.values():
        assert url not in run.stdout + run.stderr

    # an image whose venv holds the master's version keeps it (buildbot-worker comes with the image)
    (home / "venv" / "bin" / "buildbot-worker").write_text("#!/bin/sh\n")
    (home / "venv" / "bin" / "buildbot-worker").chmod(0o755)
    again = _run_install(bootstrap, urls, home, index_url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"gentoo-farm {master_version()} is already installed" in again.stdout
    assert asked == []


def test_a_wheel_whose_hash_differs_is_refused(
    local_settings: LocalStoreSettings,  # noqa: F811
    master_wheel: Path,
    forbidden_index: tuple[str, list[str]],
    tmp_path: Path,
) -> None:
    bootstrap, urls, store = _served(local_settings, master_wheel, tmp_path)
    assert bootstrap.wheels is not None
    master_file = next(wheel for wheel in bootstrap.wheels.files if wheel.filename == master_wheel.name)
    # someone with write access to the store swaps the master's wheel for another build of that name
    tampered = store.path_of(master_file.key)
    with zipfile.ZipFile(tampered, "a") as archive:
        archive.writestr("gentoo_farm/backdoor.py", "print('not the master's code')\n")
    index_url, asked = forbidden_index
    home = tmp_path / "home"

    run = _run_install(bootstrap, urls, home, index_url)
    assert run.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in run.stderr
    assert f"Expected sha256 {master_file.sha256}" in run.stderr
    assert "refusing the worker's wheels" in run.stderr
    assert _installed_version(home) == ""
    assert asked == []


def test_farm_up_publishes_the_masters_wheel_and_the_operators_wheelhouse(tmp_path: Path) -> None:
    """`farm up`'s preparation with a wheelhouse the operator names: here one of tiny wheels standing in
    for buildbot-worker, Twisted ... at the master's versions (the real ones would come from an index)."""
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    requirements = worker_requirements()
    for pin in requirements:
        _tiny_wheel(wheelhouse, *pin.split("=="))
    farm_toml = (
        '[farm]\nid = "x"\n[workers]\nwheelhouse = "wheelhouse"\n[store]\npath = "store"\n'
        '[[workers.openstack]]\nname = "os"\ncloud = "c"\nflavor = "f"\nimage = "farm-latest"\n'
        'network = "n"\n'
    )
    config = parse_config(farm_toml, tmp_path)
    assert needs_worker_wheels(config)

    wheels = prepare_worker_wheels(config)
    assert wheels.version == master_version()
    assert list(wheels.pythons) == config.workers.python_versions == ["3.11", "3.12", "3.13"]
    assert wheels.files[0].filename == f"gentoo_farm-{master_version()}-py3-none-any.whl"
    # pure wheels: one file serves every Python
    assert len(wheels.files) == 1 + len(requirements)
    assert all(group == wheels.files for group in wheels.pythons.values())
    store = open_store(config.store)
    for wheel in wheels.files:
        assert hashlib.sha256(store.get_bytes(wheel.key)).hexdigest() == wheel.sha256
    # what each instance start reads: the manifest, and a URL per file
    served = served_wheels(config)
    assert served.for_instance() == (
        wheels,
        {wheel.filename: store.download_url(wheel.key, 60) for wheel in wheels.files},
    )
    # the same code makes the same wheel: a second `farm up` publishes nothing new
    assert prepare_worker_wheels(config) == wheels


def test_a_wheelhouse_that_lacks_a_dependency_is_named(tmp_path: Path) -> None:
    (tmp_path / "wheelhouse").mkdir()
    config = parse_config('[farm]\nid = "x"\n[workers]\nwheelhouse = "wheelhouse"\n', tmp_path)
    with pytest.raises(WheelhouseError, match=r"has no wheel for Python 3\.11 of: .*buildbot-worker==4"):
        prepare_worker_wheels(config)
    missing = parse_config('[farm]\nid = "x"\n[workers]\nwheelhouse = "nowhere"\n', tmp_path)
    with pytest.raises(WheelhouseError, match=r"wheelhouse '.*nowhere': no such directory"):
        prepare_worker_wheels(missing)


def test_an_instance_start_without_prepared_wheels_says_to_run_farm_up(tmp_path: Path) -> None:
    config = parse_config('[farm]\nid = "x"\n', tmp_path)
    with pytest.raises(WheelhouseError, match=r"not prepared .* `farm up` prepares them"):
        served_wheels(config).for_instance()


def test_python_versions_is_a_setting_with_a_default_for_gentoos_pythons(tmp_path: Path) -> None:
    assert parse_config('[farm]\nid = "x"\n', tmp_path).workers.python_versions == ["3.11", "3.12", "3.13"]
    chosen = parse_config('[farm]\nid = "x"\n[workers]\npython_versions = ["3.13"]\n', tmp_path)
    assert chosen.workers.python_versions == ["3.13"]
    for value, message in (
        ('["3.10"]', r"'3\.10': expected a Python version MAJOR\.MINOR, 3\.11 or newer"),
        ('["3.12", "3.12"]', "expected one or more Python versions, each once"),
        ("[]", "expected one or more Python versions, each once"),
        ('"3.12"', "expected a list"),
    ):
        with pytest.raises(FarmConfigError, match=message):
            parse_config(f'[farm]\nid = "x"\n[workers]\npython_versions = {value}\n', tmp_path)
    with pytest.raises(
        FarmConfigError, match=r"unknown key workers\.python_version \(did you mean python_versions"
    ):
        parse_config('[farm]\nid = "x"\n[workers]\npython_version = ["3.12"]\n', tmp_path)


def test_a_python_the_farm_does_not_serve_is_named(
    local_settings: LocalStoreSettings,  # noqa: F811
    master_wheel: Path,
    forbidden_index: tuple[str, list[str]],
    tmp_path: Path,
) -> None:
    system_python = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    served = tuple(python for python in ("3.12", "3.13", "3.14") if python != system_python)[:2]
    bootstrap, urls, _ = _served(local_settings, master_wheel, tmp_path, served)
    index_url, asked = forbidden_index
    home = tmp_path / "home"

    run = _run_install(bootstrap, urls, home, index_url)
    assert run.returncode == 1, run.stdout + run.stderr
    assert (
        f"the master serves the worker's wheels for Python {', '.join(served)} only; "
        f"this image's python3 is: {system_python} (the master's [workers] python_versions)"
    ) in run.stderr
    assert not (home / "venv").exists() and not (home / "wheels").exists()
    assert asked == []


def _python(version: str) -> Path | None:
    """The executable of CPython ``version`` on this machine: on PATH, else one pyenv installed."""
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates += sorted(str(path) for path in pyenv_root.glob(f"versions/{version}.*/bin/python{version}"))
    check = "import sys; print(sys.executable); print('%d.%d' % sys.version_info[:2])"
    for candidate in filter(None, candidates):
        run = subprocess.run([candidate, "-c", check], capture_output=True, text=True, timeout=60)
        if run.returncode == 0 and run.stdout.split()[-1:] == [version]:
            return Path(run.stdout.split()[0])
    return None


@pytest.fixture(scope="module")
def real_wheelhouse() -> Path:
    """The worker's real dependencies at the master's versions for every Python the farm serves by default,
    from the package index (into the test cache: the next run downloads nothing)."""
    pythons = parse_config('[farm]\nid = "x"\n', Path("/nonexistent")).workers.python_versions
    wheelhouse = cache.directory("worker-wheelhouse")
    build_dependency_wheelhouse(
        wheelhouse, {python: worker_requirements(python_version=python) for python in pythons}
    )
    return wheelhouse


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_the_masters_code_installs_and_runs_on_a_gentoo_workers_python(
    version: str,
    real_wheelhouse: Path,
    local_settings: LocalStoreSettings,  # noqa: F811
    forbidden_index: tuple[str, list[str]],
    tmp_path: Path,
) -> None:
    """`farm up`'s preparation, the manifest and URLs an instance start reads, and the bootstrap's install
    with ``python3`` being Python ``version`` (Gentoo's, not the master's 3.11), then both tools run."""
    python = _python(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine (python{version} is not on PATH nor in pyenv)")
    farm_toml = (
        f'[farm]\nid = "x"\n[workers]\nwheelhouse = "{real_wheelhouse}"\n'
        f'python_versions = ["3.12", "3.13"]\n'
        f'[store]\npath = "{local_settings.path}"\npublic_url = "{local_settings.public_url}"\n'
        '[[workers.openstack]]\nname = "os"\ncloud = "c"\nflavor = "f"\nimage = "farm-latest"\n'
        'network = "n"\n'
    )
    config = parse_config(farm_toml, tmp_path)
    wheels = prepare_worker_wheels(config)
    group = {wheel.filename.split("-")[0]: wheel.filename for wheel in wheels.pythons[version]}
    tag = f"cp{version.replace('.', '')}"
    assert f"-{tag}-{tag}-manylinux" in group["zope_interface"]  # a binary wheel of that Python
    assert group["twisted"].endswith("-py3-none-any.whl")  # a pure one, shared by every Python
    other = wheels.pythons["3.13" if version == "3.12" else "3.12"]
    assert group["twisted"] in {wheel.filename for wheel in other}
    assert group["zope_interface"] not in {wheel.filename for wheel in other}

    served, urls = served_wheels(config).for_instance()
    bootstrap = WorkerBootstrap("10.0.0.1:9989", BINHOST_URL, MIRROR_URL, wheels=served)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(python)
    index_url, asked = forbidden_index
    home = tmp_path / "home"

    run = _run_install(bootstrap, urls, home, index_url, path=f"{bin_dir}:/usr/bin:/bin")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"gentoo-farm {master_version()} for Python {version} into" in run.stdout
    venv_bin = home / "venv" / "bin"
    versions = subprocess.run(
        [str(venv_bin / "python"), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert versions.stdout.strip() == version
    assert _installed_version(home) == master_version()
    env = {"PATH": f"{venv_bin}:/usr/bin:/bin", "HOME": str(home)}
    for command, expected in (
        (["farm-worker", "--help"], "usage: farm-worker"),
        (
            ["buildbot-worker", "--version"],
            f"worker version: {importlib.metadata.version('buildbot')}\n",
        ),
    ):
        ran = subprocess.run(
            [str(venv_bin / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=home,
            env=env,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert expected in ran.stdout, ran.stdout
    assert asked == []


def test_a_release_without_wheels_is_built_once_and_serves_other_pythons_only_if_pure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index has no wheel of these releases (``pip download`` fails): the master builds one with
    ``pip wheel``, here standing in for pip to keep the index out of the test."""
    calls: list[tuple[str, ...]] = []
    made = {
        "farm-pure==1.0": "farm_pure-1.0-py3-none-any.whl",
        "farm-native==1.0": "farm_native-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
    }

    def pip(*args: str) -> None:
        calls.append(args)
        if args[0] == "download":
            raise WheelhouseError("pip download failed: no matching distribution")
        shutil.copy(
            _tiny_wheel(tmp_path, "farm-any", "1.0"),
            Path(args[args.index("--wheel-dir") + 1]) / made[args[-1]],
        )

    monkeypatch.setattr(wheelhouse, "_pip", pip)
    dest = tmp_path / "wheelhouse"
    build_dependency_wheelhouse(dest, {"3.12": ["farm-pure==1.0"], "3.13": ["farm-pure==1.0"]})
    assert [call[-1] for call in calls if call[0] == "wheel"] == ["farm-pure==1.0"]  # once, for both
    assert select_wheels(dest, ["farm-pure==1.0"], "3.13") == [dest / made["farm-pure==1.0"]]

    calls.clear()
    build_dependency_wheelhouse(dest, {"3.11": ["farm-native==1.0"]})
    assert [call[-1] for call in calls if call[0] == "wheel"] == ["farm-native==1.0"]
    with pytest.raises(
        WheelhouseError,
        match=r"no wheel serves Python 3\.12 for: farm-native==1\.0 \(the index has no wheel for it, and the "
        r"one the master built from source with Python 3\.11 is not pure Python\)",
    ):
        build_dependency_wheelhouse(dest, {"3.11": ["farm-native==1.0"], "3.12": ["farm-native==1.0"]})
