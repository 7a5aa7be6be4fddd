"""[notify] through a real master: webhook and mail for a failed build, none for a passing one; badges."""

import dataclasses
import json
import re
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from buildbot.process.results import FAILURE, SUCCESS
from buildbot.reporters import utils as reporter_utils

from gentoo_farm.config import FarmConfigError, NotifySection, parse_config
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.master.notify import generators, json_message, mail_message, notifiers, published_image
from tests.farmtest import Farm, farm_command, free_port, init_farm, set_option, toml_list

DEFAULTS = Path(__file__).parent.parent / "gentoo_farm" / "defaults" / "farm.toml"
WEBHOOK_TOKEN = "t0ken-in-the-url"


class Webhook(ThreadingHTTPServer):
    """Records each JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        super().__init__(("127.0.0.1", 0), WebhookHandler)


class WebhookHandler(BaseHTTPRequestHandler):
    server: Webhook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.paths.append(self.path)
        self.server.bodies.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Mailbox:
    """aiosmtpd handler keeping each message it is handed."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"


def _wait_for(found: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := found():
            return result
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {timeout} s")


@pytest.fixture(scope="module")
def notified(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Farm, Webhook, Mailbox]]:
    """A running farm whose [notify] posts to a local webhook and mails through a local SMTP sink."""
    webhook = Webhook()
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    farm = init_farm(tmp_path_factory.mktemp("notify") / "farm")
    FarmDir(farm.root).notify_webhook_url.write_text(
        f"http://127.0.0.1:{webhook.server_address[1]}/hook/{WEBHOOK_TOKEN}\n"
    )
    set_option(farm.root, "notify", "webhook", "true")
    set_option(farm.root, "notify", "mail_to", toml_list(["ops@example.org"]))
    set_option(farm.root, "notify", "mail_from", '"farm@example.org"')
    set_option(farm.root, "notify", "smtp", f'"127.0.0.1:{smtp.port}"')
    farm_command("--farm", str(farm.root), "up")
    try:
        farm.login()
        yield farm, webhook, mailbox
    finally:
        farm_command("--farm", str(farm.root), "down", check=False)
        smtp.stop()
        webhook.shutdown()


def test_a_passing_build_sends_nothing_and_a_failed_one_is_posted_and_mailed(
    notified: tuple[Farm, Webhook, Mailbox],
) -> None:
    farm, webhook, mailbox = notified
    status, answer = farm.force("force-overlay", builderNames=["overlay"])
    assert status == 200, answer
    assert farm.wait_for_build("overlay")["results"] == SUCCESS

    # No published mirror yet: the kernel build cannot fetch its source and fails.
    status, answer = farm.force("force-kernel", builderNames=["kernel"])
    assert status == 200, answer
    build = farm.wait_for_build("kernel")
    assert build["results"] == FAILURE, build["state_string"]

    (body,) = _wait_for(lambda: webhook.bodies, "webhook POST")
    assert webhook.paths == [f"/hook/{WEBHOOK_TOKEN}"]
    assert (body["builder"], body["number"], body["result"]) == ("kernel", build["number"], "failure")
    assert body["url"] == f"{farm.url}#/builders/{build['builderid']}/builds/{build['number']}"
    assert "image" not in body

    ((recipients, mail),) = _wait_for(lambda: mailbox.messages, "mail")
    assert recipients == ["ops@example.org"]
    assert mail["From"] == "farm@example.org"
    assert mail["Subject"] == f"gentoo-farm: kernel #{build['number']}: failure"
    text = mail.get_payload(decode=True).decode()
    assert body["url"] in text
    # The overlay build finished before the kernel build started; its report would be here by now.
    assert len(webhook.bodies) == len(mailbox.messages) == 1
    # The webhook's URL is a secret: the master does not log it.
    assert WEBHOOK_TOKEN not in FarmDir(farm.root).master_log.read_text()


def test_each_builder_has_a_badge_with_its_last_result(notified: tuple[Farm, Webhook, Mailbox]) -> None:
    farm, _, _ = notified
    if not farm.builds("overlay"):  # run alone (as --quick may), not after the test that builds it
        status, answer = farm.force("force-overlay", builderNames=["overlay"])
        assert status == 200, answer
    farm.wait_for_build("overlay")
    with urllib.request.urlopen(f"{farm.url}plugins/badges/overlay.svg", timeout=30) as response:
        assert response.headers["Content-Type"] == "image/svg+xml"
        svg = response.read().decode()
    assert svg.lstrip().startswith("<svg") or "<svg" in svg
    assert ">success<" in svg


def _context(results: int, properties: dict[str, Any]) -> dict[str, Any]:
    """A message formatter's context as Buildbot makes it for a finished build (the parts read here)."""
    build = {
        "number": 7,
        "results": results,
        "properties": {name: (value, "test") for name, value in properties.items()},
    }
    return {
        "build": build,
        "results": results,
        "buildername": "image",
        "build_url": "http://farm.example/#/builders/4/builds/7",
        "buildbot_title": "gentoo-farm",
    }


def test_a_published_image_is_announced_with_its_name() -> None:
    context = _context(SUCCESS, {"image_name": "gentoo-20261206-amd64", "image_set_id": "abc"})

    body = json_message(None, context)["body"]
    assert body["image"] == "gentoo-20261206-amd64"
    assert (body["builder"], body["result"], body["url"]) == ("image", "published", context["build_url"])
    mail = mail_message(None, context)
    assert mail["subject"] == "gentoo-farm: image #7: new image gentoo-20261206-amd64"
    assert context["build_url"] in mail["body"]
    assert "Image: gentoo-20261206-amd64" in mail["body"]


@pytest.mark.parametrize(
    ("results", "properties"),
    [
        # Up to date, or forced with --no-publish: the naming step did not run.
        (SUCCESS, {"up_to_date": True, "image_set_id": "abc"}),
        (SUCCESS, {"publish": False}),
        # Named, then the upload or the publish failed: nothing new to announce.
        (FAILURE, {"image_name": "gentoo-20261206-amd64"}),
    ],
)
def test_only_a_build_that_published_names_an_image(results: int, properties: dict[str, Any]) -> None:
    assert published_image(_context(results, properties)["build"]) is None


def _reports(
    monkeypatch: pytest.MonkeyPatch,
    results: int,
    properties: dict[str, Any],
    *,
    ran_on: int = 1,
    builder: str = "image",
) -> list[Any]:
    """What each of the webhook's generators of master 1 reports for a finished image build that master
    ``ran_on`` ran."""
    # The build already carries what Buildbot would fetch from the database for the report.
    monkeypatch.setattr(reporter_utils, "getDetailsForBuild", lambda *args, **kwargs: None)
    master = SimpleNamespace(
        masterid=1, config=SimpleNamespace(title="gentoo-farm", buildbotURL="http://farm.example/")
    )
    reporter = SimpleNamespace(getResponsibleUsersForBuild=lambda master, buildid: [])
    build = _context(results, properties)["build"] | {
        "buildid": 70,
        "masterid": ran_on,
        "builder": {"name": builder, "builderid": 4, "tags": []},
        "buildset": {"sourcestamps": []},
        "state_string": "finished",
    }
    reports: list[Any] = []
    for generator in generators(json_message):
        generator.generate(master, reporter, ("builds", 70, "finished"), build).addCallback(reports.append)
    return reports


def test_the_generators_report_a_new_image_and_a_failure_but_not_an_up_to_date_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failed, published = _reports(monkeypatch, SUCCESS, {"image_name": "gentoo-20261206-amd64"})
    assert failed is None
    assert published["body"]["image"] == "gentoo-20261206-amd64"
    assert published["body"]["url"] == "http://farm.example/#/builders/4/builds/7"

    assert _reports(monkeypatch, SUCCESS, {"up_to_date": True, "image_set_id": "abc"}) == [None, None]

    failed, published = _reports(monkeypatch, FAILURE, {"image_name": "gentoo-20261206-amd64"})
    assert (failed["body"]["result"], published) == ("failure", None)


def test_a_published_worker_image_is_announced_and_a_kernel_build_never_names_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "gentoo-farm-worker-20261207-amd64"
    _, published = _reports(monkeypatch, SUCCESS, {"image_name": name}, builder="worker-image")
    assert (published["body"]["builder"], published["body"]["image"]) == ("worker-image", name)
    assert _reports(monkeypatch, SUCCESS, {"image_name": name}, builder="kernel") == [None, None]


def test_with_several_masters_only_the_master_that_ran_a_build_reports_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every master hears every build finish on a shared message queue: one message, not one per master.
    assert _reports(monkeypatch, FAILURE, {}, ran_on=2) == [None, None]
    assert _reports(monkeypatch, SUCCESS, {"image_name": "gentoo-20261206-amd64"}, ran_on=2) == [None, None]
    failed, _ = _reports(monkeypatch, FAILURE, {}, ran_on=1)
    assert failed["body"]["result"] == "failure"


def test_the_webhook_url_and_smtp_password_come_from_secrets(tmp_path: Path) -> None:
    farm = FarmDir(tmp_path)
    farm.secrets.mkdir()
    with pytest.raises(FarmConfigError, match=re.escape(str(farm.notify_webhook_url))):
        notifiers(NotifySection(webhook=True), farm)
    with pytest.raises(FarmConfigError, match=re.escape(str(farm.smtp_password))):
        notifiers(NotifySection(mail_to=["ops@example.org"], smtp_user="farm"), farm)
    assert notifiers(NotifySection(), farm) == []


def test_every_notify_key_is_documented_with_its_default() -> None:
    documented = tomllib.loads(
        re.sub(r"^# (\w+ = )", r"\1", DEFAULTS.read_text().split("[notify]")[1], flags=re.MULTILINE)
    )
    assert set(documented) == {spec.name for spec in dataclasses.fields(NotifySection)}
    assert NotifySection(**documented) == parse_config('[farm]\nid = "x"\n', Path(".")).notify
