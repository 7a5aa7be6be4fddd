"""No machine's identity in an assembled image: each instance makes its own SSH host keys, machine id and
random seed at first boot (issue 16)."""

import subprocess
from pathlib import Path

from tests.imagetest import assemble, make_overlay, make_root
from tests.test_hostile_inputs import kernel_tarball

IDENTITY = {
    "etc/ssh/ssh_host_ed25519_key": "PRIVATE",
    "etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA host",
    "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
    "var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
    "var/lib/misc/random-seed": "seed",
    "var/lib/seedrng/seed.credit": "seed",
    "var/lib/systemd/random-seed": "seed",
}


def test_assembly_removes_host_keys_machine_id_and_seeds_of_the_root_and_overlay(
    tmp_path: Path,
) -> None:
    root = make_root(tmp_path)
    subprocess.run(["ssh-keygen", "-A", "-f", str(root)], check=True, capture_output=True)
    assert list((root / "etc/ssh").glob("ssh_host_*_key"))
    for path, text in IDENTITY.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    # The overlay brings one of its own, as a user's overlay might by mistake.
    overlay = make_overlay(
        tmp_path, lambda tree: (tree / "etc/ssh/ssh_host_overlay_key").write_text("PRIVATE")
    )

    assembled = assemble(root, kernel_tarball(tmp_path), overlay)

    assert assembled.returncode == 0, assembled.stderr
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert [path for path in IDENTITY if (root / path).exists()] == []
    assert "removed what each instance makes its own: /etc/ssh/ssh_host_ecdsa_key" in assembled.stdout
    assert "/etc/ssh/ssh_host_overlay_key " in assembled.stdout
    # What an instance needs to make its own stays: sshd's init script generates missing host keys.
    assert (root / "etc/ssh/sshd_config").is_file()
