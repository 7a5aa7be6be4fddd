"""[notify]: Buildbot's reporters tell people about failed builds and newly published images.

Both the webhook and mail get one message per event (with several masters, from the master that ran
the build): a failed build of any builder (the nightly ones
are the case people care about) and an image build that published a new image. An image build that
found its image up to date, or that was forced with --no-publish, never names an image and so says
nothing.
"""

from pathlib import Path
from typing import Any

from buildbot.plugins import reporters
from buildbot.process.results import SUCCESS, WARNINGS, Results
from buildbot.reporters.base import ReporterBase
from twisted.internet import defer

from gentoo_farm.artifacts import IMAGE_VARIANTS
from gentoo_farm.config import FarmConfigError, NotifySection, host_port
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.steps.naming import IMAGE_NAME_PROPERTY

PUBLISHED = "published"


def published_image(build: dict[str, Any]) -> str | None:
    """The name of the image ``build`` (a report's build dictionary, with its properties) published.

    Only the naming step, which runs right before an image is uploaded and never for an up-to-date or
    --no-publish build, sets ``image_name``; a build that set it and then succeeded published it.
    """
    if build["results"] not in (SUCCESS, WARNINGS):
        return None
    name = build["properties"].get(IMAGE_NAME_PROPERTY, [None])[0]
    return str(name) if name else None


def notice(context: dict[str, Any]) -> dict[str, Any]:
    """What a message says, from a message formatter's context: the builder, the result, the build's URL
    and, for a published image, its name."""
    build = context["build"]
    image = published_image(build)
    result = PUBLISHED if image else Results[context["results"]]
    about = f"{context['buildername']} #{build['number']}"
    summary = f"{about}: new image {image}" if image else f"{about}: {result}"
    message = {
        "farm": context["buildbot_title"],
        "builder": context["buildername"],
        "number": build["number"],
        "result": result,
        "url": context["build_url"],
        "summary": summary,
    }
    if image:
        message["image"] = image
    return message


def json_message(_master: Any, context: dict[str, Any]) -> dict[str, Any]:
    """The webhook's body: the notice as a JSON object."""
    return {"body": notice(context), "type": "json"}


def mail_message(_master: Any, context: dict[str, Any]) -> dict[str, Any]:
    message = notice(context)
    lines = [message["summary"], "", f"Build: {message['url']}"]
    if "image" in message:
        lines.append(f"Image: {message['image']}")
    return {
        "body": "\n".join(lines) + "\n",
        "type": "plain",
        "subject": f"{message['farm']}: {message['summary']}",
    }


class OwnBuildStatusGenerator(reporters.BuildStatusGenerator):
    """Reports only the builds this master ran.

    With several masters on one message queue every master hears every build finish; each reporting
    only its own builds makes one message per event. A single master ran every build it hears of.
    """

    def generate(self, master: Any, reporter: Any, key: Any, build: dict[str, Any]) -> Any:
        if build["masterid"] != master.masterid:
            return defer.succeed(None)
        return super().generate(master, reporter, key, build)


class PublishedImageGenerator(OwnBuildStatusGenerator):
    """Reports a successful image build (of any variant: the cloud image, the worker image) only when it
    published a new image."""

    def __init__(self, message_formatter: Any) -> None:
        super().__init__(
            mode=("passing", "warnings"), builders=list(IMAGE_VARIANTS), message_formatter=message_formatter
        )

    @defer.inlineCallbacks
    def generate(self, master: Any, reporter: Any, key: Any, build: dict[str, Any]) -> Any:
        # The parent fetches the build's properties into ``build`` before it formats the report.
        report = yield super().generate(master, reporter, key, build)
        return report if report is not None and published_image(build) else None


def generators(message: Any) -> list[Any]:
    formatter = reporters.MessageFormatterFunctionRaw(message)
    return [
        OwnBuildStatusGenerator(mode=("failing", "exception"), message_formatter=formatter),
        PublishedImageGenerator(formatter),
    ]


def read_secret(path: Path, needed_by: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as error:
        raise FarmConfigError(f"{path}: cannot read it ({error.strerror}); {needed_by} needs it") from None
    if not value:
        raise FarmConfigError(f"{path} is empty; {needed_by} needs it")
    return value


def notifiers(notify: NotifySection, farm: FarmDir) -> list[ReporterBase]:
    result: list[ReporterBase] = []
    if notify.webhook:
        url = read_secret(farm.notify_webhook_url, "[notify] webhook = true")
        result.append(reporters.HttpStatusPush(url, generators=generators(json_message)))
    if notify.mail_to:
        host, port = host_port(notify.smtp)
        password = read_secret(farm.smtp_password, "[notify] smtp_user") if notify.smtp_user else None
        result.append(
            reporters.MailNotifier(
                fromaddr=notify.mail_from,
                relayhost=host,
                smtpPort=port,
                useTls=notify.smtp_tls,
                smtpUser=notify.smtp_user or None,
                smtpPassword=password,
                sendToInterestedUsers=False,
                extraRecipients=notify.mail_to,
                generators=generators(mail_message),
            )
        )
    return result
