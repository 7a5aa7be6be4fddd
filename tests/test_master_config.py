"""What farm.toml turns into in Buildbot's config: schedules, worker pools, bindings, the hook."""

import base64
import http.server
import subprocess
import threading
from pathlib import Path
from typing import ClassVar

import pytest
from buildbot.process.properties import Properties
from buildbot.schedulers.forcesched import BaseParameter, ValidationError
from buildbot.schedulers.timed import Nightly

from gentoo_farm.commands.hook import install_local_hooks
from gentoo_farm.config import load_config
from gentoo_farm.master.buildmaster import buildmaster_config
from tests.farmtest import farm_command, free_port, set_option


@pytest.fixture(scope="module")
def farm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("config") / "farm"
    farm_command("init", str(root))
    return root


def _nightly(config: dict) -> list[Nightly]:
    return [scheduler for scheduler in config["schedulers"] if isinstance(scheduler, Nightly)]


def _time_of(nightly: Nightly) -> tuple[int, int]:
    # Buildbot services keep their configuration as given until they are started.
    return nightly._config_kwargs["hour"], nightly._config_kwargs["minute"]


def test_defaults_bind_loopback_and_schedule_a_nightly_mirror_and_image(farm_dir: Path) -> None:
    config = buildmaster_config(farm_dir)

    assert config["www"]["port"] == "tcp:8010:interface=127.0.0.1"
    assert config["protocols"]["pb"]["port"] == "tcp:9989:interface=127.0.0.1"
    assert config["db"]["db_url"] == "sqlite:///state.sqlite"
    (nightly,) = _nightly(config)
    assert nightly.builderNames == ["mirror", "image"]
    assert _time_of(nightly) == (3, 30)
    assert {builder.name: builder.workernames for builder in config["builders"]} == {
        name: ["local-1"] for name in ("mirror", "kernel", "overlay", "image")
    }


def test_nightly_time_and_switch(tmp_path: Path, farm_dir: Path) -> None:
    (tmp_path / "farm.toml").write_text((farm_dir / "farm.toml").read_text())
    set_option(tmp_path, "schedule", "nightly_time", '"22:05"')
    (nightly,) = _nightly(buildmaster_config(tmp_path))
    assert _time_of(nightly) == (22, 5)

    set_option(tmp_path, "schedule", "nightly", "false")
    assert _nightly(buildmaster_config(tmp_path)) == []


def test_openstack_pool_gives_one_latent_worker_per_instance_for_its_builders(
    tmp_path: Path, farm_dir: Path
) -> None:
    (tmp_path / "farm.toml").write_text(
        (farm_dir / "farm.toml").read_text()
        + '\n[[workers.openstack]]\nname = "os"\ncloud = "home"\nflavor = "m1.large"\nimage = "farm-latest"\n'
        'network = "private"\nmax_instances = 3\nbuilders = ["image", "kernel"]\n'
    )
    config = buildmaster_config(tmp_path)

    assert [worker.name for worker in config["workers"]] == ["local-1", "os-1", "os-2", "os-3"]
    workers = {builder.name: builder.workernames for builder in config["builders"]}
    assert workers["image"] == workers["kernel"] == ["local-1", "os-1", "os-2", "os-3"]
    assert workers["mirror"] == workers["overlay"] == ["local-1"]
    reapers = [service for service in config["services"] if "reaper" in service.name]
    assert len(reapers) == 1
    # One build per server unless farm.toml says more: a kernel build takes every vCPU.
    assert [worker.max_builds for worker in config["workers"]] == [1, 1, 1, 1]


def test_hook_for_a_remote_repository(farm_dir: Path) -> None:
    hook = farm_command("--farm", str(farm_dir), "hook", "print", "overlay").stdout

    assert hook.startswith("#!/bin/sh\n")
    assert "url='http://127.0.0.1:8010/change_hook/poller?poller=overlay'" in hook
    assert 'secret_file="$HOME/.config/gentoo-farm/change-hook.secret"' in hook
    assert str(farm_dir / "secrets" / "change-hook.secret") in hook  # where to copy it from


def _git(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=60)


def _remote_lines(pushed: subprocess.CompletedProcess[str]) -> list[str]:
    """What the hook printed, as the person who pushed reads it (git pads each line)."""
    return [
        line.removeprefix("remote:").strip()
        for line in pushed.stderr.splitlines()
        if line.startswith("remote:")
    ]


class Knocks(http.server.BaseHTTPRequestHandler):
    """A stand-in master that records each knock: path and Basic credentials."""

    seen: ClassVar[list[tuple[str, str]]] = []

    def do_POST(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_push_the_master_does_not_hear_prints_the_command_that_knocks_again(tmp_path: Path) -> None:
    root = tmp_path / "farm"
    farm_command("init", str(root))
    port = free_port()
    set_option(root, "master", "web_address", f'"127.0.0.1:{port}"')
    install_local_hooks(load_config(root))  # what `farm up` does before the master listens
    clone = tmp_path / "clone"
    _git("clone", "--quiet", str(root / "kernel-config.git"), str(clone), cwd=tmp_path)
    _git("config", "user.email", "dev@example.org", cwd=clone)
    _git("config", "user.name", "A Developer", cwd=clone)
    _git("commit", "--allow-empty", "--quiet", "-m", "a new kernel config", cwd=clone)
    revision = _git("rev-parse", "HEAD", cwd=clone).stdout.strip()

    other = _remote_lines(_git("push", "origin", "HEAD:refs/heads/experiment", cwd=clone))
    assert other == [
        "gentoo-farm: nothing to build: the farm builds main of this repository, not what was pushed"
    ]
    pushed = _remote_lines(_git("push", "origin", "HEAD:main", cwd=clone))

    url = f"http://127.0.0.1:{port}/change_hook/poller?poller=kernel-config"
    assert pushed[-3:-1] == [
        f"gentoo-farm: could not notify {url}; the master builds {revision[:12]} at its next poll"
        " (within 3600 s).",
        "gentoo-farm: to have it built now, run on this server:",
    ]
    command = pushed[-1]
    secret = (root / "secrets" / "change-hook.secret").read_text().strip()
    assert secret not in command
    server = http.server.HTTPServer(("127.0.0.1", port), Knocks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        subprocess.run(["sh", "-c", command], check=True, capture_output=True, timeout=60)
    finally:
        server.shutdown()
        thread.join()
    credentials = base64.b64encode(f"change-hook:{secret}".encode()).decode()
    assert Knocks.seen == [("/change_hook/poller?poller=kernel-config", f"Basic {credentials}")]


def _extra_packages(config: dict) -> BaseParameter:
    (build_image,) = [s for s in config["schedulers"] if s.name == "build-image"]
    properties = build_image._config_kwargs["properties"]
    (parameter,) = [field for field in properties if field.name == "extra_packages"]
    return parameter


def test_extra_packages_of_a_forced_image_build_must_be_atoms(farm_dir: Path) -> None:
    extra_packages = _extra_packages(buildmaster_config(farm_dir))
    accepted = extra_packages.getFromKwargs(
        {extra_packages.fullName: [" app-misc/hello  >=dev-lang/perl-5.38::gentoo sys-apps/foo[ssl] "]}
    )
    assert accepted == "app-misc/hello >=dev-lang/perl-5.38::gentoo sys-apps/foo[ssl]"
    for hostile, word in (
        ("--root=/ app-misc/hello", "--root=/"),
        ("app-misc/hello --config-root=/tmp", "--config-root=/tmp"),
        ("-1", "-1"),
        ("@world", "@world"),
    ):
        with pytest.raises(ValidationError, match="is not a package atom") as refused:
            extra_packages.getFromKwargs({extra_packages.fullName: [hostile]})
        assert repr(word) in str(refused.value)


def test_local_workers_are_kept_from_the_secrets_the_master_state_and_the_store(farm_dir: Path) -> None:
    (worker,) = buildmaster_config(farm_dir)["workers"]
    hidden = worker._config_kwargs["settings"].hidden_paths
    assert hidden == [farm_dir / "secrets", farm_dir / "master", farm_dir / "store"]


def _kernel_steps(farm: Path) -> list[str]:
    (kernel,) = [builder for builder in buildmaster_config(farm)["builders"] if builder.name == "kernel"]
    return [step.buildStep().name for step in kernel.factory.steps]


def test_kernel_builds_share_their_ccache_unless_turned_off(tmp_path: Path, farm_dir: Path) -> None:
    steps = _kernel_steps(farm_dir)
    # Seeded before the compile; packed, uploaded and shared after the kernel is published.
    assert (
        steps.index("offer-kernel-ccache") < steps.index("seed-kernel-ccache") < steps.index("build-kernel")
    )
    assert steps[-4:] == [
        "pack-kernel-ccache",
        "sign-kernel-ccache-upload",
        "upload-kernel-ccache",
        "share-kernel-ccache",
    ]
    assert steps.index("publish-kernel") < steps.index("pack-kernel-ccache")

    (tmp_path / "farm.toml").write_text((farm_dir / "farm.toml").read_text())
    set_option(tmp_path, "kernel", "shared_ccache", "false")
    assert not [name for name in _kernel_steps(tmp_path) if "ccache" in name]


def _rendered(value: object, **properties: object) -> object:
    results: list[object] = []
    Properties(**properties).render(value).addCallback(results.append)
    (result,) = results  # the factories' renderables render without waiting on anything
    return result


def test_a_pool_booting_the_worker_image_makes_the_farm_build_it(tmp_path: Path, farm_dir: Path) -> None:
    (tmp_path / "farm.toml").write_text(
        (farm_dir / "farm.toml").read_text()
        + '\n[[workers.openstack]]\nname = "os"\ncloud = "home"\nflavor = "m1.large"\nnetwork = "private"\n'
    )
    farm = load_config(tmp_path)
    config = buildmaster_config(tmp_path)

    builders = {builder.name: builder for builder in config["builders"]}
    assert list(builders) == ["mirror", "kernel", "overlay", "image", "worker-image"]
    built = (factory.buildStep() for factory in builders["worker-image"].factory.steps)
    steps = {step.name: step for step in built}
    # The image's recipe, emerging the cloud image's packages and then what the toolkit's stages run.
    emerged = _rendered(steps["emerge"].atoms, extra_packages="app-misc/extra")
    assert emerged == [*farm.image.emerged_packages, *farm.image.worker.packages, "app-misc/extra"]
    assert {"app-emulation/qemu", "sys-boot/syslinux", "dev-lang/python"} <= set(emerged)
    # Its root, its images and their names are its own: the image's latest pointers stay the image's.
    assert steps["stage4-key"].kind == steps["find-stage4"].kind == steps["publish-worker-stage4"].kind
    assert steps["find-stage4"].kind == "worker-stage4"
    assert steps["up-to-date"].kind == steps["publish-worker-images"].kind == "worker-images"
    assert steps["name-image"].images_kind == "worker-images"
    # Retention keeps [image.worker] keep worker image sets, whichever build publishes.
    assert steps["publish-worker-images"].keep_by_kind == {"worker-images": 2}
    image_steps = {step.buildStep().name for step in builders["image"].factory.steps}
    assert {"publish-stage4", "publish-images"} <= image_steps
    assert not {name for name in image_steps if "worker" in name}

    # It has its own button, and whatever starts an image build starts it too.
    schedulers = {scheduler.name: scheduler for scheduler in config["schedulers"]}
    assert schedulers["force-worker-image"].builderNames == ["worker-image"]
    assert schedulers["image-after-new-input"].builderNames == ["image", "worker-image"]
    (nightly,) = _nightly(config)
    assert nightly.builderNames == ["mirror", "image", "worker-image"]
