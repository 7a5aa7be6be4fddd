"""The stage4: an emerged root packed by ``pack-root`` and unpacked by ``unpack-root --stage4`` as it was."""

import hashlib
import json
import os
import subprocess
from pathlib import Path

from tests.imagetest import FARM_WORKER, farm_worker, results
from tests.world.server import WorldServer


def emerged_root(root: Path) -> Path:
    (root / "var/db/pkg/app-misc/hello-1.0").mkdir(parents=True)
    (root / "var/db/pkg/app-misc/hello-1.0/SLOT").write_text("0\n")
    (root / "usr/bin").mkdir(parents=True)
    ping = root / "usr/bin/ping"
    ping.write_bytes(b"\x7fELF")
    ping.chmod(0o755)
    subprocess.run(["setcap", "cap_net_raw+ep", str(ping)], check=True)
    (root / "home/larry").mkdir(parents=True)
    os.chown(root / "home/larry", 1000, 1000)
    (root / "home/larry").chmod(0o700)
    (root / "usr/bin/sh").symlink_to("bash")
    return root


def test_a_packed_root_unpacks_with_owners_modes_capabilities_and_links(tmp_path: Path) -> None:
    root = emerged_root(tmp_path / "root")
    stage4 = tmp_path / "inputs" / "stage4.tar.zst"

    packed = farm_worker("pack-root", "--root", root, "--output", stage4)
    assert packed.returncode == 0, packed.stderr
    assert results(packed)["stage4_bytes"] == stage4.stat().st_size
    unpacked = farm_worker("unpack-root", "--stage4", stage4, "--root", tmp_path / "again")
    assert unpacked.returncode == 0, unpacked.stderr

    again = tmp_path / "again"
    assert (again / "var/db/pkg/app-misc/hello-1.0/SLOT").read_text() == "0\n"
    home = (again / "home/larry").stat()
    assert (home.st_uid, home.st_gid, home.st_mode & 0o7777) == (1000, 1000, 0o700)
    capabilities = subprocess.run(
        ["getcap", str(again / "usr/bin/ping")], capture_output=True, text=True, check=True
    ).stdout
    assert "cap_net_raw=ep" in capabilities
    assert os.readlink(again / "usr/bin/sh") == "bash"
    assert not list(stage4.parent.glob("*.partial*"))


def test_what_is_not_an_emerged_root_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "bare").mkdir()
    refused = farm_worker("pack-root", "--root", tmp_path / "bare", "--output", tmp_path / "s.tar.zst")
    assert refused.returncode == 1
    assert f"{tmp_path / 'bare'}: not an emerged build root (no var/db/pkg)" in refused.stderr

    subprocess.run(["tar", "-C", tmp_path / "bare", "-acf", tmp_path / "plain.tar.zst", "."], check=True)
    refused = farm_worker("unpack-root", "--stage4", tmp_path / "plain.tar.zst", "--root", tmp_path / "r")
    assert refused.returncode == 1
    assert "plain.tar.zst: not a stage4 (no var/db/pkg inside)" in refused.stderr

    both = farm_worker(
        "unpack-root",
        "--stage4",
        tmp_path / "plain.tar.zst",
        "--stage3",
        tmp_path / "s3",
        "--root",
        tmp_path / "q",
    )
    assert both.returncode == 1
    assert "expected --stage3 with --snapshot, or --stage4 alone" in both.stderr


def test_download_inputs_fetches_only_the_entries_asked_for(tmp_path: Path) -> None:
    """An image build that reuses a stage4 downloads the kernel and overlay, not the stage3 and snapshot."""
    served = tmp_path / "served"
    served.mkdir()
    downloads = {}
    for name in ("stage3.tar.xz", "vmlinuz.tar.zst"):
        (served / name).write_bytes(name.encode())
        downloads[f"inputs/{name}"] = {"sha512": hashlib.sha512(name.encode()).hexdigest()}
    work = tmp_path / "work"
    work.mkdir()
    with WorldServer(served) as server:
        for name in downloads:
            downloads[name]["url"] = f"{server.url}/{Path(name).name}"
        (work / "downloads.json").write_text(json.dumps(downloads))

        def download(*only: str) -> subprocess.CompletedProcess[str]:
            arguments = [part for path in only for part in ("--only", path)]
            return subprocess.run(
                [FARM_WORKER, "download-inputs", "--map", "downloads.json", *arguments],
                cwd=work, capture_output=True, text=True, check=False,
            )  # fmt: skip

        fetched = download("inputs/vmlinuz.tar.zst")
        assert fetched.returncode == 0, fetched.stderr
        assert server.requested_paths() == ["/vmlinuz.tar.zst"]
        assert (work / "inputs/vmlinuz.tar.zst").read_bytes() == b"vmlinuz.tar.zst"
        assert not (work / "inputs/stage3.tar.xz").exists()

        unknown = download("inputs/portage.tar.xz")
    assert unknown.returncode == 1
    assert "download map downloads.json has no entry for inputs/portage.tar.xz" in unknown.stderr
