"""The `chatdaemon` command: parse arguments, call the library, turn errors into exit statuses.

Heavy modules are imported inside the commands so that `chatdaemon --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ChatdaemonError, ConfigError, ShuttingDown

DESCRIPTION = """\
chatdaemon: a Telegram chat-bot daemon that never loses a message.

Examples:
  chatdaemon chat --handlers handlers/counter        talk to a bot in the terminal
  CHATDAEMON_TOKEN=123:abc chatdaemon run --handlers handlers/guess --db guess.sqlite3
  chatdaemon check --handlers handlers/guess         validate a bot and say what it does
"""

EXIT_STATUSES = """\
exit statuses: 0 stopped cleanly, 1 unexpected error, 2 usage,
  75 another process polls with this token, 76 a webhook is set, 78 bad token or config
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatdaemon", description=DESCRIPTION, epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run the bot in the foreground", epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the bot. The token comes from the TOKEN argument, --token-file, "
                    "$CHATDAEMON_TOKEN, or the systemd credential $CREDENTIALS_DIRECTORY/token "
                    "(prefer the last three: arguments are visible in `ps`).")
    run.add_argument("token", nargs="?", metavar="TOKEN", help="the bot token from @BotFather")
    run.add_argument("--token-file", metavar="FILE", help="read the token from FILE")
    _add_bot_options(run)
    run.add_argument("--api-url", metavar="URL",
                     help="Bot API base URL (default https://api.telegram.org)")
    run.add_argument("--rate-limits", choices=("on", "off"),
                     help="proactive sending limits (off only for a local Bot API server)")
    run.add_argument("--delete-webhook", action="store_true",
                     help="remove a webhook set for this bot (pending updates are kept)")
    run.add_argument("--log-level", metavar="LEVEL", type=_log_level,
                     help="DEBUG, INFO, WARNING or ERROR")
    run.add_argument("--daemon", action="store_true",
                     help="detach into the background (for systems without systemd); needs --pidfile")
    run.add_argument("--pidfile", metavar="FILE", help="with --daemon: the pidfile, held with a lock")
    run.add_argument("--log-file", metavar="FILE",
                     help="with --daemon: where logs go (default: chatdaemon.log beside the database)")

    check = commands.add_parser("check", help="validate config and handlers, say what the bot does")
    _add_bot_options(check, db=False)

    chat = commands.add_parser(
        "chat", help="talk to the bot in the terminal (no token, no network)",
        description="Talk to the bot in the terminal; lines may be piped in: "
                    "printf '/start\\nhello\\n' | chatdaemon chat --handlers handlers/counter")
    _add_bot_options(chat)
    chat.add_argument("--log-level", metavar="LEVEL", type=_log_level, default=None)
    return parser


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise argparse.ArgumentTypeError(f"{value!r} is not one of DEBUG, INFO, WARNING, ERROR")
    return level


def _add_bot_options(parser: argparse.ArgumentParser, db: bool = True) -> None:
    parser.add_argument("--config", metavar="FILE", help="daemon config (YAML)")
    parser.add_argument("--handlers", metavar="DIR", help="directory with the bot definition")
    if db:
        parser.add_argument("--db", metavar="FILE", help="SQLite database file")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return {"run": cmd_run, "check": cmd_check, "chat": cmd_chat}[args.command](args)
    except ShuttingDown:
        return EXIT_OK  # stopped (SIGTERM) before it was fully up
    except ChatdaemonError as exc:
        print(f"chatdaemon: {_redacted(str(exc))}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return EXIT_OK


def _redacted(text: str) -> str:
    from .logs import redact
    return redact(text)


def _load(args: argparse.Namespace, **overrides: Any):
    from .bots import load_bot
    from .config import check_api_url, load_config
    config = load_config(args.config).replace(
        handlers=args.handlers, database=getattr(args, "db", None), **overrides)
    check_api_url(config)
    return config, load_bot(config.handlers, config.error_text)


def read_token(args: argparse.Namespace) -> str:
    """The token from the first source that has one; never echoed anywhere."""
    if args.token:
        token = args.token
    elif args.token_file:
        token = _read_secret(args.token_file, "--token-file")
    elif os.environ.get("CHATDAEMON_TOKEN"):
        token = os.environ["CHATDAEMON_TOKEN"]
    elif os.environ.get("CREDENTIALS_DIRECTORY"):
        token = _read_secret(os.path.join(os.environ["CREDENTIALS_DIRECTORY"], "token"),
                             "the systemd credential")
    else:
        raise ConfigError("no bot token: pass TOKEN, --token-file FILE, set $CHATDAEMON_TOKEN, "
                          "or use a systemd credential named `token` (try `chatdaemon chat` "
                          "to talk to the bot without one)")
    from .telegram import looks_like_token
    token = token.strip()
    if not looks_like_token(token):
        raise ConfigError("that does not look like a bot token (expected digits, a colon, "
                          "then letters, digits, - or _, as @BotFather gives it)")
    return token


def _read_secret(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the token from {what} ({path}): {exc.strerror}") from None


def cmd_run(args: argparse.Namespace) -> int:
    os.umask(0o077)
    if args.daemon and not args.pidfile:
        raise ConfigError("--daemon needs --pidfile FILE")
    token = read_token(args)
    config, bot = _load_for_run(args)
    from .app import App, Events
    from .daemon import Notifier, PidFile, run_detached
    from .logs import configure
    from .store import Store
    from .telegram import TelegramClient

    if not args.daemon:
        configure(config.log_level, secrets=(token,))
        notifier = Notifier()
        events = Events(starting=notifier.starting, tick=notifier.tick, stopping=notifier.stopping)
        api = TelegramClient(token, config.api_url, pool_size=config.max_delegates + 4)
        App(config, bot, api, events, args.delete_webhook, lambda: _load_for_run(args)).run()
        return EXIT_OK
    # Everything that can fail is checked while the terminal is still attached.
    pidfile = PidFile(args.pidfile)
    pidfile.check_free()
    config = config.replace(database=os.path.abspath(config.database),
                            handlers=os.path.abspath(config.handlers))
    Store(config.database).close()
    _check_token_now(token, config.api_url)
    log_path = os.path.abspath(args.log_file or os.path.join(os.path.dirname(config.database),
                                                             "chatdaemon.log"))
    args.handlers, args.db = config.handlers, config.database
    if args.config:
        args.config = os.path.abspath(args.config)

    def serve() -> None:
        configure(config.log_level, secrets=(token,))
        api = TelegramClient(token, config.api_url, pool_size=config.max_delegates + 4)
        App(config, bot, api, Events(), args.delete_webhook, lambda: _load_for_run(args)).run()

    run_detached(pidfile, log_path, os.path.dirname(config.database), serve)
    return EXIT_OK


def _check_token_now(token: str, api_url: str) -> None:
    """Before detaching: one getMe, so a rejected token is reported on the terminal.

    Without network (a Pi at boot) the daemon detaches anyway and keeps trying.
    """
    from .errors import BadToken, NetworkError, TelegramError, is_bad_token
    from .telegram import TelegramClient
    client = TelegramClient(token, api_url, connect_timeout=5, read_timeout=10, pool_size=1)
    try:
        client.call("getMe")
    except NetworkError:
        pass
    except TelegramError as exc:
        if is_bad_token(exc):
            raise BadToken.from_error(exc) from None
    finally:
        client.close()


def _load_for_run(args: argparse.Namespace):
    config, bot = _load(args, api_url=args.api_url, log_level=args.log_level)
    if args.rate_limits is not None:
        import dataclasses
        config = config.replace(
            limits=dataclasses.replace(config.limits, enabled=args.rate_limits == "on"))
    return config, bot


def cmd_check(args: argparse.Namespace) -> int:
    config, bot = _load(args)
    for line in bot.describe():
        print(line)
    for warning in bot.warnings:
        print(f"warning: {warning}")
    print(f"database: {config.database}; delegates: at most {config.max_delegates}, "
          f"idle after {config.idle_timeout:.0f} s; rate limits "
          f"{'on' if config.limits.enabled else 'off'}")
    return EXIT_OK


def cmd_chat(args: argparse.Namespace) -> int:
    import dataclasses
    import tempfile

    from .logs import configure
    from .terminal import chat
    configure(args.log_level or "WARNING")
    with tempfile.TemporaryDirectory(prefix="chatdaemon-") as scratch:
        config, bot = _load(args)
        database = args.db or os.path.join(scratch, "chat.sqlite3")
        limits = dataclasses.replace(config.limits, enabled=False)
        config = config.replace(database=database, limits=limits, poll_timeout=1, hook_port=0)
        chat(config, bot, sys.stdin, sys.stdout)
    return EXIT_OK


def run() -> None:
    """Console-script entry point."""
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(EXIT_FAILURE)
