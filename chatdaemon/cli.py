"""The `chatdaemon` command: parse arguments, call the library, turn errors into exit statuses.

Heavy modules are imported inside the commands so that `chatdaemon --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from . import __version__
from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ChatdaemonError, ConfigError, ShuttingDown

log = logging.getLogger(__name__)

DESCRIPTION = """\
chatdaemon: a Telegram chat-bot daemon that never loses a message.

Examples:
  chatdaemon chat --handlers handlers/counter        talk to a bot in the terminal
  CHATDAEMON_TOKEN=123:abc chatdaemon run --handlers handlers/guess --db guess.sqlite3
  chatdaemon check --handlers handlers/guess         validate a bot and say what it does
  chatdaemon init mybot                              write a starter bot and config into mybot/
  chatdaemon status --db guess.sqlite3               backlog, chats, failures (works while it runs)
"""

EXIT_STATUSES = """\
exit statuses: 0 stopped cleanly, 1 unexpected error, 2 usage,
  75 another process polls with this token or uses this database, or the database is
  busy or its disk full for now (a restart may succeed), 76 a webhook is set,
  78 bad token or config, or a database of another bot, another version or application
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatdaemon", description=DESCRIPTION, epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"chatdaemon {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run the bot in the foreground",
        epilog=EXIT_STATUSES + "Example:\n  CHATDAEMON_TOKEN=123:abc chatdaemon run --handlers "
                               "handlers/guess --db guess.sqlite3",
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
    run.add_argument("--start-timeout", metavar="SECONDS", type=float, default=30.0,
                     help="with --daemon: how long to wait for the first poll before returning "
                          "(default 30; the daemon keeps trying after that)")

    check = commands.add_parser(
        "check", help="validate config and handlers, say what the bot does",
        epilog="Example:\n  chatdaemon check --handlers handlers/guess",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_bot_options(check, db=False)

    chat = commands.add_parser(
        "chat", help="talk to the bot in the terminal (no token, no network)",
        description="Talk to the bot in the terminal; lines may be piped in: "
                    "printf '/start\\nhello\\n' | chatdaemon chat --handlers handlers/counter",
        epilog="Example:\n  chatdaemon chat --handlers handlers/counter",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_bot_options(chat)
    chat.add_argument("--log-level", metavar="LEVEL", type=_log_level, default=None)
    _add_operating_commands(commands)

    telepot = commands.add_parser(
        "telepot", help="run an unchanged telepot program on the durable core",
        description="Run a telepot program: `import telepot` resolves to chatdaemon's telepot "
                    "API, sys.argv is [SCRIPT, ARGS...], the token is the one the program gives "
                    "telepot.Bot, and every update goes through the durable inbox. Example: "
                    "chatdaemon telepot --db counter.sqlite3 counter.py 123:abc")
    telepot.add_argument("--api-url", metavar="URL",
                         help="Bot API base URL (default https://api.telegram.org)")
    telepot.add_argument("--rate-limits", choices=("on", "off"),
                         help="proactive sending limits (off only for a local Bot API server)")
    telepot.add_argument("--db", metavar="FILE", help="SQLite database file")
    telepot.add_argument("--config", metavar="FILE", help="daemon config (YAML)")
    telepot.add_argument("script", metavar="SCRIPT", help="the telepot program")
    telepot.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                         help="the program's arguments (its sys.argv[1:])")
    return parser


def _add_operating_commands(commands: argparse._SubParsersAction) -> None:
    """The commands for running a bot for months: init, files, stop, status, chats."""
    init = commands.add_parser(
        "init", help="write a starter bot and a config into DIR",
        description="Write DIR/bot/bot.yaml (a starter bot) and DIR/chatdaemon.yaml (every config "
                    "key with its default; handlers and database point into DIR). Never overwrites.",
        epilog="Example:\n  chatdaemon init mybot && chatdaemon chat --config mybot/chatdaemon.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    init.add_argument("directory", metavar="DIR")
    init.add_argument("--example", metavar="NAME",
                      help="copy a shipped example bot (counter, guess, pimonitor, …) instead")
    init.add_argument("--config", metavar="FILE",
                      help="write the config here instead (e.g. /etc/chatdaemon/NAME.yaml for "
                           "the chatdaemon@NAME unit)")

    files = commands.add_parser(
        "files", help="where the shipped example bots, systemd units and sample config are",
        epilog="Example:\n  sudo cp \"$(chatdaemon files systemd)/chatdaemon@.service\" /etc/systemd/system/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    files.add_argument("name", metavar="NAME", nargs="?", choices=("handlers", "systemd", "config"),
                       help="print only this directory: handlers, systemd or config")

    stop = commands.add_parser(
        "stop", help="stop a daemon started with --daemon",
        description="Send SIGTERM to the daemon holding the pidfile and wait until it has stopped.",
        epilog="exit statuses: 0 stopped, 1 still running after --timeout, 3 not running\n"
               "Example:\n  chatdaemon stop --pidfile /var/lib/mybot/chatdaemon.pid",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    stop.add_argument("--pidfile", metavar="FILE", required=True, help="the daemon's --pidfile")
    stop.add_argument("--timeout", metavar="SECONDS", type=float, default=30.0,
                      help="how long to wait for it to stop (default 30)")

    status = commands.add_parser(
        "status", help="backlog, chats, failures, quarantined and rejected updates, schedules",
        description="Read the database (read-only; fine while the daemon runs) and say how the bot is.",
        epilog="Example:\n  chatdaemon status --db /var/lib/chatdaemon/chatdaemon.sqlite3 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    chats = commands.add_parser(
        "chats", help="list conversations: id, name, state, last seen",
        description="List the conversations in the database, the most recently active first "
                    "(read-only; fine while the daemon runs).",
        epilog="Example:\n  chatdaemon chats --db /var/lib/chatdaemon/chatdaemon.sqlite3 --limit 20",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    chats.add_argument("--limit", metavar="N", type=int, default=100, help="at most N chats (default 100)")
    for command in (status, chats):
        command.add_argument("--db", metavar="FILE", required=True, help="the bot's SQLite database")
        command.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_privacy_commands(commands)


def _add_privacy_commands(commands: argparse._SubParsersAction) -> None:
    """export and forget: what the database keeps about one chat."""
    export = commands.add_parser(
        "export", help="print everything kept about one chat, as JSON",
        description="Print what the database keeps about CHAT_ID (conversation, handoff, "
                    "messages, inbox rows) as JSON. Read-only; fine while the daemon runs.",
        epilog="Example:\n  chatdaemon export --db /var/lib/chatdaemon/chatdaemon.sqlite3 123456789",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    forget = commands.add_parser(
        "forget", help="delete what is kept about one chat (with the daemon stopped)",
        description="Delete what the database keeps about CHAT_ID: conversation, schedules, "
                    "handoff and its messages; handled inbox rows keep only their ids. The "
                    "daemon must be stopped (it holds the database and the chat's state); while "
                    "it runs, the person can send /forget instead.",
        epilog="Example:\n  chatdaemon forget --db /var/lib/chatdaemon/chatdaemon.sqlite3 123456789",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    for command in (export, forget):
        command.add_argument("--db", metavar="FILE", required=True, help="the bot's SQLite database")
        command.add_argument("chat_id", metavar="CHAT_ID", type=int, help="the chat's id")


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
        return {"run": cmd_run, "check": cmd_check, "chat": cmd_chat, "init": cmd_init,
                "stop": cmd_stop, "status": cmd_status, "chats": cmd_chats,
                "files": cmd_files, "telepot": cmd_telepot, "export": cmd_export,
                "forget": cmd_forget}[args.command](args)
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
    from .shipped import resolve_handlers
    config = load_config(args.config).replace(
        handlers=args.handlers, database=getattr(args, "db", None), **overrides)
    config = config.replace(handlers=resolve_handlers(config.handlers))
    check_api_url(config)
    bot = load_bot(config.handlers, config.error_text, where=config.origin("handlers"))
    bot.people = people_of(config)
    return config, bot


def people_of(config):
    """The handoff's and /forget's settings from the daemon config."""
    from .handoff import People
    return People(operators=config.operators, handoff_timeout=config.handoff_timeout,
                  forget_command=config.forget_command)


def read_token(args: argparse.Namespace) -> str:
    """The token from the first source that has one; never echoed anywhere.

    Two sources that give different tokens are refused (a service's credential and a
    stale $CHATDAEMON_TOKEN, say): which one wins would otherwise depend on their order.
    """
    given = _token_sources(args)
    # a handler's subprocesses inherit the environment: the token leaves it once read
    scrub_environment("CHATDAEMON_TOKEN")
    if not given:
        raise ConfigError("no bot token: pass TOKEN, --token-file FILE, set $CHATDAEMON_TOKEN, "
                          "or use a systemd credential named `token` (try `chatdaemon chat` "
                          "to talk to the bot without one)")
    from .telegram import looks_like_token
    (source, token), *others = given
    differing = [name for name, other in others if other != token]
    if differing:
        raise ConfigError(f"two different bot tokens: from {source} and from "
                          f"{' and '.join(differing)}; give the token one way only")
    if not looks_like_token(token):
        raise ConfigError(f"the token from {source} does not look like a bot token (expected "
                          "digits, a colon, then letters, digits, - or _, as @BotFather gives it)")
    return token


def scrub_environment(name: str) -> None:
    """Remove `name` from the environment, and overwrite its value where the kernel keeps
    showing it: /proc/PID/environ reads the environment the process started with, which
    unsetenv leaves as it was (readable by the same user for the daemon's whole life)."""
    if name not in os.environ:
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_void_p
        libc.getenv.argtypes = [ctypes.c_char_p]
        address = libc.getenv(name.encode())
        if address:   # the value's bytes in place (the start-up block, or setenv's copy)
            ctypes.memset(address, ord("x"), len(ctypes.string_at(address)))
    except (OSError, AttributeError):
        pass   # not glibc-like: the environment variable is still removed below
    os.environ.pop(name, None)


ARG_START_FIELD = 48   # /proc/PID/stat: where the process's argument strings begin (proc(5))


def scrub_argument(secret: str) -> None:
    """Overwrite `secret` where `ps` and /proc/PID/cmdline read the command line (the
    process's own argument memory, written through /proc/self/mem). Until this runs, and
    on systems without /proc, the token shows there: prefer the other sources."""
    needle = secret.encode()
    try:
        with open("/proc/self/stat", "rb") as stat_file:
            # the fields after the ")" that ends the command name start at field 3
            fields = stat_file.read().rsplit(b")", 1)[1].split()
        arg_start = int(fields[ARG_START_FIELD - 3])
        with open("/proc/self/cmdline", "rb") as cmdline_file:
            cmdline = cmdline_file.read()
        with open("/proc/self/mem", "r+b", buffering=0) as memory:
            found = cmdline.find(needle)
            while needle and found >= 0:
                memory.seek(arg_start + found)
                memory.write(b"x" * len(needle))
                found = cmdline.find(needle, found + len(needle))
    except (OSError, ValueError, IndexError):
        pass


def _token_sources(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(source, stripped token) of each source that gives one, in order of precedence."""
    given = []
    if args.token:
        given.append(("the TOKEN argument", args.token))
        scrub_argument(args.token)
    if args.token_file:
        given.append(("--token-file", _read_secret(args.token_file, "--token-file")))
        _warn_if_shared(args.token_file)
    if os.environ.get("CHATDAEMON_TOKEN"):
        given.append(("$CHATDAEMON_TOKEN", os.environ["CHATDAEMON_TOKEN"]))
    credential = os.path.join(os.environ.get("CREDENTIALS_DIRECTORY", ""), "token")
    # read when it is the only source (a clear error if it cannot be), else only if it exists
    if os.environ.get("CREDENTIALS_DIRECTORY") and (not given or os.path.isfile(credential)):
        given.append(("the systemd credential",
                      _read_secret(credential, "the systemd credential")))
    return [(source, token.strip()) for source, token in given]


def _warn_if_shared(path: str) -> None:
    """Say so when other users of the machine can read the token file (as ssh does)."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        print(f"chatdaemon: warning: {path} is readable by other users (mode {mode:04o}); "
              f"chmod 600 it", file=sys.stderr)


def _read_secret(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the token from {what} ({path}): {exc.strerror}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from .signals import EarlySignals
    early = EarlySignals()
    early.install()  # before anything slow: from now on SIGHUP/SIGTERM are remembered, not fatal
    os.umask(0o077)
    if args.daemon and not args.pidfile:
        raise ConfigError("--daemon needs --pidfile FILE")
    token = read_token(args)
    config, bot = _load_for_run(args)
    from .app import App, Events
    from .daemon import Notifier, removing_new_database
    from .dbfile import owner_of_token
    from .logs import configure
    from .memory import limit_malloc_arenas
    from .telegram import TelegramClient
    from .transfer import FileAPI  # handlers may upload and download files

    limit_malloc_arenas()  # before any thread: the detached daemon inherits it
    if args.daemon:
        return _run_daemon(args, token, config, bot, early)
    configure(config.log_level, secrets=(token,))
    notifier = Notifier()
    events = Events(starting=notifier.starting, tick=notifier.tick, stopping=notifier.stopping,
                    tick_every=notifier.tick_every)
    api = FileAPI(TelegramClient(token, config.api_url), token, config.api_url)
    with removing_new_database(config.database, os.path.exists(config.database)):
        App(config, bot, api, events, args.delete_webhook, lambda: _load_for_run(args),
            owner=owner_of_token(token), early=early).run()
    return EXIT_OK


def _run_daemon(args: argparse.Namespace, token: str, config, bot, early) -> int:
    """--daemon: check in the foreground, detach, and exit with how the daemon's start went."""
    from .app import App, Events
    from .daemon import (
        LogFile,
        PidFile,
        StartReport,
        check_distinct_files,
        removing_new_database,
        run_detached,
    )
    from .dbfile import companions, owner_of_token
    from .logs import configure
    from .telegram import TelegramClient
    from .transfer import FileAPI  # handlers may upload and download files

    # Everything that can fail is checked while the terminal is still attached; what only
    # the daemon can find out (a taken hook port) comes back over its start report.
    pidfile = PidFile(args.pidfile)
    pidfile.check_free()
    config = config.replace(database=os.path.abspath(config.database),
                            handlers=os.path.abspath(config.handlers))
    log_file = LogFile(args.log_file or os.path.join(os.path.dirname(config.database),
                                                     "chatdaemon.log"))
    check_distinct_files(pidfile.path, log_file.path, {
        "database": config.database,
        "database's lock file": f"{os.path.realpath(config.database)}.lock",
        **{f"database's {name[-3:]} file": name for name in companions(config.database)},
        "config": args.config or ""})
    log_file.check()
    existed = os.path.exists(config.database)
    _check_database_now(config.database, existed, owner_of_token(token))
    _check_token_now(token, config.api_url)
    args.handlers, args.db = config.handlers, config.database
    if args.config:
        args.config = os.path.abspath(args.config)

    def serve(report: StartReport) -> None:
        configure(config.log_level, secrets=(token,))
        api = FileAPI(TelegramClient(token, config.api_url), token, config.api_url)
        def reopen_on_hangup(daemon: Any) -> None:   # SIGHUP: reopen the log file, then reload
            daemon.controls.before_reload.append(log_file.reopen)
        events = Events(ready=reopen_on_hangup, starting=report.starting, tick=report.tick)
        with removing_new_database(config.database, existed):
            App(config, bot, api, events, args.delete_webhook, lambda: _load_for_run(args),
                owner=owner_of_token(token), early=early).run()

    outcome = run_detached(pidfile, log_file, os.path.dirname(config.database), serve,
                           args.start_timeout)
    return _report_start(outcome, pidfile, log_file.path)


def _check_database_now(path: str, existed: bool, owner: str) -> None:
    """An existing database must open; a new one is created only by the daemon that uses it."""
    if existed:
        from .store import Store
        Store(path, owner=owner).close()
        return
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ConfigError(f"database directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create database {path}: {parent} is not writable")


def _report_start(outcome, pidfile, log_path: str) -> int:
    from .daemon import StartFailed
    if outcome.kind == "ready":
        print(f"chatdaemon: running as pid {pidfile.holder() or '?'}, polling; log: {log_path}")
        return EXIT_OK
    if outcome.kind == "starting":
        print(f"chatdaemon: running as pid {pidfile.holder() or '?'} but not polling yet "
              f"({outcome.text}); it keeps trying, see {log_path}", file=sys.stderr)
        return EXIT_OK
    if outcome.kind == "failed" and outcome.status == EXIT_OK:
        print(f"chatdaemon: {outcome.text}", file=sys.stderr)
        return EXIT_OK
    raise StartFailed(outcome.status, outcome.text, log_path)


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
    from .config import callback_warning, check_callbacks
    config, bot = _load(args, api_url=args.api_url, log_level=args.log_level)
    check_callbacks(config, bot)
    warning = callback_warning(config, bot)
    if warning:
        log.warning("%s", warning)
    if args.rate_limits is not None:
        import dataclasses
        config = config.replace(
            limits=dataclasses.replace(config.limits, enabled=args.rate_limits == "on"))
    return config, bot


def cmd_check(args: argparse.Namespace) -> int:
    """Load the config and the bot; say what the bot does, or print every error and exit 78."""
    from .bots import load_bot
    from .config import Config, check_api_url, load_config
    from .errors import EXIT_CONFIG
    from .yamlfile import Problems
    problems = Problems()
    config = problems.run(load_config, args.config)
    checked_bot = config is not None or bool(args.handlers)
    if checked_bot:
        config = (config or Config()).replace(handlers=args.handlers)
        problems.run(check_api_url, config)
        bot = problems.run(load_bot, config.handlers, config.error_text, None,
                           config.origin("handlers"))
        if bot is not None:
            from .config import check_callbacks
            problems.run(check_callbacks, config, bot)
    if problems:
        for error in sorted(problems.errors, key=_file_line):
            print(f"chatdaemon: {_redacted(str(error))}", file=sys.stderr)
        print(f"chatdaemon: {len(problems)} error(s)", file=sys.stderr)
        if not checked_bot:
            print("chatdaemon: the bot was not checked: the config names its directory "
                  "(or give --handlers DIR)", file=sys.stderr)
        return EXIT_CONFIG
    for line in bot.describe():
        print(line)
    from .config import callback_warning
    for warning in [*bot.warnings, callback_warning(config, bot)]:
        if warning:
            print(f"warning: {warning}")
    print(f"database: {config.database}; delegates: at most {config.max_delegates}, "
          f"idle after {config.idle_timeout:.0f} s; rate limits "
          f"{'on' if config.limits.enabled else 'off'}")
    print(describe_hook_server(config, bot.needs_hook_server))
    if bot.definitions.callback_handlers and config.callback_base(True):
        print(f"callback URLs: {config.callback_base(True)}/callbacks/<token>, accepted for "
              f"{config.callback_expiry:.0f} s (handlers "
              f"{', '.join(name for name, _ in bot.definitions.callback_handlers)})")
    print(describe_people(config, bot))
    return EXIT_OK


def describe_people(config, bot) -> str:
    """What `check` says about the handoff and /forget."""
    handoffs = [h.name for h in bot.definitions.handlers if h.handoff]
    forget = config.forget_command or "off"
    if not config.operators:
        hands = ("handoff: no operators in the config, so a handoff tells the person nobody is "
                 "available" if handoffs else "operators: none")
    else:
        hands = (f"operators: {', '.join(map(str, config.operators))}; handoff after "
                 f"{', '.join(handoffs) or '(no handler hands off)'}, bot again after "
                 f"{config.handoff_timeout:.0f} s unanswered")
    return f"{hands}; forget command: {forget}"


def describe_hook_server(config, bot_defines_hooks: bool) -> str:
    address = config.hook_address(bot_defines_hooks)
    if address is None:
        return "hook server: off, no /healthz (set hooks.port in the config to serve it)"
    host, port = address
    host = f"[{host}]" if ":" in host else host
    return f"hook server: hooks, /healthz and /metrics on http://{host}:{port}"


def cmd_init(args: argparse.Namespace) -> int:
    from .shipped import write_starter
    written = write_starter(args.directory, args.example, args.config)
    for path in written:
        print(f"wrote {path}")
    import shlex
    config = shlex.quote(str(written[-1]))   # a path with spaces is pasted back into a shell
    print(f"next: chatdaemon chat --config {config}    (talk to it, no token needed)\n"
          f"      chatdaemon check --config {config}   (what it will do)")
    return EXIT_OK


def cmd_files(args: argparse.Namespace) -> int:
    from .shipped import SHIPPED, shipped_dir
    if args.name:
        print(shipped_dir(args.name))
    else:
        for name in SHIPPED:
            print(f"{name}: {shipped_dir(name)}")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    from .daemon import stop_daemon
    pid, seconds = stop_daemon(args.pidfile, args.timeout)
    print(f"chatdaemon: stopped pid {pid} in {seconds:.1f} s")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .status import as_json, format_status, open_read_only, read_status
    status = read_status(open_read_only(args.db))
    print(as_json(status) if args.json else format_status(status))
    return EXIT_OK


def cmd_chats(args: argparse.Namespace) -> int:
    from .status import as_json, format_chats, list_chats, open_read_only
    chats = list_chats(open_read_only(args.db), args.limit)
    print(as_json(chats) if args.json else format_chats(chats))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    import json

    from .privacy import export_chat
    from .status import open_read_only
    print(json.dumps(export_chat(open_read_only(args.db).conn, args.chat_id), indent=2,
                     ensure_ascii=False))
    return EXIT_OK


def cmd_forget(args: argparse.Namespace) -> int:
    from .privacy import export_chat, forget_chat
    from .status import open_read_only
    from .store import Store
    found = export_chat(open_read_only(args.db).conn, args.chat_id)  # a clear error if no database
    from .errors import DatabaseInUse
    # the daemon holds the database (and the chat's state in memory): refused while it runs
    try:
        store = Store(args.db)
    except DatabaseInUse as exc:
        print(f"chatdaemon: {exc}; stop the daemon first, or have the person send /forget",
              file=sys.stderr)
        return exc.exit_status
    try:
        with store.writing() as db:
            forget_chat(args.chat_id)(db)
    finally:
        store.close()
    kept = sum(len(found.get(table, [])) for table in ("conversations", "handoffs",
                                                        "handoff_messages", "schedules",
                                                        "member_conversations",
                                                        "callback_tokens"))
    print(f"chatdaemon: forgot chat {args.chat_id} ({kept} row(s) deleted, "
          f"{sum(row['done'] for row in found['inbox'])} handled update(s) blanked)")
    return EXIT_OK


def _file_line(error: ConfigError) -> tuple[str, int]:
    """Sort key: errors in file order, line by line."""
    path, _, line = (error.where or "").rpartition(":")
    return (path, int(line)) if line.isdigit() else (error.where or "", 0)


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


def cmd_telepot(args: argparse.Namespace) -> int:
    import dataclasses

    from .config import check_api_url, load_config
    from .telepot_compat.runner import run_program
    os.umask(0o077)
    config = load_config(args.config).replace(database=args.db, api_url=args.api_url)
    if args.rate_limits is not None:
        config = config.replace(
            limits=dataclasses.replace(config.limits, enabled=args.rate_limits == "on"))
    check_api_url(config)
    run_program(args.script, args.args, config)
    return EXIT_OK


def run() -> None:
    """Console-script entry point."""
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(EXIT_FAILURE)
