"""The contents of the stand-in stage3: a small Gentoo-like root built around Debian's static busybox.

A real stage3 cannot be downloaded here. This root behaves the way a stage3 does where the recipe's
overrides matter, so that it is the overlay (not this file) that makes the image boot and work:

- /etc/fstab carries the stage3's placeholder entries (/dev/ROOT, /dev/BOOT...): the boot runlevel's
  ``fsck`` fails on them and the system never reaches the default runlevel, until the overlay empties it;
- /etc/inittab is Gentoo's, with the ``s0`` getty on ttyS0 commented out: no serial login prompt;
- root's password is locked; there is no ``net.eth0`` and ``sshd`` is not in the default runlevel, so
  the network stays down and nothing fetches metadata;
- /sbin/init reads /etc/inittab like sysvinit (sysinit, bootwait, then the initdefault runlevel's
  ``wait`` and ``respawn`` entries), /sbin/openrc starts a runlevel's services the way OpenRC orders
  them (``local`` last, running /etc/local.d/*.start in order), and both print OpenRC/sysvinit-like lines.

``useradd`` understands the options the image builder uses (``-m -G wheel,users NAME``), and busybox
provides udhcpc, wget, nc and timeout for the recipe's cloud-init.start.
"""

import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = Path("/bin/busybox")

# Applets that Gentoo keeps in /sbin (scripts and inittab call them by these paths).
SBIN_APPLETS = (
    "getty",
    "halt",
    "ifconfig",
    "insmod",
    "ip",
    "losetup",
    "mdev",
    "mkswap",
    "modprobe",
    "poweroff",
    "reboot",
    "route",
    "sulogin",
    "swapoff",
    "swapon",
    "switch_root",
    "udhcpc",
)

DIRECTORIES = (
    "bin",
    "boot",
    "dev",
    "etc/conf.d",
    "etc/init.d",
    "etc/local.d",
    "etc/portage",
    "etc/runlevels/boot",
    "etc/runlevels/default",
    "etc/runlevels/shutdown",
    "etc/runlevels/sysinit",
    "etc/skel",
    "etc/ssh",
    "home",
    "lib/modules",
    "lib/rc/sh",
    "mnt",
    "opt",
    "proc",
    "run",
    "sbin",
    "sys",
    "usr/bin",
    "usr/lib",
    "usr/local/bin",
    "usr/sbin",
    "usr/share/udhcpc",
    "var/cache",
    "var/db/pkg",
    "var/empty",
    "var/lib",
    "var/log",
    "var/tmp",
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
root:x:0:0:root:/root:/bin/sh
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

INIT = r"""#!/bin/busybox sh
# /sbin/init of the farm's stand-in stage3: reads Gentoo's /etc/inittab the way sysvinit does.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
umask 022

if [ "$$" != 1 ]; then
	echo "init: must be run as process 1" >&2
	exit 1
fi

echo "INIT: version 3.08 (gentoo-farm stand-in) booting"

runlevel=$(sed -n 's/^[^#:]*:\([0-9S]\):initdefault:.*/\1/p' /etc/inittab | head -n 1)
[ -n "$runlevel" ] || runlevel=3

# Print "process" for each inittab entry with the given action (and, for runlevel actions,
# the current runlevel).
entries() {
	while IFS=: read -r id levels action process; do
		case "$id" in '#'*|'') continue ;; esac
		[ "$action" = "$1" ] || continue
		case "$action" in
			sysinit|bootwait) ;;
			*) case "$levels" in *"$runlevel"*) ;; *) continue ;; esac ;;
		esac
		echo "$process"
	done < /etc/inittab
}

power_off() {
	echo "INIT: Switching to runlevel: 0"
	/sbin/openrc shutdown
	echo "INIT: no more processes left in this runlevel"
	sync
	exec poweroff -f
}
trap power_off USR2 TERM
trap 'sync; exec reboot -f' INT

# /run is where the system keeps its state; before sysinit mounts it, init remembers nothing.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run 2>/dev/null

entries sysinit > /run/init.sysinit
while read -r process; do sh -c "$process" < /dev/console > /dev/console 2>&1; done < /run/init.sysinit

entries bootwait > /run/init.bootwait
while read -r process; do
	if ! sh -c "$process" < /dev/console > /dev/console 2>&1; then
		# What sysvinit's sulogin shows when the boot runlevel fails: a root shell or nothing.
		echo "INIT: the boot runlevel failed"
		echo "Give root password for maintenance"
		echo "(or press Control-D to continue): "
		while :; do sleep 3600 & wait $!; done
	fi
done < /run/init.bootwait

echo "INIT: Entering runlevel: $runlevel"
entries wait > /run/init.wait
while read -r process; do sh -c "$process" < /dev/console > /dev/console 2>&1; done < /run/init.wait

entries respawn > /run/init.respawn
while read -r process; do
	# sysvinit disables an entry that respawns too fast; a pause between runs does the same job here.
	( while :; do setsid sh -c "exec $process" < /dev/null > /dev/null 2>&1; sleep 10; done ) &
done < /run/init.respawn

while :; do sleep 3600 & wait $!; done
"""

FUNCTIONS_SH = r"""# OpenRC's output helpers (einfo, ebegin, eend...), for the stand-in stage3.
einfo() { echo " * $*"; }
ewarn() { echo " * WARNING: $*"; }
eerror() { echo " * ERROR: $*"; }
ebegin() { printf ' * %s ...\n' "$*"; }
eend() {
	status=${1:-0}
	shift
	if [ "$status" = 0 ]; then
		echo " [ ok ]"
	else
		[ $# -gt 0 ] && eerror "$*"
		echo " [ !! ]"
	fi
	return "$status"
}
is_mounted() { grep -q "^[^ ]* $1 " /proc/mounts 2>/dev/null; }
yesno() { case "$1" in [Yy][Ee][Ss]|[Tt][Rr][Uu][Ee]|[Oo][Nn]|1) return 0 ;; *) return 1 ;; esac; }
"""

OPENRC = r"""#!/bin/busybox sh
# /sbin/openrc of the farm's stand-in stage3: starts the services of one runlevel in OpenRC's order.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
. /lib/rc/sh/functions.sh

level=${1:-default}
state=/run/openrc/started
mkdir -p "$state"

if [ "$level" = sysinit ]; then
	echo
	echo "   OpenRC 0.54 (gentoo-farm stand-in) is starting up Gentoo Linux ($(uname -m))"
	echo
fi

if [ "$level" = shutdown ]; then
	for service in $(ls "$state" 2>/dev/null | sort -r); do
		/etc/init.d/"$service" stop
	done
	exit 0
fi

# OpenRC orders by dependencies; these are the ones the stage3's services declare, and "local"
# runs after everything else.
order() {
	for name in sysfs devfs fsck root localmount hostname loopback; do
		[ -e "/etc/runlevels/$level/$name" ] && echo "$name"
	done
	others=$(ls "/etc/runlevels/$level" | grep -v -x -e sysfs -e devfs -e fsck -e root -e localmount \
		-e hostname -e loopback -e local | sort)
	echo "$others" | grep '^net\.'
	echo "$others" | grep -v '^net\.'
	[ -e "/etc/runlevels/$level/local" ] && echo local
}

failed=0
for service in $(order); do
	[ -e "$state/$service" ] && continue
	if [ ! -x "/etc/runlevels/$level/$service" ]; then
		eerror "$service: no such service (broken link /etc/runlevels/$level/$service)"
		failed=1
		continue
	fi
	if "/etc/runlevels/$level/$service" start; then
		: > "$state/$service"
	else
		eerror "$service failed to start"
		failed=1
		[ "$service" = fsck ] && { eerror "rc: Aborting!"; exit 1; }
	fi
done
[ "$level" = default ] && einfo "Runlevel default reached"
exit "$failed"
"""

OPENRC_RUN = r"""#!/bin/busybox sh
# /sbin/openrc-run of the farm's stand-in stage3: runs one service script's start() or stop().
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
. /lib/rc/sh/functions.sh
script=$1
command_name=${2:-start}
RC_SVCNAME=${script##*/}
export RC_SVCNAME
start() { ebegin "Starting $RC_SVCNAME"; eend 0; }
stop() { ebegin "Stopping $RC_SVCNAME"; eend 0; }
. "$script"
case "$command_name" in
	start|stop) "$command_name" ;;
	*) eerror "$RC_SVCNAME: unknown command $command_name"; exit 1 ;;
esac
"""

SERVICES = {
    "devfs": r"""#!/sbin/openrc-run
description="Mount /dev"
start() {
	is_mounted /dev || mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
	mkdir -p /dev/pts /dev/shm
	mount -t devpts -o gid=5,mode=0620 devpts /dev/pts 2>/dev/null
	return 0
}
""",
    "sysfs": r"""#!/sbin/openrc-run
description="Mount /proc and /sys"
start() {
	is_mounted /proc || mount -t proc -o nosuid,nodev,noexec proc /proc
	is_mounted /sys || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
}
""",
    "fsck": r"""#!/sbin/openrc-run
description="Check the filesystems listed in /etc/fstab"
start() {
	ebegin "Checking local filesystems"
	failed=0
	while read -r device mountpoint type options dump pass; do
		case "$device" in '#'*|'') continue ;; esac
		case "$options" in *noauto*) continue ;; esac
		[ "${pass:-0}" -gt 0 ] || continue
		if [ ! -b "$device" ]; then
			eerror "fsck.$type: No such file or directory while trying to open $device"
			failed=1
		fi
	done < /etc/fstab
	if [ "$failed" != 0 ]; then
		eerror "Operational error"
		eerror "Filesystems couldn't be fixed"
	fi
	eend "$failed"
}
""",
    "root": r"""#!/sbin/openrc-run
description="Mount the root filesystem read/write"
start() {
	case " $(grep ' / ' /proc/mounts) " in
		*" ro,"*|*" ro "*)
			ebegin "Remounting root filesystem read/write"
			mount -o remount,rw /
			eend $?
			;;
	esac
	return 0
}
""",
    "localmount": r"""#!/sbin/openrc-run
description="Mount the local filesystems listed in /etc/fstab"
start() {
	ebegin "Mounting local filesystems"
	mkdir -p /tmp && chmod 1777 /tmp
	mount -a -t noproc,nosysfs,nonfs,nonfs4,noswap -O no_netdev
	eend $?
}
""",
    "hostname": r"""#!/sbin/openrc-run
description="Set the hostname from /etc/conf.d/hostname"
start() {
	hostname=localhost
	[ -r /etc/conf.d/hostname ] && . /etc/conf.d/hostname
	ebegin "Setting hostname to $hostname"
	hostname "$hostname"
	eend $?
}
""",
    "loopback": r"""#!/sbin/openrc-run
description="Configure the loopback interface"
start() {
	ebegin "Bringing up network interface lo"
	ip addr add 127.0.0.1/8 dev lo 2>/dev/null
	ip link set lo up
	eend $?
}
""",
    # netifrc's net.lo: every net.IFACE is a link to it and configures IFACE (DHCP unless told otherwise).
    "net.lo": r"""#!/sbin/openrc-run
description="Configure a network interface"
start() {
	iface=${RC_SVCNAME#net.}
	ebegin "Bringing up interface $iface"
	if [ "$iface" = lo ]; then
		ip addr add 127.0.0.1/8 dev lo 2>/dev/null
		ip link set lo up
		eend $?
		return
	fi
	ip link set "$iface" up && udhcpc -i "$iface" -n -q -t 5 -s /usr/share/udhcpc/default.script
	eend $? "$iface: no DHCP lease"
}
""",
    "netmount": r"""#!/sbin/openrc-run
description="Mount network filesystems"
start() {
	ebegin "Mounting network filesystems"
	eend 0
}
""",
    "sshd": r"""#!/sbin/openrc-run
description="OpenSSH server (the stand-in world ships no SSH daemon)"
start() {
	ebegin "Starting sshd"
	mkdir -p /var/empty
	eend 0
}
""",
    "local": r"""#!/sbin/openrc-run
description="Run the executable scripts /etc/local.d/*.start, in order"
start() {
	ebegin "Starting local"
	has_errors=0
	for file in /etc/local.d/*.start; do
		[ -x "$file" ] || continue
		"$file" || { eerror "$file returned an error"; has_errors=1; }
	done
	eend "$has_errors"
}
""",
}

RUNLEVELS = {
    "sysinit": ("sysfs", "devfs"),
    "boot": ("fsck", "root", "localmount", "hostname", "loopback"),
    "default": ("local", "netmount"),
}

UDHCPC_SCRIPT = r"""#!/bin/sh
# Applies a DHCP lease from busybox udhcpc to the interface.
case "$1" in
	deconfig)
		ip addr flush dev "$interface"
		;;
	bound|renew)
		ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
		for gateway in $router; do
			route add default gw "$gateway" dev "$interface" 2>/dev/null
		done
		: > /etc/resolv.conf
		for server in $dns; do echo "nameserver $server" >> /etc/resolv.conf; done
		;;
esac
exit 0
"""

USERADD = r"""#!/bin/sh
# useradd (shadow's options the farm uses: -m -G -g -s -d -u -c) for the stand-in stage3.
usage() {
	echo "Usage: useradd [-m] [-G GROUP,...] [-g GROUP] [-s SHELL] [-d HOME] [-u UID] [-c TEXT] LOGIN" >&2
	exit 2
}
create_home=no groups= shell=/bin/sh home= uid= comment= primary=
while getopts mG:g:s:d:u:c: option; do
	case "$option" in
		m) create_home=yes ;;
		G) groups=$OPTARG ;;
		g) primary=$OPTARG ;;
		s) shell=$OPTARG ;;
		d) home=$OPTARG ;;
		u) uid=$OPTARG ;;
		c) comment=$OPTARG ;;
		*) usage ;;
	esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage
login=$1
if grep -q "^$login:" /etc/passwd; then
	echo "useradd: user '$login' already exists" >&2
	exit 9
fi
for group in $(echo "$groups" | tr , ' '); do
	grep -q "^$group:" /etc/group || { echo "useradd: group '$group' does not exist" >&2; exit 6; }
done
# The first free id from 1000 on, like shadow's UID_MIN.
next_id() {
	cut -d: -f"$2" "$1" | awk -v id=1000 '$1 >= id && $1 < 60000 { id = $1 + 1 } END { print id }'
}
[ -n "$uid" ] || uid=$(next_id /etc/passwd 3)
if [ -n "$primary" ]; then
	gid=$(awk -F: -v g="$primary" '$1 == g || $3 == g { print $3; exit }' /etc/group)
	[ -n "$gid" ] || { echo "useradd: group '$primary' does not exist" >&2; exit 6; }
else
	gid=$uid
	cut -d: -f3 /etc/group | grep -qx "$gid" && gid=$(next_id /etc/group 3)
	echo "$login:x:$gid:" >> /etc/group
fi
[ -n "$home" ] || home=/home/$login
echo "$login:x:$uid:$gid:$comment:$home:$shell" >> /etc/passwd
echo "$login:!:$(( $(date +%s) / 86400 )):0:99999:7:::" >> /etc/shadow
for group in $(echo "$groups" | tr , ' '); do
	sed -i -e "/^$group:/{s/:\$/:$login/;t" -e "s/\$/,$login/;}" /etc/group
done
if [ "$create_home" = yes ]; then
	mkdir -p "$home"
	cp -a /etc/skel/. "$home"/
	chown -R "$uid:$gid" "$home"
	chmod 0700 "$home"
fi
"""

AGETTY = """#!/bin/sh
# agetty's common options, served by busybox getty.
[ "$1" = --noclear ] && shift
exec /bin/busybox getty "$@"
"""

TEXT_FILES = {
    "etc/inittab": (INITTAB, 0o644),
    "etc/fstab": (FSTAB, 0o644),
    "etc/passwd": (PASSWD, 0o644),
    "etc/group": (GROUP, 0o644),
    "etc/shadow": (SHADOW, 0o600),
    "etc/hostname": ("localhost\n", 0o644),
    "etc/conf.d/hostname": (
        '# Hostname fallback if /etc/hostname does not exist\nhostname="localhost"\n',
        0o644,
    ),
    "etc/conf.d/net": ("# netifrc: every interface without a config_IFACE line uses DHCP\n", 0o644),
    "etc/gentoo-release": ("Gentoo Base System release 2.17\n", 0o644),
    "etc/os-release": (
        'NAME=Gentoo\nID=gentoo\nPRETTY_NAME="Gentoo Linux"\nVERSION_ID="2.17"\n'
        'HOME_URL="https://www.gentoo.org/"\n',
        0o644,
    ),
    "etc/issue": ("\nThis is \\n (\\s \\m \\r) \\l\n\n", 0o644),
    "etc/profile": ("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n", 0o644),
    "etc/securetty": ("console\ntty1\ntty2\nttyS0\nhvc0\n", 0o600),
    "etc/shells": ("/bin/sh\n/bin/ash\n", 0o644),
    "etc/skel/.profile": ("# ~/.profile: run by login shells\n", 0o644),
    "etc/local.d/README": (
        "This directory should contain programs or scripts which are to be run\n"
        "when the local service is started or stopped.\n"
        "Programs whose names end in .start are run when the local service starts.\n",
        0o644,
    ),
    "etc/portage/make.conf": (
        'COMMON_FLAGS="-O2 -pipe"\nCFLAGS="${COMMON_FLAGS}"\nCXXFLAGS="${COMMON_FLAGS}"\n'
        "LC_MESSAGES=C.utf8\n",
        0o644,
    ),
    "lib/rc/sh/functions.sh": (FUNCTIONS_SH, 0o644),
    "sbin/init": (INIT, 0o755),
    "sbin/openrc": (OPENRC, 0o755),
    "sbin/openrc-run": (OPENRC_RUN, 0o755),
    "sbin/agetty": (AGETTY, 0o755),
    "usr/sbin/useradd": (USERADD, 0o755),
    "usr/share/udhcpc/default.script": (UDHCPC_SCRIPT, 0o755),
}


def _busybox_applets() -> list[str]:
    listing = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True).stdout
    return [name for name in listing.split() if name not in ("busybox", "init", "linuxrc")]


def populate_stage3_root(root: Path) -> None:
    """Fill ``root`` (created if missing) with the stand-in stage3's files."""
    for directory in DIRECTORIES:
        (root / directory).mkdir(parents=True, exist_ok=True)
    for private, mode in (("root", 0o700), ("tmp", 0o1777), ("var/tmp", 0o1777)):
        (root / private).mkdir(parents=True, exist_ok=True)
        os.chmod(root / private, mode)

    shutil.copy2(BUSYBOX, root / "bin/busybox")
    for applet in _busybox_applets():
        target = root / "bin" / applet
        if not target.exists():
            target.symlink_to("busybox")
    for applet in SBIN_APPLETS:
        (root / "sbin" / applet).symlink_to("../bin/busybox")

    for relative, (content, mode) in TEXT_FILES.items():
        path = root / relative
        path.write_text(content)
        os.chmod(path, mode)
    for service, script in SERVICES.items():
        path = root / "etc/init.d" / service
        path.write_text(script)
        os.chmod(path, 0o755)
    for level, services in RUNLEVELS.items():
        for service in services:
            (root / "etc/runlevels" / level / service).symlink_to(f"/etc/init.d/{service}")
