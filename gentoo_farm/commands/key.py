"""The farm's signing key: create it (farms made before it existed), print its fingerprint, export it,
rotate it (a new signing key; the old public key stays published) and retire an old one."""

from __future__ import annotations

import argparse
import sys

from gentoo_farm.cli import CommandError
from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.signing import FarmKey, SigningError
from gentoo_farm.store import StoreError, open_store
from gentoo_farm.store.sets import SIGNING_KEY, publish_signing_key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("create", "fingerprint", "export", "rotate", "retire"),
        help="create: make one if the farm has none; fingerprint: print it; export: the armored public "
        "key(s); rotate: a new signing key, the old one still published; retire FINGERPRINT: stop "
        "publishing and trusting an old key",
    )
    parser.add_argument("fingerprint", nargs="?", help="the old key `retire` drops")


def key_uid(config: FarmConfig) -> str:
    return f"{config.farm.title} <farm-{config.farm.id}@localhost>"


def create_farm_key(config: FarmConfig, farm: FarmDir) -> FarmKey:
    """The farm's new signing key, its public half written beside farm.toml for the master to hand out
    (the caller stops the gpg-agent when it is done with the key)."""
    key = FarmKey.create(farm.signing_key, key_uid(config))
    farm.signing_public_key.write_text(key.public_key())
    return key


def publish_public_keys(config: FarmConfig, farm: FarmDir, key: FarmKey) -> None:
    """Write the public keys where builds (beside farm.toml) and downloaders (the store) read them, at
    once: a rotation's new key is published before anything is signed with it."""
    armored = key.public_key()
    farm.signing_public_key.write_text(armored)
    try:
        publish_signing_key(open_store(config.store), armored)
    except StoreError as error:
        print(f"{SIGNING_KEY} not updated in the store ({error}): the next publish writes it",
              file=sys.stderr)  # fmt: skip


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    farm = FarmDir(config.basedir)
    key = FarmKey(farm.signing_key)
    try:
        if args.action == "create":
            key = create_farm_key(config, farm)
            print(f"created the farm's signing key {key.fingerprint} ({farm.signing_public_key})")
        elif args.action == "fingerprint":
            print(key.fingerprint)
        elif args.action == "export":
            print(key.public_key(), end="")
        elif args.action == "rotate":
            old = key.fingerprint
            key = key.rotate(key_uid(config), farm.retired_signing_key(old))
            publish_public_keys(config, farm, key)
            print(f"the farm signs with {key.fingerprint} now; {old} stays published until "
                  f"`farm key retire {old}` (restart the master to use the new key)")  # fmt: skip
        else:
            if not args.fingerprint:
                raise CommandError("farm key retire FINGERPRINT: which old key?")
            key.retire(args.fingerprint.replace(" ", "").upper())
            publish_public_keys(config, farm, key)
            print(f"{args.fingerprint} is no longer published nor trusted by builds")
    except SigningError as error:
        raise CommandError(str(error)) from error
    finally:
        key.stop_agent()
    return 0
