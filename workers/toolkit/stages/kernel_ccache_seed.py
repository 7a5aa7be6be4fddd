"""Fill an empty ccache directory from the kernel ccache the farm keeps (``[kernel] shared_ccache``).

The map, written by the master, is ``{"url": ..., "sha256": ..., "size": ...}`` for the tarball the
store's pointer names, or ``{}`` while no kernel build has shared one. A worker that kept its own ccache
(a local worker after its first build) downloads nothing. The tarball comes from an earlier build's
worker, so it is checked against its sha256 and unpacked only inside the ccache directory, without a
``ccache.conf`` (ccache settings can run commands); a missing,
truncated or corrupt one is skipped with a warning: ccache changes how fast the kernel compiles, not
what it compiles to, so the build goes on cold.
"""

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from gentoo_farm.checksums import feed
from gentoo_farm.store import without_signature
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.confined import unpack_tarball
from gentoo_farm.workers.toolkit.downloads import download

DOWNLOAD_TIMEOUT = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--map", required=True, type=Path, help='JSON file {"url": ..., "sha256": ..., "size": ...} or {}'
    )
    parser.add_argument("--ccache-dir", required=True, type=Path, help="the kernel build's ccache directory")


def _seed(url: str, sha256: str, size: int, ccache_dir: Path) -> None:
    """Download, check and unpack the tarball into the empty ``ccache_dir``; StageError says why not."""
    with tempfile.TemporaryDirectory(prefix="ccache-seed-", dir=ccache_dir.parent) as scratch_name:
        scratch = Path(scratch_name)
        tarball = scratch / "kernel-ccache.tar.zst"
        try:
            download(url, tarball, timeout=DOWNLOAD_TIMEOUT)
        except StageError as error:
            raise StageError(str(error).replace(url, without_signature(url))) from None
        digest = hashlib.sha256()
        with tarball.open("rb") as handle:
            feed(handle, digest)
        actual_size = tarball.stat().st_size
        if actual_size != size or digest.hexdigest() != sha256:
            raise StageError(
                f"{without_signature(url)}: {actual_size} bytes with sha256 {digest.hexdigest()[:16]}..., "
                f"not the {size} bytes with sha256 {sha256[:16]}... the pointer names"
            )
        unpacked = scratch / "ccache"
        unpacked.mkdir()
        unpack_tarball(tarball, unpacked, what="shared kernel ccache")
        # ccache reads its settings from the cache directory, and one of them runs a command before
        # every compile: the cache of another worker brings cached results, never settings.
        (unpacked / "ccache.conf").unlink(missing_ok=True)
        # Moved in whole, so a tarball that fails halfway leaves the ccache directory empty.
        ccache_dir.rmdir()
        unpacked.rename(ccache_dir)


def run(args: argparse.Namespace) -> None:
    ccache_dir: Path = args.ccache_dir
    try:
        offer = json.loads(args.map.read_text())
    except (OSError, ValueError) as error:
        raise StageError(f"cannot read the ccache map {args.map}: {error}") from None
    ccache_dir.mkdir(parents=True, exist_ok=True)
    if any(ccache_dir.iterdir()):
        progress(f"{ccache_dir}: this worker kept its own ccache; the shared one is not needed")
        report(kernel_ccache_seeded=False)
        return
    if not offer:
        progress("no kernel build has shared its ccache yet: the kernel compiles cold")
        report(kernel_ccache_seeded=False)
        return
    try:
        _seed(str(offer["url"]), str(offer["sha256"]), int(offer["size"]), ccache_dir)
    except (StageError, KeyError, ValueError) as error:
        shutil.rmtree(ccache_dir, ignore_errors=True)
        ccache_dir.mkdir(parents=True, exist_ok=True)
        progress(f"warning: shared kernel ccache not used, the kernel compiles cold: {error}")
        report(kernel_ccache_seeded=False)
        return
    progress(f"{ccache_dir}: unpacked the shared kernel ccache ({int(offer['size'])} bytes)")
    report(kernel_ccache_seeded=True)
