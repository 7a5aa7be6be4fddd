"""The web UI's "Images" page: a Buildbot ``wsgi_dashboards`` plugin (a small Flask app).

Buildbot's React UI fetches ``plugins/wsgi_dashboards/images/index.html`` and shows the fragment in
its own page, so the app answers with HTML that fits inside it (no <html>, no scripts; the UI's
Bootstrap classes apply). Buildbot runs the app in the reactor's thread pool, so reading the store
(blocking) here is fine. When the bucket is private (no public URL), a presigned URL in the page
would die ``url_expiry_seconds`` after the page was loaded, so the page links the app's own
``files/KEY`` instead, which presigns at click time and redirects there.

Buildbot applies its authz rules to its own REST API, not to WSGI dashboards: with
``anonymous_view = false`` the app asks the same rules itself, for the session the request carries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from buildbot.www.auth import build_cookie_name
from buildbot.www.authz import Forbidden
from flask import Flask, abort, redirect, render_template_string, request, url_for
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import blockingCallFromThread
from werkzeug.wrappers import Response

from gentoo_farm.catalog import DEFAULT_URL_EXPIRY, ImageRecord, published_images
from gentoo_farm.store import ArtifactStore, StoreError
from gentoo_farm.store.base import check_key
from gentoo_farm.units import human_size

DASHBOARD_NAME = "images"

PAGE = """\
<div class="farm-images">
  <h2>Images</h2>
  {% if error %}
    <div class="alert alert-danger" role="alert">The artifact store cannot be read: {{ error }}</div>
  {% elif not images %}
    <p>No images published yet. They appear here once an image build has published to the store.</p>
  {% else %}
    <p>Disk images published by this farm, newest first. Check a download with
       <code>sha512sum -c NAME.qcow2.sha512</code>, or fetch with <code>farm download NAME</code>.</p>
    {% if fingerprint %}
    <p class="farm-signing">Each image's DIGESTS are signed by this farm's key
       <code class="farm-fingerprint">{{ fingerprint }}</code>. Check them with its public half
       (<code>farm-signing-key.asc</code> in the store):
       <code>gpg --dearmor &lt; farm-signing-key.asc &gt; farm.gpg; gpgv --keyring ./farm.gpg DIGESTS</code>,
       or <code>farm download NAME --key {{ fingerprint }}</code>.</p>
    {% endif %}
    <table class="table table-striped table-sm farm-images-table">
      <thead>
        <tr>
          <th>Name</th><th>Published</th><th>Build</th><th>Kernel</th><th>Size</th><th>sha512</th><th>Files</th>
          <th>Glance</th>
        </tr>
      </thead>
      <tbody>
      {% for image in images %}
        <tr class="farm-image" data-name="{{ image.name }}">
          <td>
            {{ image.name }}{% if image.latest %} <span class="badge bg-success">latest</span>{% endif %}
          </td>
          <td>{{ image.date }}</td>
          <td>
            {% set build = builds.get(image.set_id) %}
            {% if build %}<a class="farm-build" href="{{ build.href }}">{{ build.label }}</a>
            {% else %}-{% endif %}
          </td>
          <td>{{ image.kernel or "-" }}</td>
          <td title="{{ image.size }} bytes">{{ image.size | human_size }}</td>
          <td><code title="{{ image.sha512 }}">{{ image.sha512[:16] }}…</code></td>
          <td>
            {% set file_name = image.key.rsplit("/", 1)[-1] %}
            <a class="farm-download" href="{{ image.url }}" download>{{ file_name }}</a>
            · <a class="farm-sha512" href="{{ image.sha512_url }}">{{ file_name }}.sha512</a>
            · <a class="farm-manifest" href="{{ image.manifest_url }}">manifest.json</a>
            {% if image.package_manifest_url %}
            · <a class="farm-packages" href="{{ image.package_manifest_url }}">
                {{- image.name }}.manifest.json</a>
              ({{ image.package_count if image.package_count is not none else "?" }} packages)
            {% endif %}
            {% if image.digests_url %}
            · <a class="farm-digests" href="{{ image.digests_url }}">DIGESTS</a>
            {% endif %}
          </td>
          <td>
            {% for cloud, copy in image.glance_images | dictsort %}
              <div class="farm-glance" title="{{ copy.detail }} ({{ copy.updated_at }})">
                {{ cloud }}: <code>{{ copy.image_id or "-" }}</code> {{ copy.status }}
              </div>
            {% else %}-{% endfor %}
          </td>
        </tr>
        <tr class="farm-image-manifest">
          <td colspan="8">
            <details>
              <summary>Manifest of {{ image.name }} ({{ image.set_id }})</summary>
              <pre>{{ image.manifest | pretty_json }}</pre>
            </details>
          </td>
        </tr>
      {% endfor %}
      </tbody>
    </table>
  {% endif %}
</div>
"""


LOGIN_FIRST = """\
<div class="farm-images">
  <h2>Images</h2>
  <p class="farm-login-first">Log in to see the images this farm has published.</p>
</div>
"""

LINKED_PREFIX = "images/"
"""The only store keys the page links, so the only ones its redirect signs (not the binhost, not sources)."""

ENDPOINT = ("images",)
"""What the page asks Buildbot's authz for (a read): ``AnyEndpointMatcher`` rules cover it."""


def may_view(app: Flask) -> bool:
    """Whether the session of the request being served may read the page, by the master's authz rules.

    Runs in the WSGI thread; the session is Buildbot's JWT cookie, the rules are ``c['www']['authz']``.
    Without the Buildbot glue (``buildbot_api``) nothing can vouch for the user: no.
    """
    api = getattr(app, "buildbot_api", None)
    if api is None:
        return False
    www = api.master.www
    token = request.cookies.get(build_cookie_name(request.is_secure, []).decode())
    try:
        user_info = www.site.getSession(token).user_info if token else {"anonymous": True}
    except KeyError:
        # An expired or forged session cookie: the visitor is anonymous.
        user_info = {"anonymous": True}
    try:
        # Twisted types the global reactor by what every reactor has; the one installed runs threads.
        from_threads = cast(IReactorFromThreads, reactor)
        blockingCallFromThread(from_threads, www.authz.assertUserAllowed, ENDPOINT, "get", {}, user_info)
    except Forbidden:
        return False
    return True


@dataclass(frozen=True)
class BuildLink:
    label: str
    href: str
    """A route of Buildbot's UI (the page is shown inside it): ``#/builders/ID/builds/NUMBER``."""


def build_links(app: Flask, images: list[ImageRecord]) -> dict[str, BuildLink]:
    """The build that made each image (its set's ``build`` metadata, ``BUILDER/NUMBER``), by set id."""
    api = getattr(app, "buildbot_api", None)
    if api is None:
        return {}
    builders = blockingCallFromThread(cast(IReactorFromThreads, reactor), api.master.data.get, ("builders",))
    builder_ids = {builder["name"]: builder["builderid"] for builder in builders}
    links = {}
    for image in images:
        metadata = image.manifest.get("metadata") or {}
        builder, _, number = str(metadata.get("build", "")).partition("/")
        if builder in builder_ids and number.isdigit():
            links[image.set_id] = BuildLink(
                f"{builder} #{number}", f"#/builders/{builder_ids[builder]}/builds/{number}"
            )
    return links


def images_app(
    store: ArtifactStore,
    url_expiry: int = DEFAULT_URL_EXPIRY,
    login_required: bool = False,
    fingerprint: str = "",
) -> Flask:
    """The Flask app behind the page; ``/index.html`` is what the Buildbot UI loads. With
    ``login_required`` (``anonymous_view = false``) only a user the authz rules let read sees images."""
    app = Flask(__name__)
    app.jinja_env.filters["human_size"] = human_size
    app.jinja_env.filters["pretty_json"] = lambda value: json.dumps(value, indent=2, sort_keys=True)

    @app.route("/")
    @app.route("/index.html")
    def index() -> tuple[str, int]:
        if login_required and not may_view(app):
            # Nothing of the store is shown. 200 on purpose: the UI shows the fragment of a 2xx answer
            # only, and keeps spinning on anything else, which would not tell the person to log in.
            return LOGIN_FIRST, 200
        images: list[ImageRecord] = []
        # A store without a public URL only gives out expiring URLs: link the redirect, which signs late.
        link = None if store.public_base_url() else lambda key: url_for("download", key=key)
        try:
            images = published_images(store, url_expiry, link)
        except StoreError as error:
            return render_template_string(PAGE, images=[], builds={}, fingerprint="", error=str(error)), 503
        builds = build_links(app, images)
        return render_template_string(
            PAGE, images=images, builds=builds, fingerprint=fingerprint, error=None
        ), 200

    @app.route("/files/<path:key>")
    def download(key: str) -> Response:
        """A 302 to a URL presigned now: valid ``url_expiry`` seconds from the click, not from the load."""
        if login_required and not may_view(app):
            abort(403)
        try:
            check_key(key)
        except StoreError:
            abort(404)
        if not key.startswith(LINKED_PREFIX):
            abort(404)
        return redirect(store.download_url(key, url_expiry), code=302)

    return app


def images_dashboard(app: Flask) -> dict[str, Any]:
    """The entry for ``c['www']['plugins']['wsgi_dashboards']`` (a list of such dicts) showing ``app``
    (:func:`images_app`)."""
    return {
        "name": DASHBOARD_NAME,
        "caption": "Images",
        "app": app,
        "order": 20,
        # The UI looks up react-icons' "Fa" + capitalized name: FaDownload.
        "icon": "download",
    }
