"""Gentoo's package Manifests: the ``DIST`` lines that vouch for a distfile's size and hashes.

One reading for the whole farm, Portage's own (``parseManifest2``): the worker's stages take a kernel distfile
only as its line says, and the master signs and merges a pushed-back distfile only as the verified snapshot's
line says, so both sides agree on what a line means.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from portage.manifest import parseManifest2


class ManifestError(ValueError):
    """A line that is not a Manifest ``DIST`` line; the message quotes it."""


@dataclass(frozen=True)
class DistEntry:
    """One ``DIST name size HASH value ...`` line of a Manifest."""

    name: str
    hashes: dict[str, int | str]
    """Portage's form: hash name -> hex digest, and ``size`` -> bytes (what ``verify_all`` checks)."""

    @classmethod
    def parse(cls, line: str) -> DistEntry:
        entry = parseManifest2(line.strip())
        if entry is None or entry.type != "DIST":
            raise ManifestError(f"not a Manifest DIST line: {line.strip()!r}")
        return cls(entry.name, dict(entry.hashes))

    @property
    def line(self) -> str:
        digests = " ".join(f"{name} {value}" for name, value in sorted(self.hashes.items()) if name != "size")
        return f"DIST {self.name} {self.size} {digests}"

    @property
    def size(self) -> int:
        return int(self.hashes["size"])

    @property
    def sha512(self) -> str:
        """Lowercase hex, empty when the line lists no SHA512."""
        return str(self.hashes.get("SHA512", "")).lower()

    @property
    def blake2b(self) -> str:
        """Lowercase hex, empty when the line lists no BLAKE2B."""
        return str(self.hashes.get("BLAKE2B", "")).lower()


def dist_entries(text: str) -> Iterator[DistEntry]:
    """Every ``DIST`` line of a Manifest's text (its other lines name the package's own files)."""
    for line in text.splitlines():
        if line.split(maxsplit=1)[:1] == ["DIST"]:
            yield DistEntry.parse(line)
