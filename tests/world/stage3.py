"""The contents of the stand-in stage3: a Gentoo-shaped root made of the real parts Debian packages.

A real stage3 cannot be downloaded here, so this root is assembled from the same programs a Gentoo
stage3 runs at boot, unpacked from Debian's packages (``tests/debian.py`` keeps the .debs per machine;
nothing is installed on the host):

- sysvinit's ``/sbin/init`` (sysvinit-core) reading Gentoo's /etc/inittab, whose ``s0`` getty on ttyS0
  is commented out (no serial login prompt until the recipe says so); util-linux's ``agetty``;
- OpenRC's real binaries (``openrc``: /sbin/openrc, /sbin/openrc-run, /lib/rc/...) with upstream's own
  Gentoo init scripts (tests/world/openrc/, placeholders filled as OpenRC's build does) in Gentoo's
  runlevels: ``local`` sends /etc/local.d/*.start output to /dev/null unless ``rc_verbose=yes``;
- a real OpenSSH server (sshd, ssh-keygen) with a Gentoo-style /etc/init.d/sshd (``need net``,
  host keys generated at its first start) that is NOT in the default runlevel; no host keys;
- a netifrc-like /etc/init.d/net.lo (``provide net``): net.lo brings up lo, a net.IFACE link to it
  runs /sbin/dhcpcd for ``config_IFACE="dhcp"``; the stage3 has no DHCP client, as on Gentoo;
- glibc and every library those programs link (checked, so a missing one fails the build), shadow's
  useradd, util-linux, mount and e2fsprogs; Debian's start-stop-daemon (dpkg's: Debian's OpenRC is
  built without its own and runs services through it);
- Linux-PAM's modules (libpam-modules; sshd links libpam already) and sys-auth/pambase's
  /etc/pam.d/system-auth and other, for what a package's PAM service includes (app-admin/sudo's);
- /etc/fstab's placeholder entries (/dev/ROOT, /dev/BOOT...): ``fsck`` fails on them until the overlay
  empties it; root's password is locked.

/bin/sh is bash (Debian's), as on Gentoo. Static busybox provides the rest (coreutils, ip, wget...)
where Gentoo's stage3 has the same tool, but none of its DHCP clients.
"""

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests import debian
from tests.world.upstream_binhost import PLACEHOLDER_MIRROR, STAGE3_BINREPO, stage3_binrepo

BUSYBOX = Path("/bin/busybox")
OPENRC_UPSTREAM = Path(__file__).parent / "openrc"

# Debian packages unpacked whole into the root; the libraries they link are added by soname.
PACKAGES = (
    "libc6",
    "bash",
    "sysvinit-core",
    "util-linux",
    "util-linux-extra",
    "fdisk",  # sfdisk: Debian packages it apart, Gentoo's util-linux has it
    "mount",
    "e2fsprogs",
    "openrc",
    "openssh-server",
    "openssh-client",
    "openssh-sftp-server",
    "passwd",
    "procps",
    # sys-libs/pam's modules: a Gentoo stage3 has them, and sudo's PAM service needs pam_unix.
    "libpam-modules",
    "libpam-modules-bin",
    # gcc's runtime libraries: a stage3 has sys-devel/gcc, and C++ programs (zstd's, qemu's) link them.
    "libgcc-s1",
    "libstdc++6",
)
# Where Debian's packages put shared libraries (the dynamic loader's default search path).
LIBRARY_DIRECTORIES = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib")
# Unpacked files a stage3 does without: documentation and Debian's own boot and service glue.
DEBIAN_ONLY = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "lib/systemd",
    "usr/lib/systemd",
    "etc/init.d",
    "etc/runlevels/off",
    "etc/runlevels/recovery",
    "etc/default/ssh",
)
# Busybox applets that would give the stage3 a DHCP client (Gentoo's has none) or replace init.
BUSYBOX_EXCLUDED = ("busybox", "init", "linuxrc", "udhcpc", "udhcpc6", "udhcpd", "dhcprelay")
COMMAND_DIRECTORIES = ("bin", "sbin", "usr/bin", "usr/sbin")
# Debian names a shared library's package after it (libfoo1); zlib1g is the old exception.
LIBRARY_PACKAGE = re.compile(r"^(lib|zlib)")

# OpenRC's meson build fills these for Gentoo (rootprefix /, sbindir /sbin, pkg_prefix /usr).
OPENRC_PLACEHOLDERS = {"@SBINDIR@": "/sbin", "@PKG_PREFIX@": "/usr", "@SYSCONFDIR@": "/etc"}

# Gentoo's runlevels for an OpenRC stage3, less what needs tools it lacks (udev, kbd).
RUNLEVELS = {
    "sysinit": ("cgroups", "devfs", "dmesg", "sysfs"),
    "boot": (
        "bootmisc",
        "fsck",
        "hostname",
        "hwclock",
        "killprocs",
        "localmount",
        "loopback",
        "modules",
        "mtab",
        "net.lo",
        "procfs",
        "root",
        "seedrng",
        "swap",
        "sysctl",
    ),
    "default": ("local", "netmount"),
    "shutdown": ("killprocs", "mount-ro", "savecache"),
}

DIRECTORIES = (
    "boot",
    "dev",
    "etc/conf.d",
    "etc/init.d",
    "etc/insserv.conf.d",
    "etc/local.d",
    "etc/portage",
    "etc/portage/binrepos.conf",
    "etc/skel",
    "etc/ssh/sshd_config.d",
    "home",
    "lib/modules",
    "mnt",
    "opt",
    "proc",
    "run",
    "sys",
    "usr/local/bin",
    "var/cache",
    "var/db/pkg",
    "var/empty",
    "var/lib",
    "var/log",
)

INITTAB = """\
#
# /etc/inittab:  This file describes how the INIT process should set up
#                the system in a certain run-level.
#
# Author:  Miquel van Smoorenburg, <miquels@cistron.nl>
# Modified by:  Patrick J. Volkerding, <volkerdi@ftp.cdrom.com>
# Modified by:  Daniel Robbins, <drobbins@gentoo.org>
# Modified by:  Martin Schlemmer, <azarah@gentoo.org>
# Modified by:  William Hubbs, <williamh@gentoo.org>
#

# Default runlevel.
id:3:initdefault:

# System initialization, mount local filesystems, etc.
si::sysinit:/sbin/openrc sysinit

# Further system initialization, brings up the boot runlevel.
rc::bootwait:/sbin/openrc boot

l0u:0:wait:/sbin/telinit u
l0:0:wait:/sbin/openrc shutdown
l0s:0:wait:/sbin/halt -dhnp
l1:1:wait:/sbin/openrc single
l2:2:wait:/sbin/openrc nonetwork
l3:3:wait:/sbin/openrc default
l4:4:wait:/sbin/openrc default
l5:5:wait:/sbin/openrc default
l6u:6:wait:/sbin/telinit u
l6:6:wait:/sbin/openrc reboot
l6r:6:wait:/sbin/reboot -dkn
#z6:6:respawn:/sbin/sulogin

# new-style single-user
su0:S:wait:/sbin/openrc single
su1:S:wait:/sbin/sulogin

# TERMINALS
#x1:12345:respawn:/sbin/agetty 38400 console linux
c1:12345:respawn:/sbin/agetty --noclear 38400 tty1 linux
c2:2345:respawn:/sbin/agetty 38400 tty2 linux

# SERIAL CONSOLES
#s0:12345:respawn:/sbin/agetty -L 9600 ttyS0 vt100
#s1:12345:respawn:/sbin/agetty -L 9600 ttyS1 vt100

# What to do at the "Three Finger Salute".
ca:12345:ctrlaltdel:/sbin/shutdown -r now
"""

FSTAB = """\
# /etc/fstab: static file system information.
#
# See the manpage fstab(5) for more information.
#
# NOTE: The root filesystem should have a pass number of either 0 or 1.
#       All other filesystems should have a pass number of 0 or greater than 1.

# <fs>			<mountpoint>	<type>		<opts>		<dump> <pass>
/dev/BOOT		/boot		ext2		noauto,noatime	1 2
/dev/ROOT		/		ext3		noatime		0 1
/dev/SWAP		none		swap		sw		0 0
/dev/cdrom		/mnt/cdrom	auto		noauto,ro	0 0
"""

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
bin:x:1:1:bin:/bin:/sbin/nologin
daemon:x:2:2:daemon:/sbin:/sbin/nologin
sshd:x:22:22:User for ssh:/var/empty:/sbin/nologin
nobody:x:65534:65534:nobody:/var/empty:/sbin/nologin
"""

GROUP = """\
root:x:0:root
bin:x:1:root,bin,daemon
daemon:x:2:root,bin,daemon
sys:x:3:root,bin
tty:x:5:
uucp:x:14:
wheel:x:10:root
sshd:x:22:
users:x:100:
nogroup:x:65533:
nobody:x:65534:
"""

# The stage3 ships root locked ("*"): nobody can log in until the recipe decides otherwise.
SHADOW = """\
root:*:10770:0:::::
bin:*:10770:0:::::
daemon:*:10770:0:::::
sshd:!:10770::::::
nobody:*:10770:0:::::
"""

# netifrc's multiplexer, reduced to what a cloud image uses: every net.IFACE is a link to net.lo.
NET_LO = r"""#!/sbin/openrc-run
# net.lo of the farm's stand-in stage3: what Gentoo's netifrc does for lo, DHCP and static addresses.
# Every net.IFACE is a symlink to this script; /etc/conf.d/net says config_IFACE="dhcp" (the default),
# "null" or "ADDRESS/PREFIX ...". DHCP runs /sbin/dhcpcd, which a stage3 does not ship (net-misc/dhcpcd).

description="Configures network interfaces."
IFACE=${RC_SVCNAME#*.}
# netifrc names an interface's variables with every non-alphanumeric character made "_".
IFVAR=$(printf %s "$IFACE" | tr -c 'a-zA-Z0-9_' '_')

depend() {
	need localmount
	after bootmisc
	provide net
	keyword -jail -prefix -vserver
}

start() {
	ebegin "Bringing up interface $IFACE"
	if [ "$IFACE" = lo ]; then
		ip link set lo up || { eend 1; return 1; }
		ip -4 addr show dev lo | grep -q 'inet 127\.0\.0\.1/' || ip addr add 127.0.0.1/8 dev lo brd +
		eend $?
		return
	fi
	eval config=\"\${config_$IFVAR:-dhcp}\"
	if [ "$config" = dhcp ] && [ ! -x /sbin/dhcpcd ]; then
		eend 1 "config_$IFVAR=\"dhcp\" needs a DHCP client, and /sbin/dhcpcd is not installed" \
			"(emerge net-misc/dhcpcd)"
		return 1
	fi
	if [ ! -e "/sys/class/net/$IFACE" ]; then
		eend 1 "interface $IFACE does not exist"
		return 1
	fi
	ip link set "$IFACE" up || { eend 1; return 1; }
	case "$config" in
		dhcp)
			eval dhcpcd_args=\"\${dhcpcd_$IFVAR}\"
			/sbin/dhcpcd $dhcpcd_args "$IFACE"
			eend $? "dhcpcd got no lease on $IFACE"
			;;
		null)
			eend 0
			;;
		*)
			for address in $config; do
				ip addr add "$address" dev "$IFACE" || { eend 1 "cannot add $address to $IFACE"; return 1; }
			done
			eend 0
			;;
	esac
}

stop() {
	[ "$IFACE" = lo ] && return 0
	ebegin "Bringing down interface $IFACE"
	if [ -x /sbin/dhcpcd ] && [ -e "/run/dhcpcd/$IFACE.pid" ]; then
		/sbin/dhcpcd -x "$IFACE"
	fi
	ip addr flush dev "$IFACE" 2>/dev/null
	ip link set "$IFACE" down
	eend $?
}
"""

# Gentoo's net-misc/openssh sshd init script (the one that says "need net"), with Debian's binaries.
SSHD_INIT = r"""#!/sbin/openrc-run
# Copyright 1999-2023 Gentoo Authors
# Distributed under the terms of the GNU General Public License v2

extra_commands="checkconfig"
extra_started_commands="reload"

: ${SSHD_CONFDIR:=${RC_PREFIX%/}/etc/ssh}
: ${SSHD_CONFIG:=${SSHD_CONFDIR}/sshd_config}
: ${SSHD_PIDFILE:=${RC_PREFIX%/}/run/${SVCNAME}.pid}
: ${SSHD_BINARY:=${RC_PREFIX%/}/usr/sbin/sshd}
: ${SSHD_KEYGEN_BINARY:=${RC_PREFIX%/}/usr/bin/ssh-keygen}

command="${SSHD_BINARY}"
pidfile="${SSHD_PIDFILE}"
command_args="${SSHD_OPTS} -o PidFile=${pidfile} -f ${SSHD_CONFIG}"

depend() {
	use logger dns entropy
	need net
}

checkconfig() {
	checkpath --mode 0755 --directory "${RC_PREFIX%/}/var/empty"
	# Debian's sshd keeps its privilege separation directory in /run/sshd (Gentoo's: /var/empty).
	checkpath --mode 0755 --directory "${RC_PREFIX%/}/run/sshd"

	if [ ! -e "${SSHD_CONFIG}" ] ; then
		eerror "You need an ${SSHD_CONFIG} file to run sshd"
		return 1
	fi

	# Host keys are made at the first start: a stage3 (and an image built from it) carries none.
	${SSHD_KEYGEN_BINARY} -A || return 2

	"${command}" -t ${command_args} || return 3
}

start_pre() {
	if [ "${RC_CMD}" != "restart" ] ; then
		checkconfig || return $?
	fi
}

stop_pre() {
	if [ "${RC_CMD}" = "restart" ] ; then
		checkconfig || return $?
	fi
}

reload() {
	checkconfig || return $?
	ebegin "Reloading ${SVCNAME}"
	start-stop-daemon --signal HUP --pidfile "${pidfile}"
	eend $?
}
"""

# Upstream OpenSSH's sshd_config as Gentoo installs it: the drop-in directory is included first, so a
# file there (the recipe's) wins over everything below (for sshd, the first value of an option counts).
SSHD_CONFIG = """\
# This is the sshd server system-wide configuration file.  See
# sshd_config(5) for more information.

# The strategy used for options in the default sshd_config shipped with
# OpenSSH is to specify options with their default value where
# possible, but leave them commented.  Uncommented options override the
# default value.

Include "/etc/ssh/sshd_config.d/*.conf"

#Port 22
#AddressFamily any
#ListenAddress 0.0.0.0
#ListenAddress ::

#HostKey /etc/ssh/ssh_host_rsa_key
#HostKey /etc/ssh/ssh_host_ecdsa_key
#HostKey /etc/ssh/ssh_host_ed25519_key

# Logging
#SyslogFacility AUTH
#LogLevel INFO

# Authentication:

#LoginGraceTime 2m
#PermitRootLogin prohibit-password
#StrictModes yes
#MaxAuthTries 6
#MaxSessions 10

#PubkeyAuthentication yes

# The default is to check both .ssh/authorized_keys and .ssh/authorized_keys2
# but this is overridden so installations will only check .ssh/authorized_keys
AuthorizedKeysFile	.ssh/authorized_keys

# To disable tunneled clear text passwords, change to no here!
#PasswordAuthentication yes
#PermitEmptyPasswords no

#AllowAgentForwarding yes
#AllowTcpForwarding yes
#GatewayPorts no
#X11Forwarding no
#PrintMotd yes
#PrintLastLog yes
#TCPKeepAlive yes
#PermitUserEnvironment no
#ClientAliveInterval 0
#ClientAliveCountMax 3
#UseDNS no
#PidFile /var/run/sshd.pid
#MaxStartups 10:30:100

# no default banner path
#Banner none
"""

# What Gentoo's openssh puts in sshd_config.d (its 9999999gentoo*.conf files, named to sort last).
SSHD_GENTOO_CONF = """\
# Allow client to pass locale environment variables (bug #367017)
AcceptEnv LANG LC_*

# Allow client to pass COLORTERM to match TERM (bug #658540)
AcceptEnv COLORTERM

# override default of no subsystems
Subsystem	sftp	/usr/lib/openssh/sftp-server
"""

# sys-libs/glibc's nsswitch.conf (the databases a stage3 resolves from files and DNS).
NSSWITCH = """\
passwd:      files
shadow:      files
group:       files

hosts:       files dns
networks:    files dns

services:    db files
protocols:   db files
rpc:         db files
ethers:      db files
netmasks:    files
netgroup:    files
bootparams:  files

automount:   files
aliases:     files
"""

# sys-auth/pambase's stacks, reduced to the modules Debian's libpam-modules has: the PAM services of
# packages (sudo's, login's) include system-auth; a service without a file of its own gets other.
PAM_SYSTEM_AUTH = """\
auth		required	pam_unix.so try_first_pass likeauth nullok
account		required	pam_unix.so
password	required	pam_unix.so try_first_pass use_authtok nullok yescrypt shadow
session		required	pam_limits.so
session		required	pam_unix.so
"""
PAM_OTHER = """\
auth		required	pam_deny.so
account		required	pam_deny.so
password	required	pam_deny.so
session		required	pam_deny.so
"""

TEXT_FILES = {
    "etc/inittab": (INITTAB, 0o644),
    "etc/fstab": (FSTAB, 0o644),
    "etc/passwd": (PASSWD, 0o644),
    "etc/group": (GROUP, 0o644),
    "etc/shadow": (SHADOW, 0o600),
    "etc/nsswitch.conf": (NSSWITCH, 0o644),
    "etc/hosts": ("# /etc/hosts: Local Host Database\n127.0.0.1\tlocalhost\n::1\t\tlocalhost\n", 0o644),
    "etc/hostname": ("localhost\n", 0o644),
    "etc/conf.d/net": (
        "# This blank configuration will automatically use DHCP for any net.*\n"
        "# scripts in /etc/init.d.  To create a more complete configuration,\n"
        "# please review /usr/share/doc/netifrc*/net.example* and save your configuration\n"
        "# in /etc/conf.d/net (this file :]!).\n",
        0o644,
    ),
    "etc/gentoo-release": ("Gentoo Base System release 2.17\n", 0o644),
    "etc/os-release": (
        'NAME=Gentoo\nID=gentoo\nPRETTY_NAME="Gentoo Linux"\nVERSION_ID="2.17"\n'
        'HOME_URL="https://www.gentoo.org/"\n',
        0o644,
    ),
    "etc/issue": ("\nThis is \\n (\\s \\m \\r) \\l\n\n", 0o644),
    "etc/profile": ("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n", 0o644),
    "etc/securetty": ("console\ntty1\ntty2\nttyS0\nhvc0\n", 0o600),
    "etc/shells": ("/bin/sh\n/bin/bash\n", 0o644),
    "etc/skel/.profile": ("# ~/.profile: run by login shells\n", 0o644),
    "etc/portage/make.conf": (
        'COMMON_FLAGS="-O2 -pipe"\nCFLAGS="${COMMON_FLAGS}"\nCXXFLAGS="${COMMON_FLAGS}"\n'
        "LC_MESSAGES=C.utf8\n",
        0o644,
    ),
    # As a real stage3 ships it: Gentoo's binhost, here the world's upstream binhost.
    STAGE3_BINREPO: (stage3_binrepo(PLACEHOLDER_MIRROR), 0o644),
    "etc/pam.d/system-auth": (PAM_SYSTEM_AUTH, 0o644),
    "etc/pam.d/other": (PAM_OTHER, 0o644),
    "etc/ssh/sshd_config": (SSHD_CONFIG, 0o644),
    "etc/ssh/sshd_config.d/9999999gentoo.conf": (SSHD_GENTOO_CONF, 0o644),
    # Debian's OpenRC maps LSB facilities through insserv's table (this file and etc/insserv.conf.d,
    # which it reports missing on every dependency scan); a stage3 has no LSB scripts.
    "etc/insserv.conf": ("# Read by Debian's OpenRC; this system has no LSB init scripts.\n", 0o644),
    "etc/init.d/net.lo": (NET_LO, 0o755),
    "etc/init.d/sshd": (SSHD_INIT, 0o755),
}


def _is_elf(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) == b"\x7fELF"


def _missing_sonames(root: Path, present: Sequence[Path] = ()) -> set[str]:
    """The shared libraries (sonames) some ELF file in ``root`` links and the root lacks, as ``ldd`` finds.

    A library is found in the loader's directories (of ``root`` or of a ``present`` root the files will
    be installed beside) or, for modules loaded by $ORIGIN (glibc's gconv modules), beside the file that
    links it.
    """
    bases = (root, *present)
    elves = [path for path in root.rglob("*") if path.is_file() and not path.is_symlink() and _is_elf(path)]
    if not elves:
        return set()
    listing = subprocess.run(
        ["readelf", "--dynamic", "--wide", *map(str, elves)], check=True, capture_output=True, text=True
    ).stdout
    # readelf heads each file's part with its name only when given several.
    if len(elves) == 1:
        sections = [f"{elves[0]}\n{listing}"]
    else:
        sections = re.split(r"^File: ", listing, flags=re.MULTILINE)[1:]
    missing = set()
    for section in sections:
        origin = Path(section.split("\n", 1)[0]).parent
        for soname in re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", section):
            directories = (origin, *(base / directory for base in bases for directory in LIBRARY_DIRECTORIES))
            if not any((directory / soname).exists() for directory in directories):
                missing.add(soname)
    return missing


def install_debian_packages(root: Path, packages: Sequence[str], present: Sequence[Path] = ()) -> None:
    """Unpack ``packages`` into ``root``, then each library package their Depends name that provides a soname
    missing from ``root`` and from the ``present`` roots (what ``root``'s files will be installed beside)."""
    installed: dict[str, Path] = {}
    for package in packages:
        installed[package] = debian.download(package)
        debian.extract(installed[package], root)
    provided: dict[str, set[str]] = {}
    while missing := _missing_sonames(root, present):
        candidates = sorted(
            name
            for deb in installed.values()
            for name in debian.dependencies(deb)
            if LIBRARY_PACKAGE.match(name) and name not in installed
        )
        added = False
        for candidate in candidates:
            if candidate not in provided:
                deb = debian.download(candidate)
                provided[candidate] = {Path(member).name for member in debian.members(deb)}
            if provided[candidate] & missing:
                installed[candidate] = debian.download(candidate)
                debian.extract(installed[candidate], root)
                added = True
        if not added:
            raise RuntimeError(
                f"{', '.join(packages)} link {', '.join(sorted(missing))}, which no library package "
                f"among their dependencies provides ({', '.join(candidates) or 'none left'})"
            )


def _install_start_stop_daemon(root: Path) -> None:
    """dpkg's start-stop-daemon: Debian builds OpenRC without its own, and openrc-run calls this one."""
    with tempfile.TemporaryDirectory() as unpacked:
        debian.extract(debian.download("dpkg"), Path(unpacked))
        shutil.copy2(Path(unpacked) / "sbin/start-stop-daemon", root / "sbin/start-stop-daemon")


def _install_busybox(root: Path) -> None:
    """Static busybox for the commands no real package here provides.

    /bin/sh is bash, as on Gentoo: Debian's busybox ash runs its own applets before anything on PATH,
    so with it as /bin/sh the init scripts would call busybox's mount, sysctl... instead of the real ones.
    """
    (root / "bin/sh").symlink_to("bash")
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    listing = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True, text=True).stdout
    for applet_path in listing.split():
        applet = Path(applet_path)
        if applet.name in BUSYBOX_EXCLUDED:
            continue
        if any((root / directory / applet.name).exists() for directory in COMMAND_DIRECTORIES):
            continue
        link = root / applet
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(root / "bin/busybox", link.parent))


def fill_openrc_placeholders(text: str, name: str) -> str:
    """An upstream ``*.in`` file as OpenRC's build installs it for Gentoo."""
    for placeholder, value in OPENRC_PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise RuntimeError(f"{name}: no value for OpenRC build placeholder(s) {', '.join(sorted(set(left)))}")
    return text


def _install_openrc_scripts(root: Path) -> None:
    for source in sorted((OPENRC_UPSTREAM / "init.d").glob("*.in")):
        script = root / "etc/init.d" / source.stem
        script.write_text(fill_openrc_placeholders(source.read_text(), source.name))
        os.chmod(script, 0o755)
    for source in sorted((OPENRC_UPSTREAM / "conf.d").iterdir()):
        shutil.copyfile(source, root / "etc/conf.d" / source.name)
    shutil.copyfile(OPENRC_UPSTREAM / "rc.conf", root / "etc/rc.conf")
    shutil.copyfile(OPENRC_UPSTREAM / "local.d.README", root / "etc/local.d/README")
    for level, services in RUNLEVELS.items():
        directory = root / "etc/runlevels" / level
        directory.mkdir(parents=True, exist_ok=True)
        for service in services:
            if not (root / "etc/init.d" / service).is_file():
                raise RuntimeError(f"runlevel {level} names {service}, which has no /etc/init.d script")
            (directory / service).symlink_to(f"/etc/init.d/{service}")


def remove_debian_only(root: Path) -> None:
    """Remove what a Gentoo system does without (DEBIAN_ONLY) from ``root``."""
    for unwanted in DEBIAN_ONLY:
        path = root / unwanted
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def populate_stage3_root(root: Path) -> None:
    """Fill ``root`` (created if missing) with the stand-in stage3's files."""
    root.mkdir(parents=True, exist_ok=True)
    install_debian_packages(root, PACKAGES)
    remove_debian_only(root)
    for directory in DIRECTORIES:
        (root / directory).mkdir(parents=True, exist_ok=True)
    for private, mode in (("root", 0o700), ("tmp", 0o1777), ("var/tmp", 0o1777)):
        (root / private).mkdir(parents=True, exist_ok=True)
        os.chmod(root / private, mode)
    _install_start_stop_daemon(root)
    _install_busybox(root)
    for relative, (content, mode) in TEXT_FILES.items():
        path = root / relative
        path.write_text(content)
        os.chmod(path, mode)
    _install_openrc_scripts(root)
