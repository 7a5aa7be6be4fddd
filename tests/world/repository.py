"""A small EAPI 8 ebuild repository and the distfiles its ebuilds fetch.

The packages compile real C: a core library everything links against, a generator-made set of
compile-heavy libraries (so a from-source emerge costs tens of seconds and a binhost visibly
saves it), a static ``farm-hello`` the image runs at boot, an OpenRC service and a metapackage.
``net-misc/dhcpcd`` installs Debian's real dhcpcd build (the stand-in stage3, like Gentoo's, has no
DHCP client): its distfile is the binary and the libraries it links, taken from Debian's packages.
``app-admin/sudo`` (what ``[image] admin = "sudo"`` adds to the image) installs Debian's real sudo the
same way, with Gentoo's PAM service file for it. What a worker image adds (WORKER_BUILDS: python, git,
qemu, syslinux...) is Debian's builds too, each with the libraries it links that the stage3 lacks.
"""

import gzip
import hashlib
import io
import shutil
import subprocess
import tarfile
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests import debian
from tests.world.stage3 import install_debian_packages, remove_debian_only

REPO_NAME = "gentoo"
PROFILE = "default/linux/amd64/farm"
UPSTREAM_SRC_URI = "https://upstream.farm.invalid/distfiles"
HELLO_MESSAGE = "farm-hello: emerged package runs"
STATIC_PACKAGE = "app-misc/farm-hello"
SERVICE_PACKAGE = "app-misc/farm-motd"
SERVICE_NAME = "farm-motd"
# Each synthetic library is UNITS_PER_LIBRARY C files of FUNCTIONS_PER_UNIT optimisable functions:
# about 7 s of gcc -O2 per library on this machine (idle). Few, heavy packages, like a real image's set.
# A ``compile_scale`` of N gives each library N times the units (the benchmark's heavier world); the
# package set, its names and its dependencies stay the same.
SYNTHETIC_LIBRARIES = 4
UNITS_PER_LIBRARY = 4
FUNCTIONS_PER_UNIT = 200
DHCP_PACKAGE = "net-misc/dhcpcd"
# The upstream version of Debian's dhcpcd-base the ebuild repackages (checked when the distfile is made).
DHCPCD_VERSION = "9.4.1"
SUDO_PACKAGE = "app-admin/sudo"
# The upstream version of Debian's sudo the ebuild repackages (checked when the distfile is made).
SUDO_VERSION = "1.9.13_p3"
# What the tests' farms configure as [image] packages; the farm adds SUDO_PACKAGE for [image] admin.
PACKAGE_SET = (STATIC_PACKAGE, SERVICE_PACKAGE, "app-misc/farm-tools", DHCP_PACKAGE)
# Gentoo's app-admin/sudo installs this PAM service (Debian's @includes its own common-* files).
SUDO_PAM_SERVICE = """\
#%PAM-1.0
auth		include		system-auth
account		include		system-auth
session		include		system-auth
"""

PROFILE_MAKE_DEFAULTS = """\
ARCH="amd64"
ACCEPT_KEYWORDS="amd64"
CHOST="x86_64-pc-linux-gnu"
CFLAGS="-O2 -pipe"
CXXFLAGS="${CFLAGS}"
LDFLAGS="-Wl,-O1 -Wl,--as-needed"
ABI="amd64"
DEFAULT_ABI="amd64"
MULTILIB_ABIS="amd64"
LIBDIR_amd64="lib64"
ELIBC="glibc"
KERNEL="linux"
USERLAND="GNU"
USE_EXPAND="ELIBC KERNEL USERLAND"
USE_EXPAND_HIDDEN="ELIBC KERNEL USERLAND"
USE_EXPAND_IMPLICIT="ARCH ELIBC KERNEL USERLAND"
USE_EXPAND_UNPREFIXED="ARCH"
USE_EXPAND_VALUES_ARCH="amd64"
USE_EXPAND_VALUES_ELIBC="glibc"
USE_EXPAND_VALUES_KERNEL="linux"
USE_EXPAND_VALUES_USERLAND="GNU"
IUSE_IMPLICIT="prefix prefix-guest prefix-stack"
"""

LIBRARY_EBUILD = """\
# Copyright 2026 Gentoo Farm test world
# Distributed under the terms of the GNU General Public License v2

EAPI=8

DESCRIPTION="{description}"
HOMEPAGE="https://farm.invalid/"
SRC_URI="{src_uri}/${{P}}.tar.gz"

LICENSE="GPL-2"
SLOT="0"
KEYWORDS="amd64"
{dependencies}
src_compile() {{
	emake CC="${{CC:-gcc}}" AR="${{AR:-ar}}" CFLAGS="${{CFLAGS}} -I${{ESYSROOT}}/usr/include" \\
		LDFLAGS="${{LDFLAGS}} -L${{ESYSROOT}}/usr/lib64"
}}

src_install() {{
	emake DESTDIR="${{D}}" install
{extra_install}}}
"""

METAPACKAGE_EBUILD = """\
# Copyright 2026 Gentoo Farm test world
# Distributed under the terms of the GNU General Public License v2

EAPI=8

DESCRIPTION="{description}"
HOMEPAGE="https://farm.invalid/"

LICENSE="metapackage"
SLOT="0"
KEYWORDS="amd64"

RDEPEND="{rdepend}"
"""

FARM_CORE_HEADER = """\
#ifndef FARMCORE_H
#define FARMCORE_H
#include <stdint.h>
uint64_t farmcore_mix(uint64_t value);
const char *farmcore_banner(void);
#endif
"""

FARM_CORE_SOURCE = """\
#include "farmcore.h"

uint64_t farmcore_mix(uint64_t value) {
    value ^= value >> 33;
    value *= 0xff51afd7ed558ccdULL;
    value ^= value >> 33;
    return value;
}

const char *farmcore_banner(void) {
    return "farm-hello";
}
"""

HELLO_SOURCE = """\
#include <stdio.h>
#include "farmcore.h"

/* Prints HELLO_MESSAGE: the boot test looks for that line on the serial console. */
int main(void) {
    printf("%s: emerged package runs\\n", farmcore_banner());
    return 0;
}
"""

HELLO_MAKEFILE = """\
farm-hello: hello.c
\t$(CC) $(CFLAGS) -static -o $@ hello.c $(LDFLAGS) -lfarmcore

install: farm-hello
\tinstall -D -m 755 farm-hello $(DESTDIR)/usr/bin/farm-hello
\tinstall -D -m 755 50-farm-hello.start $(DESTDIR)/etc/local.d/50-farm-hello.start
"""

HELLO_LOCAL_D = """\
#!/bin/sh
# Proves at boot that content emerged by the farm made it into the image.
/usr/bin/farm-hello
"""

MOTD_INIT_SCRIPT = """\
#!/sbin/openrc-run
# Writes the farm's message of the day at boot.

description="Write the Gentoo farm message of the day"

depend() {
	need localmount
}

start() {
	ebegin "Writing the farm message of the day"
	/usr/bin/farm-motd > /etc/motd
	eend $?
}
"""

MOTD_SOURCE = """\
#include <stdio.h>
#include "farmcore.h"

int main(void) {
    printf("This image was baked by the Gentoo farm (%s).\\n", farmcore_banner());
    return 0;
}
"""

MOTD_MAKEFILE = """\
farm-motd: motd.c
\t$(CC) $(CFLAGS) -static -o $@ motd.c $(LDFLAGS) -lfarmcore

install: farm-motd
\tinstall -D -m 755 farm-motd $(DESTDIR)/usr/bin/farm-motd
\tinstall -D -m 755 farm-motd.initd $(DESTDIR)/etc/init.d/farm-motd
\tinstall -D -m 644 farm-motd.confd $(DESTDIR)/etc/conf.d/farm-motd
"""


DHCPCD_EBUILD = """\
# Copyright 2026 Gentoo Farm test world
# Distributed under the terms of the GNU General Public License v2

EAPI=8

DESCRIPTION="A DHCP and DHCPv6 client (Debian's dhcpcd-base build, for the farm's test world)"
HOMEPAGE="https://github.com/NetworkConfiguration/dhcpcd"
SRC_URI="{src_uri}/${{P}}.tar.gz"

LICENSE="BSD-2"
SLOT="0"
KEYWORDS="amd64"
# Prebuilt binaries: nothing to compile or strip.
RESTRICT="strip"
QA_PREBUILT="*"

src_install() {{
	cp -a "${{S}}"/image/. "${{ED}}"/ || die
	keepdir /var/lib/dhcpcd
}}

pkg_preinst() {{
	# dhcpcd drops privileges to its own user (Gentoo's acct-user/dhcpcd).
	grep -q '^dhcpcd:' "${{EROOT}}"/etc/group || echo 'dhcpcd:x:997:' >> "${{EROOT}}"/etc/group
	if ! grep -q '^dhcpcd:' "${{EROOT}}"/etc/passwd; then
		echo 'dhcpcd:x:997:997:dhcpcd:/var/lib/dhcpcd:/sbin/nologin' >> "${{EROOT}}"/etc/passwd
		echo 'dhcpcd:!:19000::::::' >> "${{EROOT}}"/etc/shadow
	fi
}}
"""


SUDO_EBUILD = """\
# Copyright 2026 Gentoo Farm test world
# Distributed under the terms of the GNU General Public License v2

EAPI=8

DESCRIPTION="Run commands as another user (Debian's sudo build, for the farm's test world)"
HOMEPAGE="https://www.sudo.ws/"
SRC_URI="{src_uri}/${{P}}.tar.gz"

LICENSE="ISC"
SLOT="0"
KEYWORDS="amd64"
# Prebuilt binaries: nothing to compile or strip.
RESTRICT="strip"
QA_PREBUILT="*"

src_install() {{
	cp -a "${{S}}"/image/. "${{ED}}"/ || die
	# As Gentoo's ebuild: sudo refuses to run unless setuid root, and reads only a sudoers others
	# cannot write.
	fperms 4111 /usr/bin/sudo
	fperms 0440 /etc/sudoers
	fperms 0750 /etc/sudoers.d
}}
"""


REPACKAGED_EBUILD = """\
# Copyright 2026 Gentoo Farm test world
# Distributed under the terms of the GNU General Public License v2

EAPI=8

DESCRIPTION="{description} (Debian's build, for the farm's test world)"
HOMEPAGE="{homepage}"
SRC_URI="{src_uri}/${{P}}.tar.gz"

LICENSE="{license}"
SLOT="0"
KEYWORDS="amd64"
RDEPEND="{rdepend}"
# Prebuilt binaries: nothing to compile or strip.
RESTRICT="strip"
QA_PREBUILT="*"

src_install() {{
	cp -a "${{S}}"/image/. "${{ED}}"/ || die
}}
"""


@dataclass(frozen=True)
class DebianBuild:
    """A world package that installs Debian's build: ``debs`` unpacked whole, with the libraries they link
    that neither the stage3 nor the packages it ``depends`` on have (each library in one package only)."""

    atom: str
    # The Gentoo spelling of the upstream version of ``debs[0]``, which is ``debian_version`` (checked).
    version: str
    debian_version: str
    debs: tuple[str, ...]
    description: str
    homepage: str
    license: str
    depends: tuple[str, ...] = ()
    # Links Gentoo's package installs that Debian leaves to other packages: (path, target).
    links: tuple[tuple[str, str], ...] = ()

    def ebuild(self) -> str:
        return REPACKAGED_EBUILD.format(
            description=self.description,
            homepage=self.homepage,
            src_uri=UPSTREAM_SRC_URI,
            license=self.license,
            rdepend=" ".join(self.depends),
        )


# What a worker image adds to an image (gentoo_farm.config.WORKER_PACKAGES), from Debian's builds; a
# package comes after those it depends on. ``depends`` names, besides real dependencies, the packages
# whose images carry a library it links too (Debian's shared libraries are no packages of their own here).
WORKER_BUILDS = (
    DebianBuild(
        "dev-lang/python", "3.11.2", "3.11.2",
        ("python3.11", "python3.11-minimal", "libpython3.11-stdlib", "libpython3.11-minimal",
         "python3.11-venv", "python3-pip-whl", "python3-setuptools-whl"),
        "An interpreted, interactive, object-oriented programming language", "https://www.python.org/",
        "PSF-2", links=(("usr/bin/python3", "python3.11"),),
    ),
    DebianBuild(
        "sys-apps/kmod", "30", "30+20221128", ("kmod",),
        "Library and tools for managing Linux kernel modules", "https://git.kernel.org/pub/scm/utils/kernel/kmod/kmod.git",
        "LGPL-2",
    ),
    DebianBuild(
        "sys-fs/e2fsprogs", "1.47.0", "1.47.0", ("e2fsprogs",),
        "Standard EXT2/EXT3/EXT4 filesystem utilities", "http://e2fsprogs.sourceforge.net/", "GPL-2",
    ),
    DebianBuild(
        "app-arch/xz-utils", "5.4.1", "5.4.1", ("xz-utils",),
        "Utils for managing LZMA compressed files", "https://tukaani.org/xz/", "public-domain",
    ),
    DebianBuild(
        "app-arch/zstd", "1.5.4", "1.5.4+dfsg2", ("zstd",),
        "zstd fast compression library", "https://facebook.github.io/zstd/", "BSD",
    ),
    DebianBuild(
        "app-arch/cpio", "2.13", "2.13+dfsg", ("cpio",),
        "A file archival tool which can also read and write tar files", "https://www.gnu.org/software/cpio/",
        "GPL-3",
    ),
    DebianBuild(
        "sys-devel/bc", "1.07.1", "1.07.1", ("bc",),
        "Handy console-based calculator utility", "https://www.gnu.org/software/bc/bc.html", "GPL-2",
    ),
    DebianBuild(
        "sys-devel/m4", "1.4.19", "1.4.19", ("m4",),
        "GNU macro processor", "https://www.gnu.org/software/m4/m4.html", "GPL-3",
    ),
    DebianBuild(
        "sys-devel/flex", "2.6.4", "2.6.4", ("flex",),
        "The Fast Lexical Analyzer", "https://github.com/westes/flex", "FLEX", ("sys-devel/m4",),
    ),
    DebianBuild(
        "sys-devel/bison", "3.8.2", "3.8.2+dfsg", ("bison",),
        "A general-purpose (yacc-compatible) parser generator", "https://www.gnu.org/software/bison/",
        "GPL-3", ("sys-devel/m4",),
    ),
    DebianBuild(
        "dev-util/ccache", "4.7.5", "4.8+really4.7.5", ("ccache",),
        "Fast compiler cache", "https://ccache.dev/", "GPL-3",
    ),
    DebianBuild(
        "dev-vcs/git", "2.39.5", "2.39.5", ("git",),
        "stupid content tracker: distributed VCS designed for speed and efficiency", "https://git-scm.com/",
        "GPL-2", ("dev-lang/python",),
    ),
    DebianBuild(
        "app-crypt/gnupg", "2.2.40", "2.2.40",
        ("gnupg", "gpg", "gpg-agent", "gpgconf", "gpgsm", "dirmngr", "gnupg-utils", "pinentry-curses"),
        "The GNU Privacy Guard, a GPL OpenPGP implementation", "https://gnupg.org/", "GPL-3",
        ("dev-vcs/git",),
    ),
    DebianBuild(
        "sys-boot/syslinux", "6.04_pre20190206", "6.04~git20190206.bf6db5b4+dfsg1",
        ("syslinux", "extlinux", "syslinux-common"),
        "SYSLINUX, PXELINUX, ISOLINUX, EXTLINUX and MEMDISK bootloaders", "https://www.syslinux.org/",
        "GPL-2",
    ),
    # Debian's 7.2 carries upstream's stable releases: its programs say 7.2.22.
    DebianBuild(
        "app-emulation/qemu", "7.2.22", "7.2+dfsg",
        ("qemu-utils", "qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios", "ipxe-qemu"),
        "QEMU + Kernel-based Virtual Machine userland tools", "https://www.qemu.org", "GPL-2",
        ("app-crypt/gnupg",),
    ),
    DebianBuild(
        "sys-devel/gcc", "12.2.0", "12.2.0",
        ("gcc-12", "cpp-12", "libgcc-12-dev", "binutils", "binutils-x86-64-linux-gnu", "binutils-common",
         "libc6-dev", "libc-dev-bin", "linux-libc-dev", "libcrypt-dev", "libnsl-dev", "libtirpc-dev"),
        "The GNU Compiler Collection (with binutils and glibc's headers, as a stage3 has them)",
        "https://gcc.gnu.org/", "GPL-3+", ("app-arch/zstd", "dev-vcs/git"),
        links=(("usr/bin/gcc", "gcc-12"), ("usr/bin/cc", "gcc-12"), ("usr/bin/cpp", "cpp-12")),
    ),
    # cdrkit's genisoimage (and its mkisofs link, the name Gentoo's cdrtools installs): mkisofs's options.
    DebianBuild(
        "app-cdr/cdrtools", "1.1.11", "1.1.11", ("genisoimage",),
        "A set of tools for CD/DVD reading and recording", "https://wiki.debian.org/cdrkit", "GPL-2",
    ),
)  # fmt: skip


@dataclass
class Package:
    atom: str
    version: str
    ebuild: str
    source_files: dict[str, str] = field(default_factory=dict)
    # A distfile that is not source text: a function writing its tarball (top directory ${P}/).
    built_distfile: Callable[[str], bytes] | None = None
    # Debian's build of the package (its distfile needs the stage3: see write_distfiles).
    debian: DebianBuild | None = None

    @property
    def name(self) -> str:
        return self.atom.split("/", 1)[1]

    @property
    def distfile(self) -> str | None:
        built = self.source_files or self.built_distfile or self.debian
        return f"{self.name}-{self.version}.tar.gz" if built else None


def dhcpcd_distfile(top: str) -> bytes:
    """Debian's dhcpcd-base laid out as Gentoo installs dhcpcd (/sbin/dhcpcd), with libudev it links."""
    deb = debian.download("dhcpcd-base")
    version = _deb_version(deb)
    if not version.startswith(f"{DHCPCD_VERSION}-"):
        raise RuntimeError(f"dhcpcd-base is {version}; the world's {DHCP_PACKAGE} ebuild is {DHCPCD_VERSION}")
    with tempfile.TemporaryDirectory() as scratch:
        unpacked = Path(scratch) / "unpacked"
        debian.extract(deb, unpacked)
        debian.extract(debian.download("libudev1"), unpacked)
        image = Path(scratch) / top / "image"
        (image / "sbin").mkdir(parents=True)
        shutil.copy2(unpacked / "usr/sbin/dhcpcd", image / "sbin/dhcpcd")
        shutil.copytree(unpacked / "etc", image / "etc", symlinks=True)
        shutil.copytree(unpacked / "usr/lib", image / "usr/lib", symlinks=True)
        return _image_tarball(Path(scratch) / top, top)


def _image_tarball(directory: Path, top: str) -> bytes:
    """``directory`` (a package's ``image/`` and nothing else) as a gzipped tarball under ``top``/: the same
    bytes for the same files (gzip without a timestamp, members in name order, one mtime: the directories
    made here would carry the time of the build)."""

    def fixed_time(member: tarfile.TarInfo) -> tarfile.TarInfo:
        member.mtime = 1_700_000_000
        return member

    buffer = io.BytesIO()
    with (
        # gzip -6: as small as -9 for these binaries and a quarter of the time (qemu's: 3.5 s, not 12.5 s).
        gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.GNU_FORMAT) as archive,
    ):
        archive.add(directory, arcname=top, filter=fixed_time)
    return buffer.getvalue()


def _deb_version(deb: Path) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Version"], check=True, capture_output=True, text=True
    ).stdout.strip()


def lay_out_sudo(image: Path) -> None:
    """Debian's sudo as Gentoo installs it, into ``image`` (a package image, or a root: the tests' stand-in
    for having emerged it): the program setuid root, its plugins, sudoers and Gentoo's PAM service."""
    deb = debian.download("sudo")
    version = _deb_version(deb)
    if not version.startswith(f"{SUDO_VERSION.replace('_', '')}-"):
        raise RuntimeError(f"sudo is {version}; the world's {SUDO_PACKAGE} ebuild is {SUDO_VERSION}")
    with tempfile.TemporaryDirectory() as scratch:
        unpacked = Path(scratch)
        debian.extract(deb, unpacked)
        for directory in ("usr/bin", "usr/sbin", "usr/libexec/sudo", "etc/sudoers.d", "etc/pam.d"):
            (image / directory).mkdir(parents=True, exist_ok=True)
        for program in ("usr/bin/sudo", "usr/sbin/visudo", "etc/sudoers", "etc/sudo.conf"):
            shutil.copy2(unpacked / program, image / program)
        shutil.copytree(
            unpacked / "usr/libexec/sudo", image / "usr/libexec/sudo", symlinks=True, dirs_exist_ok=True
        )
    (image / "usr/bin/sudo").chmod(0o4111)
    (image / "etc/sudoers").chmod(0o440)
    (image / "etc/sudoers.d").chmod(0o750)
    (image / "etc/pam.d/sudo").write_text(SUDO_PAM_SERVICE)


def sudo_distfile(top: str) -> bytes:
    """The ebuild's distfile: :func:`lay_out_sudo`'s files under ``top``/image."""
    with tempfile.TemporaryDirectory() as scratch:
        lay_out_sudo(Path(scratch) / top / "image")
        return _image_tarball(Path(scratch) / top, top)


def lay_out_debian_build(build: DebianBuild, image: Path, present: Sequence[Path]) -> None:
    """``build``'s files in ``image``: its packages and the libraries they link that the ``present`` roots
    (the stage3, the images of what it depends on) lack, without what a Gentoo system does without."""
    deb = debian.download(build.debs[0])
    version = _deb_version(deb).split(":", 1)[-1]
    if not version.startswith(f"{build.debian_version}-"):
        raise RuntimeError(
            f"{build.debs[0]} is {version}; the world's {build.atom} is {build.debian_version}"
        )
    image.mkdir(parents=True)
    install_debian_packages(image, build.debs, present)
    remove_debian_only(image)
    for path, target in build.links:
        (image / path).symlink_to(target)


def _files(image: Path) -> set[Path]:
    return {path.relative_to(image) for path in image.rglob("*") if path.is_symlink() or not path.is_dir()}


def _write_debian_builds(distdir: Path, stage3_root: Path, builds: Sequence[DebianBuild]) -> list[str]:
    """Write each build's distfile (its image under ``${P}/image``); refuse two builds owning one file."""
    names = []
    with tempfile.TemporaryDirectory() as scratch:
        images: dict[str, Path] = {}
        owned: dict[str, set[Path]] = {}
        for build in builds:
            top = f"{build.atom.split('/', 1)[1]}-{build.version}"
            images[build.atom] = Path(scratch) / build.atom / top / "image"
            closure, todo = set(), list(build.depends)
            while todo:
                atom = todo.pop()
                if atom not in closure:
                    closure.add(atom)
                    todo.extend(next(other for other in builds if other.atom == atom).depends)
            present = [stage3_root, *(images[atom] for atom in sorted(closure))]
            lay_out_debian_build(build, images[build.atom], present)
            files = _files(images[build.atom])
            for other, other_files in owned.items():
                if shared := files & other_files:
                    listed = ", ".join(map(str, sorted(shared)[:5]))
                    raise RuntimeError(f"{build.atom} and {other} would both install {listed}")
            owned[build.atom] = files
            (distdir / f"{top}.tar.gz").write_bytes(_image_tarball(images[build.atom].parent, top))
            names.append(f"{top}.tar.gz")
    return names


def _library_makefile(library: str, units: list[str], header: str) -> str:
    objects = " ".join(unit.replace(".c", ".o") for unit in units)
    return (
        f"OBJS = {objects}\n\n"
        f"lib{library}.a: $(OBJS)\n\t$(AR) rcs $@ $(OBJS)\n\n"
        f"%.o: %.c\n\t$(CC) $(CFLAGS) -c -o $@ $<\n\n"
        f"install: lib{library}.a\n"
        f"\tinstall -D -m 644 lib{library}.a $(DESTDIR)/usr/lib64/lib{library}.a\n"
        f"\tinstall -D -m 644 {header} $(DESTDIR)/usr/include/{header}\n"
    )


def _synthetic_unit(library_index: int, unit_index: int) -> str:
    """Generate C that keeps gcc -O2 busy: many small state machines it tries hard to optimise."""
    seed = library_index * 1000 + unit_index * 100
    functions = ['#include "farmcore.h"']
    for number in range(FUNCTIONS_PER_UNIT):
        salt = seed + number
        functions.append(
            textwrap.dedent(
                f"""\
                uint64_t synth_{library_index}_{unit_index}_{number}(uint64_t x) {{
                    uint64_t acc = {salt}u;
                    for (int round = 0; round < 16; round++) {{
                        switch ((x + round) % 7) {{
                        case 0: acc = acc * 6364136223846793005u + x; break;
                        case 1: acc ^= (acc >> 13) | (x << {salt % 31 + 1}); break;
                        case 2: acc += (acc << 7) - x * {salt + 3}u; break;
                        case 3: acc = (acc * {salt * 2 + 1}u) ^ (acc >> 29); break;
                        case 4: acc -= x ^ (acc << {salt % 17 + 1}); break;
                        case 5: acc = acc * acc + {salt}u; break;
                        default: acc ^= farmcore_mix(x); break;
                        }}
                        x = (x >> 1) ^ acc;
                    }}
                    return acc;
                }}
                """
            )
        )
    return "\n".join(functions)


def _library_ebuild(description: str, dependencies: str = "", extra_install: str = "") -> str:
    return LIBRARY_EBUILD.format(
        description=description,
        src_uri=UPSTREAM_SRC_URI,
        dependencies=f'\nDEPEND="{dependencies}"\nRDEPEND="${{DEPEND}}"\n' if dependencies else "",
        extra_install=extra_install,
    )


def packages(compile_scale: int = 1) -> list[Package]:
    """Every package of the repository, dependencies before dependants."""
    core = Package(
        "dev-libs/farm-core",
        "1.0",
        _library_ebuild("Core helpers every farm test package links against"),
        {
            "farmcore.h": FARM_CORE_HEADER,
            "farmcore.c": FARM_CORE_SOURCE,
            "Makefile": _library_makefile("farmcore", ["farmcore.c"], "farmcore.h"),
        },
    )
    result = [core]
    synthetic_atoms = []
    for index in range(1, SYNTHETIC_LIBRARIES + 1):
        units = {
            f"unit{unit}.c": _synthetic_unit(index, unit) for unit in range(UNITS_PER_LIBRARY * compile_scale)
        }
        header = f"farmsynth{index}.h"
        previous = f" dev-libs/farm-synth{index - 1}" if index > 1 else ""
        atom = f"dev-libs/farm-synth{index}"
        synthetic_atoms.append(atom)
        result.append(
            Package(
                atom,
                "1.0",
                _library_ebuild(
                    f"Synthetic compile-heavy library number {index}", f"dev-libs/farm-core{previous}"
                ),
                {
                    **units,
                    header: f"/* farm-synth{index} */\n",
                    "Makefile": _library_makefile(f"farmsynth{index}", list(units), header),
                },
            )
        )
    result.append(
        Package(
            STATIC_PACKAGE,
            "1.0",
            _library_ebuild("A static binary the image runs at boot", "dev-libs/farm-core"),
            {"hello.c": HELLO_SOURCE, "Makefile": HELLO_MAKEFILE, "50-farm-hello.start": HELLO_LOCAL_D},
        )
    )
    result.append(
        Package(
            SERVICE_PACKAGE,
            "1.0",
            _library_ebuild("An OpenRC service writing the message of the day", "dev-libs/farm-core"),
            {
                "motd.c": MOTD_SOURCE,
                "Makefile": MOTD_MAKEFILE,
                "farm-motd.initd": MOTD_INIT_SCRIPT,
                "farm-motd.confd": "# Settings for the farm-motd service (none yet).\n",
            },
        )
    )
    result.append(
        Package(
            DHCP_PACKAGE,
            DHCPCD_VERSION,
            DHCPCD_EBUILD.format(src_uri=UPSTREAM_SRC_URI),
            built_distfile=dhcpcd_distfile,
        )
    )
    result.append(
        Package(
            SUDO_PACKAGE,
            SUDO_VERSION,
            SUDO_EBUILD.format(src_uri=UPSTREAM_SRC_URI),
            built_distfile=sudo_distfile,
        )
    )
    result.extend(Package(build.atom, build.version, build.ebuild(), debian=build) for build in WORKER_BUILDS)
    result.append(
        Package(
            "app-misc/farm-tools",
            "1.0",
            METAPACKAGE_EBUILD.format(
                description="All synthetic farm libraries", rdepend=" ".join(synthetic_atoms)
            ),
        )
    )
    return result


def _deterministic_tarball(top: str, files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.GNU_FORMAT) as archive,
    ):
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            info.mode = 0o755 if name.endswith((".start", ".initd")) else 0o644
            info.mtime = 1_700_000_000
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def manifest_line(path: Path) -> str:
    data = path.read_bytes()
    blake2b = hashlib.blake2b(data).hexdigest()
    sha512 = hashlib.sha512(data).hexdigest()
    return f"DIST {path.name} {len(data)} BLAKE2B {blake2b} SHA512 {sha512}\n"


def write_distfiles(distdir: Path, stage3_root: Path, compile_scale: int = 1) -> list[str]:
    """Write every package's source tarball and a flat ``layout.conf``; return the file names.

    ``stage3_root`` is the stage3's root: Debian's builds carry the libraries they link that it lacks.
    """
    distdir.mkdir(parents=True, exist_ok=True)
    (distdir / "layout.conf").write_text("[structure]\n0=flat\n")
    all_packages = packages(compile_scale)
    names = _write_debian_builds(
        distdir, stage3_root, [package.debian for package in all_packages if package.debian is not None]
    )
    for package in all_packages:
        if package.distfile is None or package.debian is not None:
            continue
        top = f"{package.name}-{package.version}"
        if package.built_distfile is not None:
            (distdir / package.distfile).write_bytes(package.built_distfile(top))
        else:
            (distdir / package.distfile).write_bytes(_deterministic_tarball(top, package.source_files))
        names.append(package.distfile)
    return names


def write_repository(repo: Path, distdir: Path, timestamp: str, compile_scale: int = 1) -> None:
    """Write the ebuild repository; Manifests hash the distfiles already written to ``distdir``."""
    profiles = repo / "profiles"
    profile = profiles / PROFILE
    profile.mkdir(parents=True)
    all_packages = packages(compile_scale)
    categories = sorted({package.atom.split("/")[0] for package in all_packages})
    (profiles / "repo_name").write_text(f"{REPO_NAME}\n")
    (profiles / "categories").write_text("".join(f"{category}\n" for category in categories))
    (profiles / "arch.list").write_text("amd64\n")
    (profiles / "eapi").write_text("8\n")
    (profiles / "profiles.desc").write_text(f"amd64\t{PROFILE}\tstable\n")
    # Portage accepts @FREE licenses by default; the group must name every license used here.
    # Portage's default ACCEPT_LICENSE refers to @EULA as well.
    (profiles / "license_groups").write_text(
        "FREE-SOFTWARE GPL-2 BSD-2\nFREE @FREE-SOFTWARE metapackage\nEULA Farm-EULA\n"
    )
    licenses = repo / "licenses"
    licenses.mkdir()
    (licenses / "GPL-2").write_text(
        "GNU GENERAL PUBLIC LICENSE, Version 2 (placeholder text for the test world)\n"
    )
    (licenses / "BSD-2").write_text("BSD 2-Clause License (placeholder text for the test world)\n")
    (licenses / "metapackage").write_text(
        "Metapackages install no files and carry no license of their own.\n"
    )
    (profile / "eapi").write_text("8\n")
    (profile / "make.defaults").write_text(PROFILE_MAKE_DEFAULTS)
    metadata = repo / "metadata"
    metadata.mkdir()
    (metadata / "layout.conf").write_text(
        "masters =\nthin-manifests = true\nsign-manifests = false\n"
        "manifest-hashes = BLAKE2B SHA512\nmanifest-required-hashes = BLAKE2B\n"
        "profile-formats = portage-2\ncache-formats = md5-dict\n"
    )
    (metadata / "timestamp.chk").write_text(f"{timestamp}\n")
    for package in all_packages:
        package_dir = repo / package.atom
        package_dir.mkdir(parents=True)
        (package_dir / f"{package.name}-{package.version}.ebuild").write_text(package.ebuild)
        if package.distfile is not None:
            (package_dir / "Manifest").write_text(manifest_line(distdir / package.distfile))
        (package_dir / "metadata.xml").write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!DOCTYPE pkgmetadata SYSTEM "https://www.gentoo.org/dtd/metadata.dtd">\n'
            '<pkgmetadata>\n\t<maintainer type="person">\n'
            "\t\t<email>releng@farm.invalid</email>\n\t</maintainer>\n</pkgmetadata>\n"
        )


# The kernel source: an ebuild in the snapshot whose Manifest vouches for the Linux source tarball the
# kernel tests build (Debian's linux-source-6.1.tar.xz), as sys-kernel/vanilla-sources does upstream.
KERNEL_SOURCES_PACKAGE = "sys-kernel/vanilla-sources"
KERNEL_SOURCES_EBUILD = """\
# Copyright 2026 Gentoo Farm test world
# Distributed under the terms of the GNU General Public License v2

EAPI=8

DESCRIPTION="Full sources for the Linux kernel (the test world's stand-in for vanilla-sources)"
HOMEPAGE="https://www.kernel.org"
SRC_URI="{src_uri}/{distfile}"
S="${{WORKDIR}}"

LICENSE="GPL-2"
SLOT="${{PV}}"
KEYWORDS="amd64"
RESTRICT="binchecks strip"

src_install() {{
	dodir /usr/src
	mv linux-* "${{ED}}/usr/src/" || die
}}
"""


def write_kernel_sources(repo: Path, tarball: Path, version: str = "6.1") -> None:
    """Add the kernel sources package whose Manifest has ``tarball``'s DIST line to the repository."""
    package_dir = repo / KERNEL_SOURCES_PACKAGE
    package_dir.mkdir(parents=True)
    name = KERNEL_SOURCES_PACKAGE.split("/")[1]
    (package_dir / f"{name}-{version}.ebuild").write_text(
        KERNEL_SOURCES_EBUILD.format(src_uri=UPSTREAM_SRC_URI, distfile=tarball.name)
    )
    (package_dir / "Manifest").write_text(manifest_line(tarball))
    categories = repo / "profiles" / "categories"
    listed = set(categories.read_text().split())
    categories.write_text("".join(f"{category}\n" for category in sorted({*listed, "sys-kernel"})))
