"""Set a user's web UI password (a new random one unless --password-stdin)."""

import argparse
import sys

from gentoo_farm.cli import CommandError
from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.passwords import PasswordFile, generate_password, write_private


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    if args.user not in {user.name for user in config.master.users}:
        raise CommandError(f"no user {args.user!r} in [[master.users]] of farm.toml; add it there first")
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else generate_password()
    if not password:
        raise CommandError("the password is empty")
    farm = FarmDir(config.basedir)
    PasswordFile(farm.htpasswd).set(args.user, password)
    if args.user == "admin" and farm.saved_admin_password.exists():
        write_private(farm.saved_admin_password, password + "\n")
        print(f"Saved in {farm.saved_admin_password}.")
    if not args.password_stdin:
        print(f"New password for {args.user}: {password}")
    print("It takes effect at the next login.")
    return 0
