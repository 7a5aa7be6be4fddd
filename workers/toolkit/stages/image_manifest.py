"""Write what an assembled image holds: every installed package, where it came from, its kernel, inputs.

Read from the root's own package database (``/var/db/pkg``, what Portage recorded when it merged each
package), so it lists the stage3's packages as well as the emerged ones. Where a package came from is
what this build's emerge reported: ``compiled`` here, ``upstream-binhost`` (a binary package from the
stage3's own binhost, Gentoo's, with ``[packages] upstream_binhost``), ``farm-binhost`` (any other binary
package: from the farm's binhost), else ``stage3`` (it came with the stage3 and was not merged again).
Two files:

- ``--json``: for tools, ``{"packages": [{"cpv", "slot", "use", "repository", "origin"}...],
  "kernel": {"release", "config_sha256"}, "sources": {...}, "input_keys": {...}}``;
- ``--text``: for people and ``diff``, one ``category/package-version`` per line, sorted.
"""

import argparse
import hashlib
import json
from pathlib import Path

from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.build_root import kernel_release

VDB = Path("var/db/pkg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="the assembled build root")
    parser.add_argument("--json", required=True, type=Path, dest="json_output", help="the JSON manifest")
    parser.add_argument("--text", required=True, type=Path, help="the plain-text package list")
    parser.add_argument(
        "--compiled", nargs="*", default=[], metavar="CPV", help="packages this build compiled"
    )
    parser.add_argument(
        "--binary", nargs="*", default=[], metavar="CPV", help="packages this build installed from a binhost"
    )
    parser.add_argument(
        "--upstream-binary",
        nargs="*",
        default=[],
        metavar="CPV",
        help="those of --binary that came from the upstream binhost (the stage3's own)",
    )
    parser.add_argument(
        "--inputs", default="{}", help='JSON {"sources": {kind: set id}, "input_keys": {kind: key}}'
    )


def _field(entry: Path, name: str) -> str:
    path = entry / name
    return path.read_text(errors="replace").strip() if path.is_file() else ""


def installed_packages(root: Path) -> list[dict[str, str]]:
    vdb = root / VDB
    if not vdb.is_dir():
        raise StageError(f"{root}: no /{VDB}; not a Gentoo root")
    packages = []
    for category in sorted(path for path in vdb.iterdir() if path.is_dir() and not path.is_symlink()):
        for entry in sorted(path for path in category.iterdir() if path.is_dir() and not path.is_symlink()):
            packages.append(
                {
                    "cpv": f"{category.name}/{entry.name}",
                    "slot": _field(entry, "SLOT"),
                    "use": _field(entry, "USE"),
                    "repository": _field(entry, "repository"),
                }
            )
    return packages


ORIGINS = ("compiled", "farm-binhost", "upstream-binhost", "stage3")


def origin(cpv: str, compiled: set[str], binary: set[str], upstream_binary: set[str]) -> str:
    if cpv in compiled:
        return "compiled"
    if cpv in upstream_binary:
        return "upstream-binhost"
    if cpv in binary:
        return "farm-binhost"
    return "stage3"


def run(args: argparse.Namespace) -> None:
    root = args.root.resolve()
    try:
        inputs = json.loads(args.inputs)
    except json.JSONDecodeError as error:
        raise StageError(f"--inputs is not JSON: {error}") from error
    release = kernel_release(root)
    config = root / "boot" / f"config-{release}"
    if not config.is_file() or config.is_symlink():
        raise StageError(f"{config}: missing; the kernel's config belongs in the image (run assemble first)")
    compiled, binary, upstream_binary = set(args.compiled), set(args.binary), set(args.upstream_binary)
    packages = [
        {**package, "origin": origin(package["cpv"], compiled, binary, upstream_binary)}
        for package in installed_packages(root)
    ]
    manifest = {
        "packages": packages,
        "kernel": {"release": release, "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest()},
        "sources": inputs.get("sources", {}),
        "input_keys": inputs.get("input_keys", {}),
    }
    for output in (args.json_output, args.text):
        output.parent.mkdir(parents=True, exist_ok=True)
    args.json_output.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    args.text.write_text("".join(f"{package['cpv']}\n" for package in packages))
    counts = {kind: sum(1 for package in packages if package["origin"] == kind) for kind in ORIGINS}
    progress(
        f"{len(packages)} package(s) in the image: "
        + ", ".join(f"{count} {kind}" for kind, count in counts.items())
        + f"; kernel {release}"
    )
    report(image_package_count=len(packages))
