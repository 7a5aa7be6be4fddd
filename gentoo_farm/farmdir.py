"""Where things live inside a farm directory (made by `farm init`)."""

from dataclasses import dataclass
from pathlib import Path

HOOK_USER = "change-hook"


@dataclass(frozen=True)
class FarmDir:
    root: Path

    @property
    def master(self) -> Path:
        """The Buildbot master's base directory (master.cfg, state.sqlite, twistd.log)."""
        return self.root / "master"

    @property
    def master_log(self) -> Path:
        return self.master / "twistd.log"

    @property
    def schema_stamp_file(self) -> Path:
        """The Buildbot version and database (no password) the master's database schema was last made for."""
        return self.master / "schema-stamp"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def htpasswd(self) -> Path:
        return self.secrets / "htpasswd"

    @property
    def hook_htpasswd(self) -> Path:
        return self.secrets / "change-hook.htpasswd"

    @property
    def saved_admin_password(self) -> Path:
        """The admin's password in plain text, kept only when `farm init --save-password` asked for it."""
        return self.secrets / "admin-password"

    @property
    def hook_secret(self) -> Path:
        """The change hook's password in plain text, for the post-receive hook to send."""
        return self.secrets / "change-hook.secret"

    @property
    def notify_webhook_url(self) -> Path:
        """The URL [notify] webhook posts to; it often carries a token, so it is kept out of farm.toml."""
        return self.secrets / "notify-webhook-url"

    @property
    def smtp_password(self) -> Path:
        """The password of [notify] smtp_user."""
        return self.secrets / "smtp-password"

    @property
    def signing_key(self) -> Path:
        """The GnuPG home holding the farm's signing key (binary packages); only the master reads it."""
        return self.secrets / "gnupg"

    def retired_signing_key(self, fingerprint: str) -> Path:
        """Where `farm key rotate` keeps the GnuPG home of the key it replaced (nothing signs with it)."""
        return self.secrets / "gnupg-retired" / fingerprint

    @property
    def signing_public_key(self) -> Path:
        """The signing key's public half, armored, and during a rotation the old key's after it: what
        workers trust and anyone may download."""
        return self.root / "farm-signing-key.asc"

    @property
    def workers(self) -> Path:
        """Base directories of local workers, one per started worker, removed when it stops."""
        return self.root / "workers"
