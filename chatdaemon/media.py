"""A response's photo or document: what its value names, and the file it uploads.

The value of `photo:` or `document:` (after rendering) is read as

    http://… or https://…          a URL: Telegram fetches the file itself
    only letters, digits, _ and -   a file_id of a file Telegram already has
    anything else                   a path relative to the bot's directory, uploaded
                                    (a file named without a dot: write ./NAME)

A path is resolved with every symlink followed and must stay inside the bot's directory:
`../secret`, an absolute path and a symlink pointing out are all refused, at `check` for a
literal value and at render time for a templated one. The bot's own files are never sent,
whatever a template renders: its definitions (*.yaml, *.yml at the top, which may hold hook
keys), its code (*.py, __pycache__) and hidden files (.env, …); nor is a database, which
holds every chat's messages (a daemon run from its bot's directory keeps its SQLite file
there): a file named *-wal, *-shm or *-journal, or one that starts as an SQLite database or
its write-ahead log does, whatever its name. The file must be a regular,
non-empty file within the Bot API's bound for its kind (10 MB for a photo, 50 MB for a
document); it is read once, at most that many bytes, so a retried send sends the same bytes.
"""

from __future__ import annotations

import os
import re
import stat

from .templates import TemplateError
from .transfer import MAX_PHOTO, MAX_UPLOAD, Upload

MB = 1024 * 1024
MAX_BYTES = {"photo": MAX_PHOTO, "document": MAX_UPLOAD}   # the Bot API's upload bounds
KINDS = tuple(MAX_BYTES)
_FILE_ID = re.compile(r"[A-Za-z0-9_-]+")
DATABASE_SUFFIXES = ("-wal", "-shm", "-journal")   # SQLite's files beside a database
DATABASE_MAGIC = (b"SQLite format 3\0",            # a database's first bytes
                  b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")   # a write-ahead log's
NO_DATABASE = "a database is never sent (it holds every chat's messages)"


class MediaError(TemplateError):
    """A photo or document value that cannot be sent: `kind`, the `value`, and the `reason`."""

    def __init__(self, where: str, kind: str, value: str, reason: str):
        self.kind = kind
        self.value = value
        self.reason = reason
        super().__init__(where, f"{kind} {value[:200]!r}: {reason}")


def source_of(value: str) -> str:
    """"url", "file_id" or "path": how the Bot API gets the file `value` names."""
    if value.startswith(("https://", "http://")):
        return "url"
    if _FILE_ID.fullmatch(value):
        return "file_id"
    return "path"


def confined_path(directory: str | None, kind: str, value: str, where: str) -> str:
    """The real path of `value` inside `directory`; MediaError when it would leave it."""
    if directory is None:
        raise MediaError(where, kind, value, "a path needs the bot's directory")
    if "\0" in value:
        raise MediaError(where, kind, value, "not a file name")
    root = os.path.realpath(directory)
    path = os.path.realpath(os.path.join(root, value))
    # the invariant: a response uploads nothing from outside its bot's directory
    # (realpath has followed every symlink, so neither `..` nor a link can lead out)
    if os.path.commonpath([root, path]) != root:
        raise MediaError(where, kind, value, "the path leads outside the bot's directory")
    if is_own_file(os.path.relpath(path, root)):
        raise MediaError(where, kind, value, "the bot's own files (definitions, code, hidden "
                         "files) are not sent")
    if path.endswith(DATABASE_SUFFIXES):
        raise MediaError(where, kind, value, NO_DATABASE)
    return path


def is_own_file(relative: str) -> bool:
    """Whether a path inside the bot's directory is one of the bot's own files."""
    parts = relative.split(os.sep)
    suffix = os.path.splitext(relative)[1].lower()
    return (any(part.startswith(".") for part in parts) or "__pycache__" in parts
            or suffix in (".py", ".pyc") or (len(parts) == 1 and suffix in (".yaml", ".yml")))


def check_file(directory: str | None, kind: str, value: str, where: str) -> str:
    """The real path of a file that may be sent as `kind`; MediaError saying why not."""
    path = confined_path(directory, kind, value, where)
    try:
        found = os.stat(path)
    except FileNotFoundError:
        raise MediaError(where, kind, value, "no such file in the bot's directory") from None
    except OSError as exc:
        raise MediaError(where, kind, value, f"cannot be read ({exc.strerror})") from None
    _check_size(found, kind, value, where)
    return path


def _check_size(found: os.stat_result, kind: str, value: str, where: str) -> None:
    if not stat.S_ISREG(found.st_mode):
        raise MediaError(where, kind, value, "not a regular file")
    if found.st_size == 0:
        raise MediaError(where, kind, value, "the file is empty")
    if found.st_size > MAX_BYTES[kind]:
        raise MediaError(where, kind, value, f"the file is larger than the Bot API's "
                         f"{MAX_BYTES[kind] // MB} MB for a {kind}")


def read_file(directory: str | None, kind: str, value: str, where: str) -> Upload:
    """The file at `value` as an Upload, read once and at most its kind's bound."""
    path = check_file(directory, kind, value, where)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        handle = open(os.open(path, flags), "rb")  # noqa: SIM115 - closed by `with` below
    except OSError as exc:  # replaced by a symlink or removed since check_file
        raise MediaError(where, kind, value, f"cannot be read ({exc.strerror})") from None
    with handle:
        _check_size(os.fstat(handle.fileno()), kind, value, where)  # the file opened
        data = handle.read(MAX_BYTES[kind] + 1)
    if len(data) > MAX_BYTES[kind]:  # it grew while being read
        raise MediaError(where, kind, value, f"the file is larger than the Bot API's "
                         f"{MAX_BYTES[kind] // MB} MB for a {kind}")
    # the invariant: no upload carries a database, whatever it is named (the bytes sent
    # are the bytes checked here: the file is read once)
    if data.startswith(DATABASE_MAGIC):
        raise MediaError(where, kind, value, NO_DATABASE)
    return Upload(os.path.basename(path), data)


def media_value(directory: str | None, kind: str, value: str, where: str) -> str | Upload:
    """What goes into the `kind` parameter of sendPhoto/sendDocument for a rendered value."""
    value = value.strip()
    if not value:
        raise MediaError(where, kind, value, "the value is empty")
    if source_of(value) != "path":
        return value
    return read_file(directory, kind, value, where)
