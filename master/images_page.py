"""The web UI's "Images" page: a Buildbot ``wsgi_dashboards`` plugin (a small Flask app).

Buildbot's React UI fetches ``plugins/wsgi_dashboards/images/index.html`` and shows the fragment in
its own page, so the app answers with HTML that fits inside it (no <html>, no scripts; the UI's
Bootstrap classes apply). Buildbot runs the app in the reactor's thread pool, so reading the store
(blocking) here is fine. Download links come from the catalog and are presigned per request when
the bucket is private.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, render_template_string

from gentoo_farm.catalog import DEFAULT_URL_EXPIRY, ImageRecord, human_size, published_images
from gentoo_farm.store import ArtifactStore, StoreError

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
    <table class="table table-striped table-sm farm-images-table">
      <thead>
        <tr><th>Name</th><th>Published</th><th>Kernel</th><th>Size</th><th>sha512</th><th>Files</th></tr>
      </thead>
      <tbody>
      {% for image in images %}
        <tr class="farm-image" data-name="{{ image.name }}">
          <td>
            {{ image.name }}{% if image.latest %} <span class="badge bg-success">latest</span>{% endif %}
          </td>
          <td>{{ image.date }}</td>
          <td>{{ image.kernel or "-" }}</td>
          <td title="{{ image.size }} bytes">{{ image.size | human_size }}</td>
          <td><code title="{{ image.sha512 }}">{{ image.sha512[:16] }}…</code></td>
          <td>
            <a class="farm-download" href="{{ image.url }}" download>{{ image.key.rsplit("/", 1)[-1] }}</a>
            · <a class="farm-manifest" href="{{ image.manifest_url }}">manifest.json</a>
          </td>
        </tr>
        <tr class="farm-image-manifest">
          <td colspan="6">
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


def images_app(store: ArtifactStore, url_expiry: int = DEFAULT_URL_EXPIRY) -> Flask:
    """The Flask app behind the page; ``/index.html`` is what the Buildbot UI loads."""
    app = Flask(__name__)
    app.jinja_env.filters["human_size"] = human_size
    app.jinja_env.filters["pretty_json"] = lambda value: json.dumps(value, indent=2, sort_keys=True)

    @app.route("/")
    @app.route("/index.html")
    def index() -> tuple[str, int]:
        images: list[ImageRecord] = []
        try:
            images = published_images(store, url_expiry)
        except StoreError as error:
            return render_template_string(PAGE, images=[], error=str(error)), 503
        return render_template_string(PAGE, images=images, error=None), 200

    return app


def images_dashboard(store: ArtifactStore, url_expiry: int = DEFAULT_URL_EXPIRY) -> dict[str, Any]:
    """The entry for ``c['www']['plugins']['wsgi_dashboards']`` (a list of such dicts)."""
    return {
        "name": DASHBOARD_NAME,
        "caption": "Images",
        "app": images_app(store, url_expiry),
        "order": 20,
        # The UI looks up react-icons' "Fa" + capitalized name: FaDownload.
        "icon": "download",
    }
