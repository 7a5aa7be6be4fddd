"""Image assembly (unpack -> qcow2) through the toolkit vs the same tool calls run bare, side by side.

The farm's way is ``farm-worker assemble`` then ``farm-worker disk``. The floor is the sequence of
tool calls those stages cannot do without — tar (kernel, overlay), sfdisk, losetup, mkfs.ext4, mount,
cp, extlinux, mbr.bin, qemu-img convert, sha512sum — timed alone, on an identical fresh root, in the
same run. The ratio is the toolkit's overhead (goal: <= 1.10): it includes checking every tarball
member before unpacking and adding the cloud user, which assemble does itself rather than running the
image's useradd (workers/toolkit/accounts.py), so the bare side has no tool call for it.

The bare side converts as the disk stage does (``-W``, zstd). Before converting, each bare round also
times the qcow2 conversions the stage could use on that same raw disk, outside both sides' totals: zlib
(readable by every QEMU) and zstd (QEMU >= 5.1), each in order, with ``-W`` (out-of-order writes: several
clusters compressed at once) and with ``-W -m 16`` (twice the default 8 coroutines), and prints seconds,
bytes and the ratios to the in-order zlib conversion (the stage's until issue 13).

Run as root, from the repository root: ``.venv/bin/python bench/bench_image.py [--rounds 3]``. Needs
the Debian kernel package (fetched with apt-get download into the test cache on first use).
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_qcow2 import convert
from tests import debian
from tests.imagetest import make_root

FARM_WORKER = str(Path(sys.executable).parent / "farm-worker")
OVERLAY = Path(__file__).resolve().parent.parent / "gentoo_farm" / "defaults" / "overlay"
MBR = "/usr/lib/syslinux/mbr/mbr.bin"


def run(*command: object, **kwargs: object) -> None:
    subprocess.run([str(part) for part in command], check=True, stdout=subprocess.DEVNULL, **kwargs)


TOOL_SECONDS: dict[str, float] = {}

# qemu-img convert options after -c, by name; the first is the ratios' base.
CONVERSIONS = {
    "zlib, in order": ["-o", "compression_type=zlib"],
    "zlib, -W": ["-W", "-o", "compression_type=zlib"],
    "zlib, -W -m 16": ["-W", "-m", "16", "-o", "compression_type=zlib"],
    "zstd, in order": ["-o", "compression_type=zstd"],
    "zstd, -W (stage)": ["-W", "-o", "compression_type=zstd"],
    "zstd, -W -m 16": ["-W", "-m", "16", "-o", "compression_type=zstd"],
}
CONVERSION_SECONDS: dict[str, list[float]] = {name: [] for name in CONVERSIONS}
CONVERSION_BYTES: dict[str, int] = {}


def compare_conversions(raw: Path, scratch: Path) -> None:
    for name, options in CONVERSIONS.items():
        output = scratch / "conversion.qcow2"
        CONVERSION_SECONDS[name].append(convert(raw, output, options))
        CONVERSION_BYTES[name] = output.stat().st_size
        output.unlink()


def timed(command: list[object], **kwargs: object) -> float:
    started = time.perf_counter()
    run(*command, **kwargs)
    elapsed = time.perf_counter() - started
    name = str(command[0]) if command[0] != "tar" else f"tar {Path(str(command[-1])).name}"
    TOOL_SECONDS[name] = TOOL_SECONDS.get(name, 0.0) + elapsed
    return elapsed


def toolkit_round(root: Path, kernel: Path, overlay: Path, image: Path, size: str) -> float:
    started = time.perf_counter()
    run(FARM_WORKER, "assemble", root, "--vmlinuz", kernel, "--overlay", overlay)
    run(FARM_WORKER, "disk", root, "--output", image, "--size", size, "--compress")
    return time.perf_counter() - started


def bare_round(root: Path, kernel: Path, overlay: Path, image: Path, size: str, scratch: Path) -> float:
    """The same work as shell commands, summing only the tools' own run times."""
    total = 0.0
    unpack = ["--numeric-owner", "--preserve-permissions", "--no-overwrite-dir"]
    total += timed(["tar", "-C", root, *unpack, "-xf", kernel])
    total += timed(["tar", "-C", root, *unpack, "-xf", overlay])
    raw = scratch / "bare.raw"
    total += timed(["truncate", "-s", size, raw])
    total += timed(["sfdisk", "--quiet", raw], input=b"label: dos\nstart=2048, type=83, bootable\n")
    partition = raw.stat().st_size - 1048576
    started = time.perf_counter()
    device = subprocess.run(
        ["losetup", "--show", "-f", "-o", "1048576", "--sizelimit", str(partition), str(raw)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    total += time.perf_counter() - started
    mountpoint = scratch / "mnt"
    mountpoint.mkdir()
    try:
        total += timed(["mkfs.ext4", "-q", "-F", "-L", "root", device])
        total += timed(["mount", "-t", "ext4", device, mountpoint])
        total += timed(["cp", "-a", f"{root}/.", f"{mountpoint}/"])
        total += timed(["extlinux", "--install", mountpoint / "boot"])
        total += timed(["umount", mountpoint])
    finally:
        total += timed(["losetup", "-d", device])
    total += timed(
        ["dd", f"if={MBR}", f"of={raw}", "bs=440", "count=1", "conv=notrunc"], stderr=subprocess.DEVNULL
    )
    compare_conversions(raw, scratch)
    total += timed(
        [
            "qemu-img",
            "convert",
            "-W",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-c",
            "-o",
            "compression_type=zstd",
            raw,
            image,
        ]
    )
    total += timed(["sha512sum", image])
    raw.unlink()
    return total


def fresh_root(parent: Path) -> Path:
    # The tests' image root: the stand-in stage3 with what the farm emerges into it (sudo for the
    # default [image] admin, which assemble requires), copied from the test cache.
    return make_root(parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="1G", help="disk size for both (fixed, so both do the same work)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-image-", dir="/var/tmp") as scratch_name:
        scratch = Path(scratch_name)
        kernel = scratch / "vmlinuz.tar.zst"
        run(FARM_WORKER, "kernel-package", debian.download(debian.kernel_image_package()), "--output", kernel)
        overlay = scratch / "vmoverride.tar.gz"
        run(FARM_WORKER, "overlay", OVERLAY, "--output", overlay)

        toolkit_times, bare_times = [], []
        for number in range(1, args.rounds + 1):
            # Alternate who goes first, so page-cache warmth and background load favour neither.
            order = ("toolkit", "bare") if number % 2 else ("bare", "toolkit")
            for kind in order:
                work = scratch / f"{kind}-{number}"
                work.mkdir()
                root = fresh_root(work)
                image = work / "image.qcow2"
                if kind == "toolkit":
                    toolkit_times.append(toolkit_round(root, kernel, overlay, image, args.size))
                else:
                    bare_times.append(bare_round(root, kernel, overlay, image, args.size, work))
                shutil.rmtree(work)
            print(
                f"round {number}: toolkit {toolkit_times[-1]:.2f} s, bare tools {bare_times[-1]:.2f} s, "
                f"ratio {toolkit_times[-1] / bare_times[-1]:.3f}",
                flush=True,
            )
    # Each round pairs the two runs under the same machine load; the median pair is the headline.
    ratios = sorted(toolkit / bare for toolkit, bare in zip(toolkit_times, bare_times, strict=True))
    print(f"image assembly (unpack -> qcow2), {args.rounds} rounds:")
    print(f"  toolkit (assemble + disk):   median {statistics.median(toolkit_times):.2f} s")
    print(f"  irreducible tool calls only: median {statistics.median(bare_times):.2f} s")
    print(f"  overhead ratio: median {statistics.median(ratios):.3f}, worst {ratios[-1]:.3f} (goal <= 1.10)")
    print(
        "  bare tool time by tool (all rounds): "
        + ", ".join(
            f"{name} {seconds:.1f} s"
            for name, seconds in sorted(TOOL_SECONDS.items(), key=lambda item: -item[1])
        )
    )

    base_seconds = statistics.median(CONVERSION_SECONDS["zlib, in order"])
    base_bytes = CONVERSION_BYTES["zlib, in order"]
    print(f"  qcow2 conversions of the bare side's {args.size} raw disk (median of {args.rounds}):")
    for name, seconds in CONVERSION_SECONDS.items():
        median = statistics.median(seconds)
        print(
            f"    {name:<17} {median:6.2f} s  {CONVERSION_BYTES[name] / 2**20:7.1f} MiB  "
            f"time ratio {median / base_seconds:.2f}  size ratio {CONVERSION_BYTES[name] / base_bytes:.3f}"
        )


if __name__ == "__main__":
    main()
