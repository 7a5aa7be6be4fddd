"""Run a command as root of a new user namespace whose ids are an unprivileged range of the host's.

``python -m gentoo_farm.workers.latent.userns --ids START -- COMMAND...`` (run as root): the command runs as
uid and gid 0 of a new user namespace in which ids 0…65535 are the host's START…START+65535. Root
there can own files as any image user (Portage's 250, nobody's 65534) and build a whole root, yet on
the host it is an unprivileged uid: it cannot read root's private files, open the host's devices,
attach loop devices, mount block devices or undo the mounts it inherited (they are locked to it).

Why not ``unshare --map-users``: util-linux hands the maps to ``newuidmap``, which wants the range in
/etc/subuid; the master already is root, so it writes the maps itself, as ``newuidmap`` would.
"""

import argparse
import ctypes
import os
import sys
from collections.abc import Sequence

CLONE_NEWUSER = 0x10000000
ID_COUNT = 65536
"""Ids a build's namespace maps: all a Gentoo root uses (0…65534)."""


def write_id_maps(pid: int, first_host_id: int) -> None:
    """Map ids 0…65535 of ``pid``'s user namespace to the host's ``first_host_id``…; needs root."""
    line = f"0 {first_host_id} {ID_COUNT}\n"
    for map_file in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{map_file}", "w") as ids:
            ids.write(line)


def _unshare_user_namespace() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"unshare(CLONE_NEWUSER): {os.strerror(error)}")


def exec_in_user_namespace(first_host_id: int, command: Sequence[str]) -> None:
    """Become root of a new user namespace mapped to ``first_host_id``…, then exec ``command``.

    A child made before the unshare stays in the host's namespace, where root may write the new
    namespace's maps; this process waits for it, takes uid and gid 0 there and becomes ``command``.
    """
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_write)
        status = 1
        try:
            if os.read(ready_read, 1) == b"u":
                write_id_maps(os.getppid(), first_host_id)
                status = 0
        except OSError as error:
            print(f"userns: writing the id maps: {error}", file=sys.stderr)
        os._exit(status)
    os.close(ready_read)
    try:
        _unshare_user_namespace()
    finally:
        os.write(ready_write, b"u")
        os.close(ready_write)
    _, wait_status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(wait_status) != 0:
        raise SystemExit("userns: the new user namespace has no id maps; not running the command")
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    os.execvp(command[0], list(command))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gentoo_farm.workers.latent.userns", description=__doc__)
    parser.add_argument("--ids", required=True, type=int, help="the first host id the namespace maps")
    parser.add_argument("command", nargs="+", help="what to run as the namespace's root")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("must run as root: it writes the new namespace's id maps itself")
    exec_in_user_namespace(args.ids, args.command)


if __name__ == "__main__":
    main()
