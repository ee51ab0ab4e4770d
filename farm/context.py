"""Build contexts: `.dockerignore` filtering and a reproducible tar.

The same files give the same tar, byte for byte, on any host: entries are
sorted, owners are 0, and every time stamp is the same fixed date. That
makes the tar's digest a content address, so a context is uploaded to the
registry once however many builds use it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .config import format_size
from .errors import ContextError
from .registry import file_digest

# 1980-01-02 rather than the epoch: zip-based tools (Python wheels, jar)
# reject file times before 1980, and copied files keep this time.
FIXED_MTIME = 315619200


@dataclass(frozen=True)
class IgnoreRule:
    """One `.dockerignore` line: a pattern, whether it re-includes, and its line."""

    pattern: str
    negated: bool
    line: int
    regex: re.Pattern


@dataclass(frozen=True)
class PackedContext:
    """A packed context: the gzip tar's path, digest and size, and what it holds.

    `index` maps each packed path to a fingerprint of that entry (its
    mode and content digest, link target, or directory mode), so a stage
    key can cover just the files a stage copies.
    """

    path: Path
    digest: str
    size: int
    index: dict[str, str]
    rules: list[IgnoreRule]

    @property
    def files(self) -> int:
        return len(self.index)


def read_dockerignore(context_dir: Path) -> list[IgnoreRule]:
    """Read `.dockerignore` at the root of `context_dir`; no file means no rules."""
    path = context_dir / ".dockerignore"
    if not path.is_file():
        return []
    rules = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        negated = text.startswith("!")
        pattern = os.path.normpath(text[1:].strip() if negated else text).lstrip("/")
        if pattern in ("", "."):
            continue
        rules.append(IgnoreRule(pattern, negated, number, compile_pattern(pattern)))
    return rules


def is_ignored(relative_path: str, rules: list[IgnoreRule]) -> bool:
    """Return whether `relative_path` (posix, no leading slash) is excluded.

    The last rule that matches the path, or one of its parent directories,
    decides, as in Docker.
    """
    ignored = False
    candidates = _self_and_parents(relative_path)
    for rule in rules:
        if any(rule.regex.fullmatch(candidate) for candidate in candidates):
            ignored = not rule.negated
    return ignored


def pack_context(context_dir: Path, destination: Path, limit: int | None = None) -> PackedContext:
    """Pack `context_dir`, less what `.dockerignore` excludes, into `destination`.

    Raises ContextError for a missing context, for a symbolic link that
    points outside the context, and for a context whose files add up to
    more than `limit` bytes (checked before anything is written).
    """
    context_dir = Path(context_dir)
    if not context_dir.is_dir():
        raise ContextError(f"build context not found: {context_dir} is not a directory")
    rules = read_dockerignore(context_dir)
    included = sorted(_walk(context_dir, rules))
    if limit is not None:
        _check_size(context_dir, included, limit)

    index: dict[str, str] = {}
    with (
        open(destination, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for relative in included:
            entry, stream = _entry(context_dir, relative)
            if stream is None:
                tar.addfile(entry)
                index[relative] = _fingerprint(entry, None)
                continue
            with stream:
                hashing = _HashingReader(stream)
                tar.addfile(entry, hashing)
                index[relative] = _fingerprint(entry, hashing.hexdigest())

    return PackedContext(destination, file_digest(destination), destination.stat().st_size, index, rules)


def unpack_context(archive: Path, destination: Path, limit: int | None = None) -> None:
    """Extract a context tar, rejecting absolute paths, `..` and links that leave it.

    With `limit`, an archive larger than `limit` bytes, or whose files add
    up to more, is rejected with ContextError. Extraction stops before the
    first file past the limit, so no more than `limit` bytes are written.
    """
    compressed = archive.stat().st_size
    if limit is not None and compressed > limit:
        raise ContextError(
            f"rejecting context archive {archive.name}: it is {format_size(compressed)} "
            f"({compressed} bytes), over the context limit of {format_size(limit)} (FARM_CONTEXT_LIMIT)"
        )
    checked = _SizeCheckedFilter(archive.name, limit)
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            tar.extractall(destination, filter=checked)
    except (tarfile.FilterError, tarfile.TarError) as error:
        raise ContextError(f"refusing context archive {archive.name}: {error}") from None


class _SizeCheckedFilter:
    """A tarfile extraction filter that checks each member and the running total of file sizes."""

    def __init__(self, archive_name: str, limit: int | None) -> None:
        self.archive_name = archive_name
        self.limit = limit
        self.total = 0

    def __call__(self, member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo:
        self.total += member.size if member.isfile() else 0
        if self.limit is not None and self.total > self.limit:
            raise ContextError(
                f"rejecting context archive {self.archive_name}: its files add up to more than the "
                f"context limit of {format_size(self.limit)} (FARM_CONTEXT_LIMIT) "
                f"({self.total} bytes up to {member.name})"
            )
        return _checked_member(member, destination)


def _check_size(context_dir: Path, included: list[str], limit: int) -> None:
    """Raise ContextError when the regular files of a context add up to more than `limit` bytes."""
    size = 0
    for relative in included:
        info = os.lstat(context_dir / relative)
        if stat.S_ISREG(info.st_mode):
            size += info.st_size
    if size > limit:
        raise ContextError(
            f"build context {context_dir} is {format_size(size)} ({size} bytes), over the limit of "
            f"{format_size(limit)} (FARM_CONTEXT_LIMIT); exclude files with {context_dir}/.dockerignore "
            "or raise FARM_CONTEXT_LIMIT"
        )


def _checked_member(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo:
    # data_filter raises on unsafe members; its changes to modes are not
    # kept, so copied files have the modes they had in the context. It
    # would strip a leading slash silently, but a packed context never has
    # one, so such an archive is refused.
    if member.name.startswith("/") or member.linkname.startswith("/"):
        raise tarfile.AbsolutePathError(member)
    tarfile.data_filter(member, destination)
    return member


def _walk(context_dir: Path, rules: list[IgnoreRule]):
    """Yield the included paths below `context_dir`, relative, in posix form."""
    may_reinclude = any(rule.negated for rule in rules)
    for current, directories, files in os.walk(context_dir):
        relative_dir = os.path.relpath(current, context_dir)
        relative_dir = "" if relative_dir == "." else relative_dir.replace(os.sep, "/")
        kept_directories = []
        for name in sorted(directories):
            relative = f"{relative_dir}/{name}" if relative_dir else name
            ignored = is_ignored(relative, rules)
            if os.path.islink(os.path.join(current, name)):
                if not ignored:
                    files.append(name)
                continue
            if ignored and not may_reinclude:
                continue
            kept_directories.append(name)
            if not ignored:
                yield relative
        directories[:] = kept_directories
        for name in sorted(files):
            relative = f"{relative_dir}/{name}" if relative_dir else name
            if not is_ignored(relative, rules):
                yield relative


def _entry(context_dir: Path, relative: str) -> tuple[tarfile.TarInfo, object]:
    full = context_dir / relative
    info = os.lstat(full)
    entry = tarfile.TarInfo(relative)
    entry.mtime = FIXED_MTIME
    entry.mode = stat.S_IMODE(info.st_mode)
    entry.uid = entry.gid = 0
    entry.uname = entry.gname = ""

    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(full)
        _check_link(context_dir, relative, target)
        entry.type = tarfile.SYMTYPE
        entry.linkname = target
        return entry, None
    if stat.S_ISDIR(info.st_mode):
        entry.type = tarfile.DIRTYPE
        return entry, None
    if not stat.S_ISREG(info.st_mode):
        raise ContextError(f"{full}: only regular files, directories and links can be in a build context")
    entry.size = info.st_size
    return entry, open(full, "rb")


def _fingerprint(entry: tarfile.TarInfo, content_digest: str | None) -> str:
    if entry.issym():
        return f"link:{entry.linkname}"
    if entry.isdir():
        return f"dir:{entry.mode:o}"
    return f"file:{entry.mode:o}:{content_digest}"


class _HashingReader:
    """A file wrapper that hashes what tarfile reads from it."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._hash.update(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _check_link(context_dir: Path, relative: str, target: str) -> None:
    if os.path.isabs(target):
        raise ContextError(
            f"{context_dir / relative}: symbolic link to absolute path {target} leaves the build context"
        )
    resolved = os.path.normpath(os.path.join(os.path.dirname(relative), target))
    if resolved == ".." or resolved.startswith("../"):
        raise ContextError(f"{context_dir / relative}: symbolic link to {target} leaves the build context")


def _self_and_parents(relative_path: str) -> list[str]:
    parts = relative_path.split("/")
    return ["/".join(parts[: end + 1]) for end in range(len(parts))]


def compile_pattern(pattern: str) -> re.Pattern:
    """Translate a Docker ignore pattern (Go filepath.Match plus `**`) to a regex."""
    out = []
    position = 0
    while position < len(pattern):
        char = pattern[position]
        if pattern.startswith("**", position):
            position += 2
            if pattern.startswith("/", position):
                position += 1
                out.append("(?:.*/)?")
            else:
                out.append(".*")
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            closing = pattern.find("]", position + 1)
            if closing == -1:
                out.append(re.escape(char))
            else:
                body = pattern[position + 1 : closing].replace("\\", "\\\\")
                if body.startswith("^"):
                    body = "!" + body[1:]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                position = closing
        elif char == "\\" and position + 1 < len(pattern):
            position += 1
            out.append(re.escape(pattern[position]))
        else:
            out.append(re.escape(char))
        position += 1
    return re.compile("".join(out))
