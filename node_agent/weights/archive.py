"""Safe unpacking of downloaded weight archives: .tar (plain, gzip, bzip2, xz) and .zip.

An archive comes from the internet, so it is treated as hostile. Every member is checked before
anything is written: no absolute paths, no `..`, no links that lead out of the target directory
(following the archive's own symlinks, as the file system would), nothing but regular files,
directories and links, and a declared size within `max_bytes`. Extraction then streams into a
staging directory inside `dest`, counting bytes as it goes, and moves the result into place only
when all of it unpacked, so a refused or corrupt archive leaves `dest` as it was.
"""

import contextlib
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1024 * 1024
_MAX_SYMLINK_HOPS = 40  # as Linux's MAXSYMLINKS: more is a loop
_MAX_LINK_TARGET = 4096  # a zip symlink's target is its content; PATH_MAX bounds it
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class ArchiveError(Exception):
    """The archive cannot be unpacked; the message says why, for a user."""


class UnsafeArchive(ArchiveError):
    """The archive would write outside its directory, create special files, or grow too big."""


class CorruptArchive(ArchiveError):
    """The archive is truncated or damaged."""


@dataclass(frozen=True)
class _Member:
    """One archive entry, reduced to what the checks need."""

    name: str  # normalized: relative, "/"-separated, no "." parts; "." is the root itself
    kind: str  # "file", "dir", "symlink" or "hardlink"
    size: int = 0
    link: str = ""  # symlink target (relative to its directory) or hardlink target (to root)


def archive_kind(name: str) -> str | None:
    """The archive's kind by its file name (case-insensitive): "tar", "zip" or None."""
    lowered = name.lower()
    if lowered.endswith(_TAR_SUFFIXES):
        return "tar"
    return "zip" if lowered.endswith(".zip") else None


def unpack(archive: Path, dest: Path, *, max_bytes: int) -> int:
    """Unpack `archive` into `dest` (created if missing); returns the bytes unpacked.

    Raises UnsafeArchive or CorruptArchive (both ArchiveError) and then leaves `dest` as it was.
    """
    kind = archive_kind(archive.name) or _sniff(archive)
    with _errors_explained(archive):
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                members = [_zip_member(zf, info) for info in zf.infolist()]
                return _unpack_checked(members, dest, max_bytes, lambda to: _zip_extract(zf, to))
        with tarfile.open(archive, "r:*", copybufsize=_CHUNK, errorlevel=2) as tar:
            infos = tar.getmembers()  # reads every header: truncation shows up now
            members = [_tar_member(info) for info in infos]
            return _unpack_checked(members, dest, max_bytes, lambda to: _tar_extract(tar, to))


def _sniff(archive: Path) -> str:
    """The kind of an archive whose name does not tell (say a download's temporary name)."""
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise CorruptArchive(f"{archive.name} is not a tar or zip archive")


@contextlib.contextmanager
def _errors_explained(archive: Path) -> Iterator[None]:
    """Turns the many ways a damaged or odd archive fails into ArchiveErrors."""
    try:
        yield
    except ArchiveError:
        raise
    except tarfile.FilterError as exc:  # our own checks should have caught it first
        raise UnsafeArchive(f"unsafe archive: {exc}") from exc
    except Exception as exc:
        if _is_corruption(exc):
            raise CorruptArchive(f"{archive.name} is damaged or truncated: {exc}") from exc
        if isinstance(exc, NotImplementedError | RuntimeError | tarfile.TarError):
            # Unsupported compression, encrypted zip members, and the like.
            raise ArchiveError(f"cannot unpack {archive.name}: {exc}") from exc
        raise


def _is_corruption(exc: BaseException) -> bool:
    decoding = (tarfile.ReadError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)
    if isinstance(exc, decoding):
        return True
    # gzip.BadGzipFile and bz2's "Invalid data stream" are OSErrors without an errno; a full
    # disk or a permission problem has one, and is not the archive's fault.
    return isinstance(exc, OSError) and exc.errno is None


# Checking members


def _tar_member(info: tarfile.TarInfo) -> _Member:
    name = _safe_name(info.name, is_dir=info.isdir())
    if info.isreg():
        return _Member(name, "file", info.size)
    if info.isdir():
        return _Member(name, "dir")
    if info.issym():
        return _Member(name, "symlink", link=info.linkname)
    if info.islnk():
        return _Member(name, "hardlink", link=info.linkname)
    what = "device" if info.ischr() or info.isblk() else "FIFO" if info.isfifo() else "special"
    raise UnsafeArchive(f"unsafe archive: member '{info.name}' is a {what} file")


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    mode = info.external_attr >> 16 if info.create_system == 3 else 0  # 3: made on Unix
    name = _safe_name(info.filename, is_dir=info.is_dir())
    if stat.S_ISLNK(mode):
        if info.file_size > _MAX_LINK_TARGET:
            raise UnsafeArchive(f"unsafe archive: symlink '{info.filename}' has a huge target")
        return _Member(name, "symlink", link=zf.read(info).decode("utf-8", "surrogateescape"))
    if info.is_dir() or stat.S_ISDIR(mode):
        return _Member(name, "dir")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # no type bits: a file (zipfile writes so)
        raise UnsafeArchive(f"unsafe archive: member '{info.filename}' is a special file")
    return _Member(name, "file", info.file_size)


def _safe_name(raw: str, *, is_dir: bool) -> str:
    """The member's path relative to the target directory, or UnsafeArchive if it has none."""
    # Backslashes count as separators too: a zip made on Windows may use them.
    parts = raw.replace("\\", "/").split("/")
    if not raw or "\0" in raw or raw.startswith(("/", "\\")) or _has_drive(raw):
        raise UnsafeArchive(f"unsafe archive: member '{raw}' has an absolute path")
    if ".." in parts:
        raise UnsafeArchive(f"unsafe archive: member '{raw}' escapes the target directory")
    name = posixpath.normpath("/".join(parts))
    if name == "." and not is_dir:
        raise UnsafeArchive(f"unsafe archive: member '{raw}' has no file name")
    return name


def _has_drive(raw: str) -> bool:
    return len(raw) >= 2 and raw[1] == ":" and raw[0].isalpha()


def _check(members: list[_Member], max_bytes: int) -> None:
    """Refuse the archive unless every member stays inside and the total fits."""
    links = {m.name: m.link for m in members if m.kind == "symlink"}
    counts = Counter(m.name for m in members)
    if any(counts[name] > 1 for name in links):
        # One name as a link and again as something else: what is written through it depends on
        # the order of extraction. No real archive needs this.
        raise UnsafeArchive("unsafe archive: a symlink's name appears more than once")
    files = set()
    for member in members:
        if _resolve(links, ".", posixpath.dirname(member.name) or ".") is None:
            raise UnsafeArchive(f"unsafe archive: member '{member.name}' escapes through a link")
        if member.kind == "symlink":
            _check_symlink(links, member)
        elif member.kind == "hardlink":
            _check_hardlink(links, member, files)
        elif member.kind == "file":
            files.add(member.name)
    total = sum(m.size for m in members)
    if total > max_bytes:
        raise UnsafeArchive(f"unsafe archive: unpacks to more than {max_bytes} bytes")


def _check_symlink(links: dict[str, str], member: _Member) -> None:
    parent = _resolve(links, ".", posixpath.dirname(member.name) or ".")
    if not member.link:
        raise UnsafeArchive(f"unsafe archive: symlink '{member.name}' has no target")
    if member.link.startswith("/") or _resolve(links, parent or ".", member.link) is None:
        raise UnsafeArchive(
            f"unsafe archive: symlink '{member.name}' -> '{member.link}' points outside "
            "the target directory"
        )


def _check_hardlink(links: dict[str, str], member: _Member, files: set[str]) -> None:
    target = member.link
    inside = not target.startswith("/") and ".." not in target.split("/")
    if not inside or _resolve(links, ".", target) is None:
        raise UnsafeArchive(
            f"unsafe archive: hard link '{member.name}' -> '{target}' points outside "
            "the target directory"
        )
    if posixpath.normpath(target) not in files:
        # Linking to a file that is not (yet) in the archive would link to whatever is there.
        raise UnsafeArchive(
            f"unsafe archive: hard link '{member.name}' -> '{target}' names no earlier file"
        )


def _resolve(links: dict[str, str], base: str, path: str) -> str | None:
    """Where `path`, relative to directory `base`, lands once the archive's symlinks are
    followed (as the kernel would, component by component); None if it leaves the root.
    Raises UnsafeArchive for a loop of links."""
    resolved = [] if base == "." else base.split("/")
    pending = path.split("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        resolved.append(part)
        target = links.get("/".join(resolved))
        if target is not None:
            hops += 1
            if hops > _MAX_SYMLINK_HOPS:
                raise UnsafeArchive(f"unsafe archive: symlinks loop at '{'/'.join(resolved)}'")
            if target.startswith("/"):
                return None
            resolved.pop()
            pending[:0] = target.split("/")
    return "/".join(resolved) or "."


# Extracting


def _unpack_checked(
    members: list[_Member], dest: Path, max_bytes: int, extract: Callable[["_Budget"], int]
) -> int:
    _check(members, max_bytes)
    dest = dest.resolve()
    tops = {m.name.split("/")[0] for m in members} - {"."}
    clashes = sorted(top for top in tops if os.path.lexists(dest / top))
    if clashes:
        raise ArchiveError(f"cannot unpack: '{clashes[0]}' already exists in {dest}")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=dest))
    try:
        total = extract(_Budget(staging, max_bytes))
        for entry in os.listdir(staging):
            os.rename(staging / entry, dest / entry)
        return total
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass
class _Budget:
    """Where to extract, and the bytes written there so far against the limit."""

    root: Path
    max_bytes: int
    used: int = 0

    def spend(self, n: int) -> None:
        """Call before writing n bytes: refuses once they would pass the limit."""
        self.used += n
        if self.used > self.max_bytes:
            raise UnsafeArchive(f"unsafe archive: unpacks to more than {self.max_bytes} bytes")


def _tar_extract(tar: tarfile.TarFile, budget: _Budget) -> int:
    # tarfile copies exactly `size` bytes per member, so the sizes already checked are the
    # bytes written; the "data" filter re-checks paths, links and modes on the real file system
    # (and drops setuid/setgid, owners and group/other write).
    total = 0
    for info in tar:
        tar.extract(info, budget.root, filter="data")
        if info.isreg():
            total += info.size
            budget.spend(info.size)
    return total


def _zip_extract(zf: zipfile.ZipFile, budget: _Budget) -> int:
    total = 0
    for info in zf.infolist():
        member = _zip_member(zf, info)
        if member.name == ".":
            continue
        target = budget.root / member.name
        target.parent.mkdir(parents=True, exist_ok=True)
        _inside(budget.root, target.parent)  # the real directory, links on disk followed
        if member.kind == "dir":
            target.mkdir(exist_ok=True)
        elif member.kind == "symlink":
            _replace(target)
            os.symlink(member.link, target)
        else:
            total += _write_file(zf, info, target, budget)
    return total


def _write_file(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: _Budget) -> int:
    """Stream one zip member to `target`, counting against the budget: declared sizes can lie."""
    executable = info.create_system == 3 and (info.external_attr >> 16) & stat.S_IXUSR
    _replace(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(target, flags, 0o600)
    written = 0
    with os.fdopen(fd, "wb") as out, zf.open(info) as src:
        os.fchmod(out.fileno(), 0o755 if executable else 0o644)  # never setuid/setgid
        while chunk := src.read(_CHUNK):
            budget.spend(len(chunk))
            out.write(chunk)
            written += len(chunk)
    return written


def _replace(target: Path) -> None:
    """Make way for a member written twice; never writes through an existing link."""
    if target.is_symlink() or target.is_file():
        target.unlink()


def _inside(root: Path, path: Path) -> None:
    real = os.path.realpath(path)
    if os.path.commonpath([real, str(root)]) != str(root):
        raise UnsafeArchive(f"unsafe archive: '{path.name}' escapes the target directory")
