"""`chatdaemon telepot SCRIPT`: run a telepot program's top level, then the daemon under it.

The program runs in its own thread with `sys.argv = [SCRIPT, ARGS...]`. When it starts a
message loop (message_loop, MessageLoop.run_as_thread/run_forever, notifyOnMessage), the
daemon starts in the main thread with the program's token and handlers; the program's
thread goes on with whatever it does next (typically `while 1: time.sleep(10)`).
"""

from __future__ import annotations

import logging
import os
import runpy
import sys
import threading
import traceback
from dataclasses import replace

from ..errors import BadToken, ChatdaemonError, ConfigError, is_bad_token
from ..telegram import looks_like_token

log = logging.getLogger(__name__)


class ProgramError(ChatdaemonError):
    """The telepot program failed, or ended, before it started a message loop."""

    def __init__(self, script: str, message: str):
        self.script = script
        super().__init__(f"{script}: {message}")


class ProgramThread(threading.Thread):
    """Runs the program's top level as `__main__`."""

    def __init__(self, script: str, runtime):
        super().__init__(name="telepot-program", daemon=True)
        self.script = script
        self.runtime = runtime
        self.error: BaseException | None = None
        self.exit_code: object = None

    def run(self) -> None:
        try:
            runpy.run_path(self.script, run_name="__main__")
        except SystemExit as exc:
            self.exit_code = exc.code
        except BaseException as exc:
            self.error = exc
            if self.runtime.route is not None:  # already serving: the daemon carries on
                log.error("%s: the program's own thread failed:\n%s", self.script,
                          "".join(traceback.format_exception(exc)))
        finally:
            self.runtime.program_ended()


def start_program(script: str, args: list[str], runtime) -> ProgramThread:
    """Install the telepot modules, set sys.argv and sys.path, start the program's thread."""
    from . import install
    if not os.path.isfile(script):
        raise ConfigError(f"no such telepot program: {script}")
    install(runtime)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    program = ProgramThread(script, runtime)
    program.start()
    return program


def wait_for_loop(program: ProgramThread, runtime) -> str:
    """Block until the program starts its message loop; its token, or a ProgramError."""
    runtime.wait_settled()
    if runtime.route is None:
        program.join()
        refused_token(program.error)
        if program.error is not None:
            where = traceback.extract_tb(program.error.__traceback__)
            frames = [frame for frame in where if frame.filename == program.script]
            line = f" (line {frames[-1].lineno})" if frames else ""
            raise ProgramError(program.script, f"failed before starting its message loop{line}: "
                                               f"{type(program.error).__name__}: {program.error}")
        if program.exit_code not in (None, 0):
            raise ProgramError(program.script, f"exited before starting its message loop: "
                                               f"{program.exit_code}")
        raise ProgramError(program.script, "ended without starting a message loop (call "
                                           "bot.message_loop(handle) or MessageLoop(bot, handle)"
                                           ".run_as_thread())")
    token = runtime.token or ""
    if not looks_like_token(token):
        raise ConfigError("the token the program gave telepot.Bot does not look like a bot token "
                          "(digits, a colon, then letters, digits, - or _)")
    return token


def refused_token(error: BaseException | None) -> None:
    """BadToken (exit 78, no restart under systemd) when the program's own call found the
    token rejected before its loop: a 401 on any call, or a 404 on getMe."""
    if error is not None and is_bad_token(error) \
            and (error.status == 401 or error.method == "getMe"):
        raise BadToken.from_error(error)


def program_config(config, runtime):
    """The daemon config with what the program chose: its handlers' timeout, its updates."""
    changes = {}
    if runtime.idle_timeout is not None:
        changes["idle_timeout"] = max(runtime.idle_timeout, 0.1)
    if runtime.allowed_updates is not None:
        changes["allowed_updates"] = runtime.allowed_updates
    return replace(config, **changes)


def run_program(script: str, args: list[str], config, log_level: str | None = None) -> None:
    """Run the program and the daemon until SIGTERM/SIGINT; raise what stopped them."""
    from ..app import App, Events
    from ..bots import Bot
    from ..daemon import Notifier
    from ..logs import configure
    from .chat import handler_class
    from .runtime import Runtime

    configure(log_level or config.log_level)
    runtime = Runtime(config.api_url)
    program = start_program(script, args, runtime)
    token = wait_for_loop(program, runtime)
    configure(log_level or config.log_level, secrets=(token,))
    config = program_config(config, runtime)
    bot = Bot(os.path.abspath(script), handler_class=handler_class(runtime.route, runtime),
              error_text=config.error_text)
    notifier = Notifier()
    events = Events(ready=runtime.attach, starting=notifier.starting, tick=notifier.tick,
                    stopping=notifier.stopping, tick_every=notifier.tick_every)
    assert runtime.api is not None   # the message loop started, so the program made its Bot
    App(config, bot, runtime.api, events).run()
