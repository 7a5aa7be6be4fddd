"""The tests' cache (tests/cache.py): complete entries only, rebuilt when an input changes, bounded."""

import os
import subprocess
from pathlib import Path

import pytest

from tests import cache

CHECKOUT = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.ROOT_VARIABLE, str(root))
    return root


class Builder:
    """A build function that counts its calls and writes ``size`` bytes."""

    def __init__(self, size: int = 10) -> None:
        self.calls = 0
        self.size = size

    def __call__(self, dest: Path) -> None:
        self.calls += 1
        dest.mkdir()
        (dest / "payload").write_bytes(b"x" * self.size)


def test_an_entry_is_built_once_then_reused(cache_root: Path) -> None:
    builder = Builder()
    first = cache.entry("thing", "k1", builder)
    again = cache.entry("thing", "k1", builder)
    assert first == again == cache_root / "thing" / "k1"
    assert (first / "payload").read_bytes() == b"x" * 10
    assert builder.calls == 1


def test_a_build_that_dies_leaves_no_entry_and_the_next_run_rebuilds(cache_root: Path) -> None:
    def dies_half_way(dest: Path) -> None:
        dest.mkdir()
        (dest / "half").write_text("written before the crash")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        cache.entry("thing", "k1", dies_half_way)
    assert not (cache_root / "thing" / "k1").exists()
    # A run killed outright leaves its temporary directory behind: it is not the entry.
    leftover = cache_root / "thing" / f"{cache.TEMPORARY_PREFIX}abcd"
    (leftover / "e").mkdir(parents=True)
    (leftover / "e" / "half").write_text("partial")

    builder = Builder()
    entry = cache.entry("thing", "k1", builder)
    assert builder.calls == 1
    assert sorted(path.name for path in entry.iterdir()) == ["payload"]


def test_a_changed_input_source_file_gives_a_new_key_and_a_rebuild(tmp_path: Path) -> None:
    source = tmp_path / "generator"
    source.mkdir()
    (source / "build.py").write_text("VERSION = 1\n")
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "build.pyc").write_bytes(b"compiled")
    builder = Builder()
    before = cache.entry("thing", cache.source_hash([source], "scale=1"), builder)

    (source / "__pycache__" / "build.pyc").write_bytes(b"recompiled")  # not an input
    assert cache.entry("thing", cache.source_hash([source], "scale=1"), builder) == before
    assert builder.calls == 1

    (source / "build.py").write_text("VERSION = 2\n")
    after = cache.entry("thing", cache.source_hash([source], "scale=1"), builder)
    assert after != before and builder.calls == 2
    assert cache.source_hash([source], "scale=2") != cache.source_hash([source], "scale=1")


def test_entries_over_the_cap_are_evicted_least_recently_used_first(
    cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cache.MAX_GIB_VARIABLE, str(25_000 / 2**30))
    builder = Builder(size=10_000)
    oldest = cache.entry("thing", "old", builder)
    used_again = cache.entry("thing", "used-again", builder)
    os.utime(oldest, (1, 1))
    os.utime(used_again, (2, 2))
    cache.entry("thing", "used-again", builder)  # used now: the most recent
    newest = cache.entry("other", "new", builder)  # 30 000 bytes > 25 000: one entry goes

    assert not oldest.exists()
    assert used_again.is_dir() and newest.is_dir()
    assert builder.calls == 3
    # Shared directories (caches keyed by their own contents) are not entries: never evicted.
    assert cache.directory("debs") == cache_root / "debs"


def test_run_tests_clear_cache_empties_it_and_runs_nothing(cache_root: Path) -> None:
    cache.entry("thing", "k1", Builder())
    (cache.directory("debs") / "a.deb").write_bytes(b"deb")

    cleared = subprocess.run(
        [CHECKOUT / "run-tests", "--clear-cache"], capture_output=True, text=True, timeout=60
    )
    assert cleared.returncode == 0, cleared.stderr
    assert f"cleared {cache_root}" in cleared.stdout
    assert list(cache_root.iterdir()) == []


def test_merge_tree_adds_missing_files_whole_and_keeps_the_ones_there(tmp_path: Path) -> None:
    source, destination = tmp_path / "source", tmp_path / "destination"
    (source / "a").mkdir(parents=True)
    (source / "a" / "new").write_text("from the source")
    (source / "same").write_text("source's copy")
    destination.mkdir()
    (destination / "same").write_text("already there")

    cache.merge_tree(source, destination)

    assert (destination / "a" / "new").read_text() == "from the source"
    assert (destination / "same").read_text() == "already there"
    assert sorted(str(path.relative_to(destination)) for path in destination.rglob("*")) == [
        "a",
        "a/new",
        "same",
    ]
