"""c['builders']: mirror, kernel, overlay and image.

Each builder first computes its input key, then makes its artifact. The artifact steps
here are the spine's placeholders — a stamp file naming the input key, uploaded to the
master — which prove the wiring: config, scheduling, workers, logs, properties.
"""

from buildbot.plugins import steps, util
from buildbot.process.factory import BuildFactory

from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.master.change_sources import kernel_repository_url
from gentoo_farm.master.workers import local_worker_names
from gentoo_farm.steps.base import FarmWorkerStep
from gentoo_farm.steps.inputs import ComputeInputKey

MIRROR, KERNEL, OVERLAY, IMAGE = "mirror", "kernel", "overlay", "image"
KERNEL_CONFIG_CHECKOUT = "kernel-config"


def _stamp_steps(builder: str, farm: FarmDir) -> list[object]:
    return [
        FarmWorkerStep(
            "stamp",
            stage_args=[
                "--builder",
                builder,
                "--input-key",
                util.Property("input_key"),
                "--output",
                "stamp.json",
            ],
            name="make artifact",
        ),
        steps.FileUpload(
            name="upload artifact",
            workersrc="stamp.json",
            masterdest=util.Interpolate(f"{farm.root}/artifacts/{builder}/%(prop:input_key)s.json"),
            mode=0o644,
        ),
    ]


def _mirror_factory(config: FarmConfig, farm: FarmDir) -> BuildFactory:
    factory = BuildFactory()
    factory.addStep(
        ComputeInputKey(MIRROR, values={"mirror": config.upstream.mirror, "stage3": config.upstream.stage3})
    )
    factory.addSteps(_stamp_steps(MIRROR, farm))
    return factory


def _kernel_factory(config: FarmConfig, farm: FarmDir) -> BuildFactory:
    factory = BuildFactory()
    factory.addStep(
        steps.Git(
            name="checkout kernel config",
            repourl=kernel_repository_url(config),
            branch=config.kernel.branch,
            workdir=KERNEL_CONFIG_CHECKOUT,
            mode="full",
            method="clobber",
        )
    )
    factory.addStep(
        ComputeInputKey(
            KERNEL,
            files=[f"../{KERNEL_CONFIG_CHECKOUT}/{config.kernel.config_file}"],
            values={"source": config.kernel.source},
        )
    )
    factory.addSteps(_stamp_steps(KERNEL, farm))
    return factory


def _overlay_factory(config: FarmConfig, farm: FarmDir) -> BuildFactory:
    factory = BuildFactory()
    factory.addStep(ComputeInputKey(OVERLAY, values={"overlay": str(config.overlay.path)}))
    factory.addSteps(_stamp_steps(OVERLAY, farm))
    return factory


def _image_factory(config: FarmConfig, farm: FarmDir) -> BuildFactory:
    factory = BuildFactory()
    factory.addStep(
        ComputeInputKey(
            IMAGE,
            values={
                "packages": " ".join(config.image.packages),
                "extra_packages": util.Property("extra_packages", default=""),
                "kernel_revision": util.Property("kernel_revision", default=""),
            },
        )
    )
    factory.addSteps(_stamp_steps(IMAGE, farm))
    return factory


def builders(config: FarmConfig, farm: FarmDir) -> list[util.BuilderConfig]:
    factories = {
        MIRROR: _mirror_factory,
        KERNEL: _kernel_factory,
        OVERLAY: _overlay_factory,
        IMAGE: _image_factory,
    }
    return [
        util.BuilderConfig(name=name, workernames=local_worker_names(config), factory=make(config, farm))
        for name, make in factories.items()
    ]
