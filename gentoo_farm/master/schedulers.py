"""c['schedulers']: the web UI's force buttons, the kernel-config push and the nightly rebuild."""

from buildbot.plugins import schedulers as sched
from buildbot.plugins import util
from buildbot.schedulers.base import BaseScheduler

from gentoo_farm.config import FarmConfig
from gentoo_farm.master.builders import IMAGE, KERNEL, MIRROR, OVERLAY
from gentoo_farm.master.change_sources import kernel_repository_url

BUILD_IMAGE = "build-image"
KERNEL_PUSH = "kernel-config-push"


def _build_image(config: FarmConfig) -> sched.ForceScheduler:
    return sched.ForceScheduler(
        name=BUILD_IMAGE,
        label="Build image",
        buttonName="Build image",
        builderNames=[IMAGE],
        reason=util.StringParameter(name="reason", label="Reason", default="built from the web UI", size=60),
        codebases=[util.CodebaseParameter("", hide=True)],
        properties=[
            util.StringParameter(
                name="kernel_revision",
                label="Kernel config revision (empty: the latest published kernel)",
                default="",
                regex=r"^[0-9a-fA-F]{0,40}$",
                size=40,
            ),
            util.StringParameter(
                name="extra_packages",
                label=f"Extra packages (besides {' '.join(config.image.packages)})",
                default="",
                regex=r"^[A-Za-z0-9_+./:=<>~*@ -]*$",
                size=60,
            ),
            util.BooleanParameter(name="publish", label="Publish to the store and Glance", default=True),
        ],
    )


def _force(builder: str, label: str) -> sched.ForceScheduler:
    return sched.ForceScheduler(
        name=f"force-{builder}",
        label=label,
        buttonName=label,
        builderNames=[builder],
        codebases=[util.CodebaseParameter("", hide=True)],
    )


def _kernel_config_changed(config: FarmConfig):
    def is_important(change: object) -> bool:
        return config.kernel.config_file in change.files

    return is_important


def schedulers(config: FarmConfig) -> list[BaseScheduler]:
    result: list[BaseScheduler] = [
        _build_image(config),
        _force(MIRROR, "Refresh mirror"),
        _force(KERNEL, "Build kernel"),
        _force(OVERLAY, "Build overlay"),
        sched.SingleBranchScheduler(
            name=KERNEL_PUSH,
            change_filter=util.ChangeFilter(
                repository=kernel_repository_url(config), branch=config.kernel.branch
            ),
            fileIsImportant=_kernel_config_changed(config),
            onlyImportant=True,
            treeStableTimer=None,
            builderNames=[KERNEL],
        ),
    ]
    if config.schedule.nightly:
        hour, minute = (int(part) for part in config.schedule.nightly_time.split(":"))
        result.append(sched.Nightly(name="nightly", builderNames=[MIRROR, IMAGE], hour=hour, minute=minute))
    return result
