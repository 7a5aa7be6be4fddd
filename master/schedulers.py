"""c['schedulers']: the web UI's force buttons, the kernel-config push and the nightly rebuild."""

from collections.abc import Callable
from typing import Any

from buildbot.plugins import schedulers as sched
from buildbot.plugins import util
from buildbot.schedulers.base import BaseScheduler
from buildbot.schedulers.forcesched import ValidationError
from portage.dep import isvalidatom

from gentoo_farm.artifacts import (
    IMAGE,
    KERNEL,
    MIRROR,
    OVERLAY,
    REBUILD_PROPERTY,
    WORKER_IMAGE,
    force_scheduler,
)
from gentoo_farm.config import FarmConfig
from gentoo_farm.master.factories.common import IMAGE_AFTER_INPUTS
from gentoo_farm.recipes import KERNEL_POLLER, OVERLAY_POLLER, RecipeRepository, recipe_repository


class PackageAtomsParameter(util.StringParameter):
    """Package atoms separated by spaces, each one Portage accepts as an atom.

    The words become emerge arguments on the worker: a word that is not an atom (``--root=/``,
    ``--config-root=...``) would be an emerge option, so the force is refused with the offending word.
    """

    def parse_from_arg(self, s: str) -> str:
        words = s.split()
        refused = [word for word in words if not isvalidatom(word, allow_repo=True)]
        if refused:
            raise ValidationError(
                f"{self.label}: {', '.join(repr(word) for word in refused)} "
                "is not a package atom (like app-misc/hello or >=app-misc/hello-1.0)"
            )
        return " ".join(words)


def _build_image(config: FarmConfig) -> sched.ForceScheduler:
    return sched.ForceScheduler(
        name=force_scheduler(IMAGE),
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
            PackageAtomsParameter(
                name="extra_packages",
                label=f"Extra packages (besides {' '.join(config.image.emerged_packages)})",
                default="",
                size=60,
            ),
            util.BooleanParameter(name="publish", label="Publish to the store and Glance", default=True),
            _rebuild_parameter(),
        ],
    )


def _rebuild_parameter() -> util.BooleanParameter:
    return util.BooleanParameter(
        name=REBUILD_PROPERTY, label="Rebuild even when the store holds this input's build", default=False
    )


def _force(builder: str, label: str) -> sched.ForceScheduler:
    return sched.ForceScheduler(
        name=force_scheduler(builder),
        label=label,
        buttonName=label,
        builderNames=[builder],
        codebases=[util.CodebaseParameter("", hide=True)],
        properties=[_rebuild_parameter()],
    )


def _on_push(
    repository: RecipeRepository, builder: str, is_important: Callable[[object], bool] | None = None
) -> sched.SingleBranchScheduler:
    return sched.SingleBranchScheduler(
        name=f"{repository.poller}-push",
        change_filter=util.ChangeFilter(repository=repository.url, branch=repository.branch),
        fileIsImportant=is_important,
        onlyImportant=is_important is not None,
        # Changes that arrive within the settle time make one buildset of the newest revision.
        treeStableTimer=repository.settle_seconds or None,
        builderNames=[builder],
    )


def _kernel_config_changed(config: FarmConfig):
    def is_important(change: Any) -> bool:  # a Buildbot Change (untyped)
        return config.kernel.config_file in change.files

    return is_important


def schedulers(config: FarmConfig) -> list[BaseScheduler]:
    result: list[BaseScheduler] = [
        _build_image(config),
        _force(MIRROR, "Refresh mirror"),
        _force(KERNEL, "Build kernel"),
        _force(OVERLAY, "Build overlay"),
        _on_push(recipe_repository(config, KERNEL_POLLER), KERNEL, _kernel_config_changed(config)),
        _on_push(recipe_repository(config, OVERLAY_POLLER), OVERLAY),
    ]
    # The worker image is made from the image's inputs: whatever starts an image build starts it too.
    images = [IMAGE, WORKER_IMAGE] if config.builds_worker_image else [IMAGE]
    if config.builds_worker_image:
        result.append(_force(WORKER_IMAGE, "Build worker image"))
    result.append(sched.Triggerable(name=IMAGE_AFTER_INPUTS, builderNames=images))
    if config.schedule.nightly:
        hour, minute = (int(part) for part in config.schedule.nightly_time.split(":"))
        result.append(sched.Nightly(name="nightly", builderNames=[MIRROR, *images], hour=hour, minute=minute))
    return result
