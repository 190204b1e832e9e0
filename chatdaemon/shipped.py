"""Files that ship with chatdaemon: the example bots, the systemd units, the sample config, the starter.

In a checkout they are the top-level directories handlers/, systemd/ and config/; an
installed package carries copies in chatdaemon/data/ (setup.py copies them at build time).
`chatdaemon init` writes a starter bot and a config from them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ConfigError

PACKAGE = Path(__file__).resolve().parent
DEFAULT_HANDLERS = "handlers/counter"   # Config's default, relative to the working directory
STARTER = PACKAGE / "starter"
SHIPPED = ("handlers", "systemd", "config")


def shipped_dir(name: str) -> Path:
    """The directory `name` (handlers, systemd or config): installed copy first, then the checkout."""
    if name not in SHIPPED:
        raise ValueError(f"not a shipped directory: {name}")
    for candidate in (PACKAGE / "data" / name, PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"the shipped {name}/ directory is missing from this installation ({PACKAGE})")


def resolve_handlers(path: str) -> str:
    """The default handlers directory works from anywhere: the shipped counter when it is not here."""
    if path == DEFAULT_HANDLERS and not os.path.isdir(path):
        return str(shipped_dir("handlers") / "counter")
    return path


def write_starter(directory: str, example: str | None = None, config: str | None = None) -> list[Path]:
    """Write DIR/bot/ (the starter bot, or a copy of a shipped example) and a config naming it
    (DIR/chatdaemon.yaml unless `config` says where); never overwrite a file.

    The config stays outside the bot's directory: every *.yaml there is part of the bot.
    """
    target = Path(directory).resolve()
    config_path = Path(config).resolve() if config else target / "chatdaemon.yaml"
    if config_path.parent == target / "bot":
        raise ConfigError(f"the config cannot go into the bot's directory {config_path.parent}")
    files = {target / "bot" / name: text for name, text in bot_files(example).items()}
    files[config_path] = starter_config(target)
    existing = [str(path) for path in files if path.exists() or path.is_symlink()]
    if existing:
        raise ConfigError(f"refusing to overwrite {', '.join(existing)}")
    _write_all(files)
    return list(files)


def _write_all(files: dict[Path, str]) -> None:
    """Write every file or none: one that cannot be written (no permission, a file where a
    directory goes) takes back those written before it, so `init` can simply run again."""
    written: list[Path] = []
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_new(path, text)
            written.append(path)
    except (OSError, ConfigError) as exc:
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"cannot write {exc.filename or path}: {exc.strerror}") from None


def examples() -> list[str]:
    return sorted(path.name for path in shipped_dir("handlers").iterdir() if path.is_dir())


def bot_files(example: str | None) -> dict[str, str]:
    """The files of the starter bot, or of the shipped example `example` (name -> text)."""
    if example is None:
        source = STARTER
    elif example in examples():
        source = shipped_dir("handlers") / example
    else:
        raise ConfigError(f"no example bot named {example!r} (there are: {', '.join(examples())})")
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(source.iterdir())
            if path.is_file() and path.suffix != ".pyc"}


def starter_config(directory: Path) -> str:
    """The sample config, its handlers and database pointing into `directory`."""
    text = (shipped_dir("config") / "chatdaemon.yaml").read_text(encoding="utf-8")
    text = _set_key(text, "handlers", str(directory / "bot"))
    return _set_key(text, "database", str(directory / "chatdaemon.sqlite3"))


def _set_key(text: str, key: str, value: str) -> str:
    line = re.compile(rf"^{key}: .*$", re.M)
    if not line.search(text):
        raise ConfigError(f"the sample config has no top-level `{key}:` line")
    return line.sub(lambda _: f"{key}: {_quoted(value)}", text, count=1)


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"  # a YAML single-quoted scalar: any path is safe


def _write_new(path: Path, text: str) -> None:
    # O_EXCL: a file that appeared since the check above is not overwritten either
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise ConfigError(f"refusing to overwrite {path}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
