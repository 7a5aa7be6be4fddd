"""A kernel config cannot make the kernel build read a file of the worker."""

import argparse
from pathlib import Path

import pytest

from gentoo_farm.workers.toolkit import StageError
from gentoo_farm.workers.toolkit.stages.kernel import (
    add_arguments,
    read_kernel_config,
    refuse_host_paths,
    run,
)

DEFAULT_CONFIG = Path(__file__).parent.parent / "gentoo_farm/defaults/kernel-config/config"
SECRET = "root:$6$worker-secret:19000:0:::::"


def kernel_args(config: Path, work_dir: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(
        [
            "--mirror", "http://127.0.0.1:9",
            "--source-dist", f"DIST linux-6.1.tar.xz 1 BLAKE2B {'0' * 128} SHA512 {'0' * 128}",
            "--config", str(config),
            "--output", str(work_dir / "vmlinuz.tar.zst"),
            "--work-dir", str(work_dir),
            "--ccache-dir", str(work_dir / "ccache"),
        ]
    )  # fmt: skip


def test_a_config_linking_to_a_worker_file_is_refused_before_anything_is_copied(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text(f"{SECRET}\n")
    checkout = tmp_path / "kernel-config"
    checkout.mkdir()
    (checkout / "config").symlink_to(secret)
    work_dir = tmp_path / "work"

    with pytest.raises(StageError) as refused:
        run(kernel_args(checkout / "config", work_dir))

    assert str(refused.value).startswith(f"{checkout / 'config'}: the kernel config is a symbolic link")
    assert SECRET not in str(refused.value)
    assert not work_dir.exists()


def test_a_config_in_a_linked_directory_of_the_checkout_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/config").write_text(f"{SECRET}\n")
    (tmp_path / "kernel-config").mkdir()
    (tmp_path / "kernel-config/x86").symlink_to(tmp_path / "etc")
    (tmp_path / "build").mkdir()
    monkeypatch.chdir(tmp_path / "build")  # the step runs beside the checkout, as ../kernel-config

    with pytest.raises(StageError) as refused:
        read_kernel_config(Path("../kernel-config/x86/config"))

    assert "../kernel-config/x86 is a symbolic link" in str(refused.value)
    assert SECRET not in str(refused.value)


# Each option Kbuild opens as a file, with a value naming a worker file, and the CONFIG_ lines around it.
REFUSED = {
    "CONFIG_INITRAMFS_SOURCE": ('"usr/initramfs_list"', ""),
    "CONFIG_EXTRA_FIRMWARE_DIR": ('"/etc"', 'CONFIG_EXTRA_FIRMWARE="shadow"\n'),
    "CONFIG_EXTRA_FIRMWARE": ('"../../../etc/shadow"', ""),
    "CONFIG_MODULE_SIG_KEY": ('"/etc/ssl/private/worker.pem"', ""),
    "CONFIG_SYSTEM_TRUSTED_KEYS": ('"/etc/ssl/certs/ca.pem"', ""),
    "CONFIG_SYSTEM_REVOCATION_KEYS": ('"../../revoked.pem"', ""),
    "CONFIG_SYSTEM_BLACKLIST_HASH_LIST": ('"/root/hashes"', ""),
    "CONFIG_ACPI_CUSTOM_DSDT_FILE": ('"/root/dsdt.hex"', ""),
    "CONFIG_UNUSED_KSYMS_WHITELIST": ('"/root/ksyms"', ""),
    "CONFIG_EFI_SBAT_FILE": ('"/root/sbat.csv"', ""),
    "CONFIG_BUILTIN_DTB_NAME": ('"../../../root/board"', ""),
}


@pytest.mark.parametrize("option", list(REFUSED))
def test_an_option_naming_a_worker_file_is_refused_naming_the_option(option: str, tmp_path: Path) -> None:
    value, around = REFUSED[option]
    config = tmp_path / "config"
    config.write_text(f"CONFIG_64BIT=y\n{around}{option}={value}\n")

    with pytest.raises(StageError) as refused:
        refuse_host_paths(config, config.read_text())

    assert str(refused.value).startswith(f"{config}: {option}={value} would ")


def test_a_signing_key_on_a_pkcs11_token_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config"
    with pytest.raises(StageError, match='CONFIG_MODULE_SIG_KEY="pkcs11:token=worker" would sign'):
        refuse_host_paths(config, 'CONFIG_MODULE_SIG_KEY="pkcs11:token=worker"\n')


def test_paths_inside_the_kernel_tree_and_kconfig_defaults_pass(tmp_path: Path) -> None:
    config = tmp_path / "config"
    refuse_host_paths(
        config,
        'CONFIG_INITRAMFS_SOURCE=""\n'
        'CONFIG_EXTRA_FIRMWARE=""\nCONFIG_EXTRA_FIRMWARE_DIR="/lib/firmware"\n'
        'CONFIG_MODULE_SIG_KEY="certs/signing_key.pem"\nCONFIG_SYSTEM_TRUSTED_KEYS=""\n'
        "# CONFIG_SYSTEM_REVOCATION_KEYS is not set\n",
    )


def test_the_farm_default_config_passes() -> None:
    refuse_host_paths(DEFAULT_CONFIG, read_kernel_config(DEFAULT_CONFIG))
