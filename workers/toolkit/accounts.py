"""Add a user to an image by editing its account files, as shadow's ``useradd -m -G GROUPS NAME`` does.

Running the image's own useradd (``chroot ROOT useradd``) would run, as root on the worker, whatever
program the overlay or a package put at /usr/sbin/useradd. Instead the files are edited here, each
path resolved inside the root: /etc/passwd, /etc/group, /etc/shadow and /etc/gshadow (when the image
has one), and the home directory is made from /etc/skel. The numbers follow shadow's rules and the
image's own /etc/login.defs and /etc/default/useradd: the next id after the highest one in
UID_MIN..UID_MAX, a group of the user's name (USERGROUPS_ENAB) with the same id when it is free,
the home's mode from HOME_MODE or UMASK. One difference: the password field is ``*`` (no password can
match) where useradd writes ``!`` (locked): sshd without PAM refuses even a key for a locked account, so
``*`` keeps the cloud user's key login working whether or not the image's sshd uses PAM.
"""

import os
import shutil
import time
from pathlib import Path, PurePosixPath

from gentoo_farm.workers.toolkit import StageError, progress
from gentoo_farm.workers.toolkit.confined import read_text, resolve, write_text

NO_PASSWORD = "*"

# shadow's built-in values, for settings an image's login.defs does not make.
LOGIN_DEFAULTS = {
    "UID_MIN": "1000",
    "UID_MAX": "60000",
    "GID_MIN": "1000",
    "GID_MAX": "60000",
    "UMASK": "022",
    "PASS_MIN_DAYS": "0",
    "PASS_MAX_DAYS": "99999",
    "PASS_WARN_AGE": "7",
    "USERGROUPS_ENAB": "yes",
}
# An empty shell field means /bin/sh to login and sshd (Gentoo's /etc/default/useradd says /bin/bash).
USERADD_DEFAULTS = {"HOME": "/home", "SHELL": "", "SKEL": "/etc/skel", "GROUP": "100"}


def _settings(root: Path, path: str, defaults: dict[str, str], separator: str | None) -> dict[str, str]:
    settings = dict(defaults)
    if resolve(root, path).is_file():
        for line in read_text(root, path).splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                fields = line.split(separator, 1)
                settings[fields[0].strip()] = fields[1].strip().strip('"') if len(fields) == 2 else ""
    return settings


def _table(root: Path, path: str) -> list[list[str]]:
    return [line.split(":") for line in read_text(root, path).splitlines() if line]


def _write_table(root: Path, path: str, rows: list[list[str]]) -> None:
    write_text(root, path, "".join(":".join(row) + "\n" for row in rows))


def _next_id(used: set[int], low: int, high: int, preferred: int | None = None) -> int:
    if preferred is not None and preferred not in used and low <= preferred <= high:
        return preferred
    in_range = [number for number in used if low <= number <= high]
    candidate = max(in_range) + 1 if in_range else low
    if candidate > high:
        raise StageError(f"no free id left between {low} and {high}")
    return candidate


def _add_member(row: list[str], field: int, user: str) -> None:
    members = [name for name in row[field].split(",") if name]
    if user not in members:
        row[field] = ",".join([*members, user])


def _copy_skel(skel: Path, home: Path, uid: int, gid: int) -> None:
    """Copy /etc/skel (already resolved in the root) into ``home`` without following any link in it."""
    for directory, subdirectories, files in os.walk(skel):
        relative = Path(directory).relative_to(skel)
        for name in [*subdirectories, *files]:
            source, target = Path(directory, name), home / relative / name
            if source.is_symlink():
                target.symlink_to(os.readlink(source))
            elif source.is_dir():
                target.mkdir()
                shutil.copymode(source, target)
            elif source.is_file():
                shutil.copyfile(source, target, follow_symlinks=False)
                shutil.copymode(source, target)
            else:
                continue
            os.lchown(target, uid, gid)


def add_user(root: Path, user: str, groups: str) -> None:
    """Add ``user`` (member of the comma-separated ``groups``, with a home from /etc/skel) to ``root``."""
    passwd = _table(root, "etc/passwd")
    if any(row[0] == user for row in passwd):
        progress(f"user {user} exists already")
        return
    group = _table(root, "etc/group")
    shadow = _table(root, "etc/shadow")
    has_gshadow = resolve(root, "etc/gshadow").is_file()
    gshadow = _table(root, "etc/gshadow") if has_gshadow else []
    wanted = [name for name in groups.split(",") if name]
    missing = [name for name in wanted if not any(row[0] == name for row in group)]
    if missing:
        raise StageError(f"cannot add user {user}: the image has no group {', '.join(missing)} in /etc/group")
    defs = _settings(root, "etc/login.defs", LOGIN_DEFAULTS, None)
    defaults = _settings(root, "etc/default/useradd", USERADD_DEFAULTS, "=")

    uid = _next_id(
        {int(row[2]) for row in passwd if row[2].isdigit()}, int(defs["UID_MIN"]), int(defs["UID_MAX"])
    )
    gids = {int(row[2]) for row in group if row[2].isdigit()}
    if defs["USERGROUPS_ENAB"].lower() == "yes":
        gid = _next_id(gids, int(defs["GID_MIN"]), int(defs["GID_MAX"]), preferred=uid)
        group.append([user, "x", str(gid), ""])
        if has_gshadow:
            gshadow.append([user, "!", "", ""])
    else:
        gid = int(defaults["GROUP"])
    for row in group:
        if row[0] in wanted and len(row) == 4:
            _add_member(row, 3, user)
    for row in gshadow:
        if row[0] in wanted and len(row) == 4:
            _add_member(row, 3, user)
    home_name = str(PurePosixPath(defaults["HOME"]) / user)
    passwd.append([user, "x", str(uid), str(gid), "", home_name, defaults["SHELL"]])
    days = str(int(time.time()) // 86400)
    ages = [defs["PASS_MIN_DAYS"], defs["PASS_MAX_DAYS"], defs["PASS_WARN_AGE"]]
    shadow.append([user, NO_PASSWORD, days, *ages, "", "", ""])
    _write_table(root, "etc/group", group)
    if has_gshadow:
        _write_table(root, "etc/gshadow", gshadow)
    _write_table(root, "etc/passwd", passwd)
    _write_table(root, "etc/shadow", shadow)

    home = resolve(root, home_name)
    if home.exists():
        progress(f"{home_name} exists already: not copying /etc/skel into it")
    else:
        home.parent.mkdir(parents=True, exist_ok=True)
        home.mkdir()
        skel = resolve(root, defaults["SKEL"])
        if skel.is_dir():
            _copy_skel(skel, home, uid, gid)
        os.chown(home, uid, gid)
        mode = int(defs["HOME_MODE"], 8) if "HOME_MODE" in defs else 0o777 & ~int(defs["UMASK"], 8)
        home.chmod(mode)
    progress(f"added user {user} (uid {uid}, gid {gid}, groups {groups}, home {home_name})")
