"""c['www']: the React web UI with its views, logins with roles, and the change hook."""

from typing import Any

from buildbot.plugins import util
from buildbot.www.auth import TwistedICredAuthBase
from twisted.web.guard import BasicCredentialFactory

from gentoo_farm.config import FarmConfig, listen_endpoint
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.master.images_page import images_app, images_dashboard
from gentoo_farm.passwords import ClientUsernamePassword, PasswordFile, PasswordFileChecker
from gentoo_farm.recipes import recipe_repositories
from gentoo_farm.signing import farm_fingerprint
from gentoo_farm.store import open_store

VIEWER = "viewer"


class ClientBasicCredentialFactory(BasicCredentialFactory):
    """HTTP Basic credentials that keep the client's address, for the login throttle."""

    def decode(self, response: bytes, request: Any) -> ClientUsernamePassword:
        creds = super().decode(response, request)
        return ClientUsernamePassword(creds.username, creds.password, request.getClientAddress().host)


class PasswordFileAuth(TwistedICredAuthBase):
    """Web UI logins checked against the farm's bcrypt password file (in a thread, throttled)."""

    def __init__(self, password_file: PasswordFile, **kwargs: Any) -> None:
        super().__init__(
            [ClientBasicCredentialFactory(b"buildbot")], [PasswordFileChecker(password_file)], **kwargs
        )


def _authz(config: FarmConfig) -> util.Authz:
    roles: dict[str, list[str]] = {}
    for user in config.master.users:
        for role in [*user.roles, VIEWER]:
            roles.setdefault(role, []).append(user.name)
    allow_rules = [util.AnyControlEndpointMatcher(role="admin")]
    if not config.master.anonymous_view:
        allow_rules.append(util.AnyEndpointMatcher(role=VIEWER))
    return util.Authz(
        allowRules=allow_rules,
        roleMatchers=[util.RolesFromUsername(roles=[role], usernames=names) for role, names in roles.items()],
    )


def www(config: FarmConfig, farm: FarmDir) -> dict[str, Any]:
    return {
        "port": listen_endpoint(config.master.web_address),
        "plugins": {
            "waterfall_view": {},
            "console_view": {},
            "grid_view": {},
            # /plugins/badges/<builder>.svg: the builder's last result, for a README elsewhere.
            "badges": {},
            "wsgi_dashboards": [
                images_dashboard(
                    images_app(
                        open_store(config.store),
                        config.store.url_expiry_seconds,
                        login_required=not config.master.anonymous_view,
                        fingerprint=farm_fingerprint(farm),
                    )
                )
            ],
        },
        "auth": PasswordFileAuth(PasswordFile(farm.htpasswd)),
        "authz": _authz(config),
        "change_hook_dialects": {
            "poller": {"allowed": [repository.poller for repository in recipe_repositories(config)]}
        },
        "change_hook_auth": [PasswordFileChecker(PasswordFile(farm.hook_htpasswd))],
    }
