"""Manifest DIST lines: one reading (Portage's) for the worker's stages and the master's push-back guard."""

from __future__ import annotations

import pytest

from gentoo_farm.gentoo_manifest import DistEntry, ManifestError, dist_entries
from gentoo_farm.store.binhost import vouched_distfiles

BLAKE2B, SHA512 = "1A" * 64, "2b" * 64
LINE = f"DIST linux-6.1.tar.xz 134728520 BLAKE2B {BLAKE2B} SHA512 {SHA512}"
MANIFEST = f"""AUX fix.patch 12 BLAKE2B {"3c" * 64} SHA512 {"4d" * 64}
{LINE}
DIST only-md5-1.tar.gz 10 MD5 {"5e" * 16}
EBUILD vanilla-sources-6.1.ebuild 900 BLAKE2B {"6f" * 64} SHA512 {"70" * 64}
"""


def test_a_dist_line_reads_as_portage_reads_it_and_writes_back() -> None:
    entry = DistEntry.parse(LINE + "\n")
    assert (entry.name, entry.size, entry.blake2b, entry.sha512) == (
        "linux-6.1.tar.xz",
        134728520,
        BLAKE2B.lower(),
        SHA512,
    )
    assert entry.hashes == {"size": 134728520, "BLAKE2B": BLAKE2B, "SHA512": SHA512}
    assert entry.line == LINE


@pytest.mark.parametrize(
    "line",
    [
        "DIST linux-6.1.tar.xz 134728520",
        "DIST linux-6.1.tar.xz big SHA512 2b",
        f"EBUILD vanilla-sources-6.1.ebuild 900 SHA512 {SHA512}",
    ],
)
def test_what_is_no_dist_line_is_refused_quoting_it(line: str) -> None:
    with pytest.raises(ManifestError) as refused:
        DistEntry.parse(line)
    assert str(refused.value) == f"not a Manifest DIST line: {line!r}"


def test_a_manifest_lists_its_dist_lines_only() -> None:
    assert [entry.name for entry in dist_entries(MANIFEST)] == ["linux-6.1.tar.xz", "only-md5-1.tar.gz"]
    with pytest.raises(ManifestError, match=r"not a Manifest DIST line: 'DIST broken-1\.tar\.gz 10'"):
        list(dist_entries(MANIFEST + "DIST broken-1.tar.gz 10\n"))


def test_push_back_compares_the_lines_with_a_sha512() -> None:
    assert vouched_distfiles(MANIFEST) == {
        "linux-6.1.tar.xz": {"size": 134728520, "sha512": SHA512, "blake2b": BLAKE2B.lower()}
    }
