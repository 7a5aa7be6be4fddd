"""qcow2 conversion, the disk stage's last step: zlib vs zstd compression, in order vs out-of-order writes.

The disk stage writes a compressed qcow2 with ``qemu-img convert -c``. This times, on one image and in one
run, what the choices cost: zlib (readable by every QEMU) and zstd (QEMU >= 5.1), each with writes in
order and with ``-W`` (out-of-order writes, the same format), and prints seconds, bytes and the ratios to
the in-order zlib conversion the stage used before.

Run from the repository root: ``.venv/bin/python bench/bench_qcow2.py IMAGE.qcow2 [--rounds 3]`` (any
image the farm published; it is expanded to raw first, outside the timings).
"""

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "zlib, in order": ["-o", "compression_type=zlib"],
    "zlib, -W": ["-W", "-o", "compression_type=zlib"],
    "zstd, in order": ["-o", "compression_type=zstd"],
    "zstd, -W": ["-W", "-o", "compression_type=zstd"],
}


def convert(raw: Path, output: Path, options: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", *options, str(raw), str(output)], check=True
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("image", type=Path, help="a qcow2 (or raw) disk image")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-qcow2-", dir="/var/tmp") as scratch_name:
        scratch = Path(scratch_name)
        raw = scratch / "disk.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(args.image), str(raw)], check=True)
        seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
        sizes: dict[str, int] = {}
        for _ in range(args.rounds):
            for name, options in VARIANTS.items():
                output = scratch / "out.qcow2"
                seconds[name].append(convert(raw, output, options))
                sizes[name] = output.stat().st_size
                output.unlink()
    base_seconds = statistics.median(seconds["zlib, in order"])
    base_bytes = sizes["zlib, in order"]
    print(f"{args.image.name}: {args.rounds} rounds, median seconds")
    for name in VARIANTS:
        median = statistics.median(seconds[name])
        print(
            f"  {name:<15} {median:6.2f} s  {sizes[name] / 2**20:7.1f} MiB  "
            f"time ratio {median / base_seconds:.2f}  size ratio {sizes[name] / base_bytes:.3f}"
        )


if __name__ == "__main__":
    main()
