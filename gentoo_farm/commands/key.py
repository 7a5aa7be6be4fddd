"""The farm's signing key: create it (farms made before it existed), print its fingerprint, export it."""

from __future__ import annotations

import argparse

from gentoo_farm.cli import CommandError
from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.signing import FarmKey, SigningError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("create", "fingerprint", "export"),
        help="create: make one if the farm has none; fingerprint: print it; export: the armored public key",
    )


def create_farm_key(config: FarmConfig, farm: FarmDir) -> FarmKey:
    """The farm's new signing key, its public half written beside farm.toml for the master to hand out
    (the caller stops the gpg-agent when it is done with the key)."""
    key = FarmKey.create(farm.signing_key, f"{config.farm.title} <farm-{config.farm.id}@localhost>")
    farm.signing_public_key.write_text(key.public_key())
    return key


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    farm = FarmDir(config.basedir)
    key = FarmKey(farm.signing_key)
    try:
        if args.action == "create":
            key = create_farm_key(config, farm)
            print(f"created the farm's signing key {key.fingerprint} ({farm.signing_public_key})")
        elif args.action == "fingerprint":
            print(key.fingerprint)
        else:
            print(key.public_key(), end="")
    except SigningError as error:
        raise CommandError(str(error)) from error
    finally:
        key.stop_agent()
    return 0
