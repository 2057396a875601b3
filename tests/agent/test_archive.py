"""Unpacking downloaded weight archives: benign tar/tgz/zip come out identical; hostile ones
(escaping paths and links, special files, bombs, damage) are refused and write nothing."""

import io
import os
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from node_agent.weights import archive
from node_agent.weights.archive import (
    ArchiveError,
    CorruptArchive,
    UnsafeArchive,
    archive_kind,
    unpack,
)

TREE = {
    "model/config.json": b'{"layers": 2}',
    "model/shards/part-0.bin": os.urandom(70_000),
    "model/shards/deep/part-1.bin": os.urandom(1000),
    "README": b"weights\n",
    "empty.txt": b"",
}
TREE_BYTES = sum(len(data) for data in TREE.values())


# Building archives


def file_info(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def special_info(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def write_tar(path: Path, entries: list, mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tree_entries() -> list:
    dirs = [special_info(name, tarfile.DIRTYPE) for name in ("model", "model/shards")]
    return dirs + [file_info(name, data) for name, data in TREE.items()]


def zip_info(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system, info.external_attr = 3, mode << 16
    return info


def write_zip(path: Path, entries: dict, links: dict | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(zip_info(name, stat.S_IFREG | 0o644), data)
        for name, target in (links or {}).items():
            zf.writestr(zip_info(name, stat.S_IFLNK | 0o777), target)
    return path


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def snapshot(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.fixture
def dest(tmp_path) -> Path:
    """The target directory, one level down, so that `../outside` stays inside tmp_path."""
    (tmp_path / "work").mkdir()
    return tmp_path / "work" / "dest"


def assert_refused(tmp_path: Path, dest: Path, path: Path, error: type, match: str | None, **kw):
    before = snapshot(tmp_path)
    with pytest.raises(error, match=match):
        unpack(path, dest, max_bytes=kw.get("max_bytes", 1 << 30))
    assert snapshot(tmp_path) == before  # nothing outside, nor inside: dest was not even made
    assert not dest.exists()


# Benign archives


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("w.tar", "tar"),
        ("w.TAR.GZ", "tar"),
        ("w.tgz", "tar"),
        ("w.tar.bz2", "tar"),
        ("w.tar.xz", "tar"),
        ("W.Zip", "zip"),
        ("w.gz", None),
        ("w.bin", None),
    ],
)
def test_archive_kind(name, kind):
    assert archive_kind(name) == kind


@pytest.mark.parametrize(
    ("name", "mode"), [("w.tar", "w"), ("w.tgz", "w:gz"), ("w.tar.xz", "w:xz")]
)
def test_tar_round_trip(tmp_path, dest, name, mode):
    entries = tree_entries() + [special_info("model/latest", tarfile.SYMTYPE, "shards/part-0.bin")]
    path = write_tar(tmp_path / name, entries, mode)
    assert unpack(path, dest, max_bytes=TREE_BYTES) == TREE_BYTES
    assert read_tree(dest) == TREE
    assert os.readlink(dest / "model/latest") == "shards/part-0.bin"
    assert (dest / "model/latest").read_bytes() == TREE["model/shards/part-0.bin"]
    assert [p.name for p in dest.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_zip_round_trip(tmp_path, dest):
    path = write_zip(tmp_path / "w.zip", TREE, links={"model/latest": "shards/part-0.bin"})
    assert unpack(path, dest, max_bytes=TREE_BYTES) == TREE_BYTES
    assert read_tree(dest) == TREE
    assert (dest / "model/latest").read_bytes() == TREE["model/shards/part-0.bin"]


def test_name_need_not_tell_the_kind(tmp_path, dest):
    path = write_tar(tmp_path / "download.partial", tree_entries(), "w:gz")
    assert unpack(path, dest, max_bytes=TREE_BYTES) == TREE_BYTES


def test_modes_keep_exec_but_never_setuid(tmp_path, dest):
    tar = write_tar(tmp_path / "w.tar", [file_info("run.sh", b"#!/bin/sh\n", 0o6755)])
    unpack(tar, dest / "tar", max_bytes=100)
    zf = tmp_path / "w.zip"
    with zipfile.ZipFile(zf, "w") as out:
        out.writestr(zip_info("run.sh", stat.S_IFREG | 0o6755), b"#!/bin/sh\n")
    unpack(zf, dest / "zip", max_bytes=100)
    for unpacked in (dest / "tar/run.sh", dest / "zip/run.sh"):
        mode = unpacked.stat().st_mode
        assert mode & stat.S_IXUSR
        assert not mode & (stat.S_ISUID | stat.S_ISGID)


def test_existing_dest_is_kept_and_clashes_refused(tmp_path, dest):
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    path = write_tar(tmp_path / "w.tar", [file_info("keep.txt", b"theirs")])
    with pytest.raises(ArchiveError, match="already exists"):
        unpack(path, dest, max_bytes=100)
    assert snapshot(dest) == {"keep.txt"}
    assert (dest / "keep.txt").read_text() == "mine"


# Hostile tars


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([file_info("/etc/evil", b"x")], "'/etc/evil' has an absolute path"),
        ([file_info("a/../../outside", b"x")], "'a/../../outside' escapes"),
        ([special_info("passwd", tarfile.SYMTYPE, "/etc/passwd")], "'passwd' -> '/etc/passwd'"),
        ([special_info("out", tarfile.SYMTYPE, "../outside")], "'out' -> '../outside'"),
        ([special_info("d/out", tarfile.SYMTYPE, "../../x")], "'d/out' -> '../../x'"),
        # Each link stays inside on paper; followed, `up` is the parent of the target dir.
        (
            [
                special_info("here", tarfile.SYMTYPE, "."),
                special_info("up", tarfile.SYMTYPE, "here/.."),
            ],
            "'up' -> 'here/..'",
        ),
        # A file written through a link that leads out.
        (
            [special_info("l", tarfile.SYMTYPE, "../x"), file_info("l/evil", b"x")],
            "'l' -> '../x'",
        ),
        ([special_info("hard", tarfile.LNKTYPE, "../outside")], "'hard' -> '../outside'"),
        ([special_info("hard", tarfile.LNKTYPE, "/etc/passwd")], "'hard' -> '/etc/passwd'"),
        ([special_info("hard", tarfile.LNKTYPE, "not-in-archive")], "names no earlier file"),
        ([special_info("tty", tarfile.CHRTYPE)], "'tty' is a device file"),
        ([special_info("disk", tarfile.BLKTYPE)], "'disk' is a device file"),
        ([special_info("pipe", tarfile.FIFOTYPE)], "'pipe' is a FIFO file"),
        (
            [special_info("a", tarfile.SYMTYPE, "b"), special_info("b", tarfile.SYMTYPE, "a")],
            "symlinks loop at",
        ),
        (
            [special_info("x", tarfile.SYMTYPE, "y"), file_info("x", b"x")],
            "name appears more than once",
        ),
    ],
    ids=[
        "absolute",
        "traversal",
        "symlink-absolute",
        "symlink-parent",
        "symlink-nested-parent",
        "symlink-chain",
        "write-through-link",
        "hardlink-parent",
        "hardlink-absolute",
        "hardlink-missing",
        "char-device",
        "block-device",
        "fifo",
        "symlink-loop",
        "duplicate-link",
    ],
)
def test_hostile_tar_refused(tmp_path, dest, entries, match):
    benign = [file_info("first.bin", b"ok")]  # refused even when it comes after a fine member
    path = write_tar(tmp_path / "evil.tar", benign + entries)
    assert_refused(tmp_path, dest, path, UnsafeArchive, match)


def test_tar_over_max_bytes_refused(tmp_path, dest):
    path = write_tar(tmp_path / "big.tgz", [file_info("big", bytes(100_000))], "w:gz")
    assert_refused(tmp_path, dest, path, UnsafeArchive, "more than 99999 bytes", max_bytes=99_999)


def test_data_filter_is_a_second_guard(tmp_path, dest, monkeypatch):
    monkeypatch.setattr(archive, "_check", lambda members, max_bytes: None)
    path = write_tar(tmp_path / "evil.tar", [special_info("p", tarfile.SYMTYPE, "/etc/passwd")])
    with pytest.raises(UnsafeArchive, match="unsafe archive"):
        unpack(path, dest, max_bytes=100)
    assert not dest.exists()


# Hostile zips


@pytest.mark.parametrize(
    ("entries", "links", "match"),
    [
        ({"/etc/evil": b"x"}, {}, "'/etc/evil' has an absolute path"),
        ({"a/../../outside": b"x"}, {}, "'a/../../outside' escapes"),
        ({"..\\outside": b"x"}, {}, "escapes"),
        ({"C:\\evil": b"x"}, {}, "absolute path"),
        ({}, {"passwd": "/etc/passwd"}, "'passwd' -> '/etc/passwd'"),
        ({}, {"out": "../outside"}, "'out' -> '../outside'"),
    ],
    ids=["absolute", "traversal", "backslash-traversal", "drive", "symlink-absolute", "symlink-up"],
)
def test_hostile_zip_refused(tmp_path, dest, entries, links, match):
    path = write_zip(tmp_path / "evil.zip", {"first.bin": b"ok", **entries}, links)
    assert_refused(tmp_path, dest, path, UnsafeArchive, match)


def test_zip_special_file_refused(tmp_path, dest):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zip_info("pipe", stat.S_IFIFO | 0o644), b"")
    assert_refused(tmp_path, dest, path, UnsafeArchive, "'pipe' is a special file")


def zip_bomb(path: Path, size: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.bin", bytes(size))
    return path


def test_zip_bomb_refused_up_front(tmp_path, dest):
    path = zip_bomb(tmp_path / "bomb.zip", 20 << 20)
    assert path.stat().st_size < 100_000
    assert_refused(tmp_path, dest, path, UnsafeArchive, "more than 1048576", max_bytes=1 << 20)


def test_zip_bomb_stops_while_extracting(tmp_path, dest, monkeypatch):
    # Declared sizes that pass the check up front must not matter: bytes are counted as written.
    real_check = archive._check
    monkeypatch.setattr(archive, "_check", lambda members, max_bytes: real_check(members, 1 << 62))
    path = zip_bomb(tmp_path / "bomb.zip", 20 << 20)
    assert_refused(tmp_path, dest, path, UnsafeArchive, "more than 1048576", max_bytes=1 << 20)


def test_zip_with_lying_sizes_refused(tmp_path, dest):
    path = zip_bomb(tmp_path / "bomb.zip", 20 << 20)
    raw = bytearray(path.read_bytes())
    # Claim 100 bytes in both the local header (offset 22) and the central directory (24).
    struct.pack_into("<I", raw, 22, 100)
    struct.pack_into("<I", raw, raw.index(b"PK\x01\x02") + 24, 100)
    path.write_bytes(bytes(raw))
    assert zipfile.ZipFile(path).infolist()[0].file_size == 100
    assert_refused(tmp_path, dest, path, ArchiveError, None, max_bytes=1 << 20)


# Damaged archives


def test_truncated_tgz_is_corrupt(tmp_path, dest):
    path = write_tar(tmp_path / "w.tgz", [file_info("w.bin", os.urandom(200_000))], "w:gz")
    path.write_bytes(path.read_bytes()[:100_000])
    assert_refused(tmp_path, dest, path, CorruptArchive, "w.tgz is damaged or truncated")


def test_truncated_tar_is_corrupt(tmp_path, dest):
    path = write_tar(tmp_path / "w.tar", [file_info("w.bin", os.urandom(200_000))])
    path.write_bytes(path.read_bytes()[:100_000])
    assert_refused(tmp_path, dest, path, CorruptArchive, "damaged or truncated")


@pytest.mark.parametrize("name", ["w.zip", "w.tar.gz", "download.partial"])
def test_garbage_is_corrupt(tmp_path, dest, name):
    path = tmp_path / name
    path.write_bytes(os.urandom(5000))
    assert_refused(tmp_path, dest, path, CorruptArchive, None)


def test_damage_mid_extraction_leaves_nothing(tmp_path, dest):
    # Damage past the headers is found only while writing; the staging directory goes away.
    path = write_zip(tmp_path / "w.zip", {"a.bin": b"a" * 1000, "b.bin": os.urandom(50_000)})
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"b.bin") + 5 + 20_000] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert_refused(tmp_path, dest, path, CorruptArchive, "damaged")
